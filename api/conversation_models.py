"""Request bodies and reply shapes of single sends and conversations."""

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, Field, field_validator

from api.models import (
    CampaignMessage,
    Channel,
    ContentTemplate,
    StoredFields,
    example,
)
from api.pagination import CursorPage
from workflows.contracts import SilenceTimers
from workflows.statuses import ConversationStatus

# The one conversation the schema's examples show.
CONVERSATION_ID = "5d0a0b6f-3c1e-4c47-9a51-2f1c8e7d9b10"
CONVERSATION_WORKFLOW_ID = (
    "sms-conversation-1f2e3d4c-0000-4c47-9a51-2f1c8e7d9b10-15005550006-12015550123"
)


# A silence timer longer than a year is a mistake; and Temporal's timers cannot hold 1e300 s.
MAX_SILENCE_SECONDS = 365 * 24 * 3600


class SilenceTimerFields(BaseModel):
    """`SilenceTimers`' fields, flat in a request or a reply."""

    time_out: float | None = Field(
        None,
        allow_inf_nan=False,
        le=MAX_SILENCE_SECONDS,
        description="Seconds of user silence before the timeout, at most a year.",
    )
    timeout_message: str | None = Field(None, description="Sent when the conversation times out.")
    warning_time: float | None = Field(
        None,
        allow_inf_nan=False,
        le=MAX_SILENCE_SECONDS,
        description="Seconds of user silence before the warning, at most a year.",
    )
    warning_message: str | None = Field(None, description="Sent after `warning_time`.")

    def silence_timers(self) -> SilenceTimers:
        return SilenceTimers(
            **{name: getattr(self, name) for name in SilenceTimerFields.model_fields}
        )


class SendRequest(StoredFields, SilenceTimerFields, ContentTemplate, CampaignMessage):
    model_config = example(
        {
            "user_number": "+12015550123",
            "agent_number": "+15005550006",
            "agent_message": "Your table is ready.",
            "webhook": "https://example.com/herald/conversations",
        }
    )

    user_number: str = Field(min_length=1, description="E.164 number of the person messaged.")
    agent_number: str = Field(min_length=1, description="A registered sender of the account.")
    agent_message: str | None = Field(
        None, description="The text sent; required unless `content_sid` is given."
    )
    request_data: dict[str, Any] | None = Field(
        None, description="Kept on the conversation and echoed in its webhook events."
    )
    new_conversation: bool = Field(
        False, description="End the pair's active conversation and start a new one."
    )
    metadata: dict[str, Any] | None = Field(None, description="Echoed in every webhook event.")
    webhook: AnyHttpUrl | None = Field(None, description="Receives message and status events.")
    channel: Channel = "sms"
    params: dict[str, str] | None = Field(
        None,
        description="With `campaign_id`: a value for each of the campaign's parameters, none"
        " blank, and no other.",
    )

    @field_validator("new_conversation", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: object) -> object:
        """null where the contract gives a default (false), as for `channel`."""
        return False if value is None else value


class SendReply(BaseModel):
    model_config = example(
        {
            "message": "SMS sent successfully",
            "conversation_id": CONVERSATION_ID,
            "message_id": "5f0e8a3b-9a51-4c47-8e7d-2f1c0b6f3c1e",
            "workflow_id": CONVERSATION_WORKFLOW_ID,
        }
    )

    message: str = "SMS sent successfully"
    conversation_id: str
    message_id: str
    workflow_id: str


class ConversationMessage(BaseModel):
    message_id: str
    sender: Literal["AGENT", "USER"]
    kind: str = Field(description="`message`, or Herald's own `warning`, `timeout`, `help`.")
    channel: str
    body: str | None
    content_sid: str | None
    content_variables: dict[str, Any] | None
    status: str
    carrier_sid: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime


class ConversationSummary(StoredFields, SilenceTimerFields):
    conversation_id: str
    workflow_id: str
    agent_number: str
    user_number: str
    channel: str
    state: ConversationStatus
    webhook: str | None
    metadata: dict[str, Any] | None
    request_data: dict[str, Any] | None
    batch_id: str | None = Field(
        None, description="The batch whose message the user answered, when one did."
    )
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    timed_out_at: datetime | None


class ConversationDetail(ConversationSummary):
    model_config = example(
        {
            "conversation_id": CONVERSATION_ID,
            "workflow_id": CONVERSATION_WORKFLOW_ID,
            "agent_number": "+15005550006",
            "user_number": "+12015550123",
            "channel": "sms",
            "state": "active",
            "webhook": None,
            "metadata": None,
            "request_data": None,
            "created_at": "2026-03-02T10:15:00Z",
            "updated_at": "2026-03-02T10:15:00Z",
            "ended_at": None,
            "timed_out_at": None,
            "messages": [],
            "messages_next_cursor": None,
            "temporal_ui_url": "http://127.0.0.1:8233/namespaces/default/workflows/"
            + CONVERSATION_WORKFLOW_ID,
        }
    )

    messages: list[ConversationMessage] = Field(
        description="Oldest first: the first 1,000; the rest by `messages_next_cursor`."
    )
    messages_next_cursor: str | None = Field(
        description="With more than 1,000 messages: pass as `cursor` to"
        " `GET /v1/sms/conversations/{conversation_id}/messages` for the rest; else null."
    )
    temporal_ui_url: str


class ConversationMessages(CursorPage):
    model_config = example({"messages": [], "next_cursor": None})

    messages: list[ConversationMessage] = Field(description="Oldest first.")


class ConversationList(CursorPage):
    model_config = example({"conversations": [], "next_cursor": None})

    conversations: list[ConversationSummary]
