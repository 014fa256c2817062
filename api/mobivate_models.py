"""Request and reply shapes of the Mobivate dialect, `POST /send/batch`."""

from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from activities.recipients.phones import POSSIBLE, NumberCheck
from api.models import Moment, RequestBody, example

MAILING_LIST = "mailinglist"


class MobivateModel(RequestBody):
    """Fields are camelCase on the wire, as the dialect writes them; unknown ones are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def not_blank(recipient: str) -> str:
    """A blank recipient would be a blank row, which a batch skips: no message, no error."""
    if not recipient.strip():
        raise PydanticCustomError("blank_recipient", "recipient is blank")
    return recipient


class MobivateRecipient(MobivateModel):
    recipient: str = Field(
        min_length=1,
        description="The phone number in international format, `+` optional; or a mailing"
        " list's id, with `meta.type` `mailinglist`.",
    )
    reference: str | None = Field(
        None, max_length=255, description="Your reference; returned on the message's reads."
    )
    meta: dict[str, Any] | None = Field(
        None, description="This recipient's template tags: `{{KEY}}` in the text, case as written."
    )
    originator: str | None = Field(
        None,
        min_length=1,
        description="This recipient's sender (a list's: its contacts'), in place of the"
        " batch's `originator`; a registered sender of the account.",
    )
    text: str | None = Field(
        None, min_length=1, description="This recipient's own text (tags are filled in too)."
    )

    @field_validator("recipient")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return not_blank(value)

    def is_mailing_list(self) -> bool:
        """A mailing list's id in `recipient`, marked by `meta.type` `mailinglist`."""
        return (self.meta or {}).get("type") == MAILING_LIST


class MobivateBatchRequest(MobivateModel):
    model_config = example(
        {
            "recipients": [
                {"recipient": "4479000000001", "reference": "aaa", "meta": {"NAME": "John"}}
            ],
            "text": "Hello {{NAME}}!",
            "originator": "+15005550006",
            "name": "My Campaign",
        }
    )

    recipients: list[MobivateRecipient] | None = Field(None, min_length=1)
    messages: list[MobivateRecipient] | None = Field(
        None, min_length=1, description="The same as `recipients`; give one of the two."
    )
    recipient: str | None = Field(
        None,
        min_length=1,
        description="One phone number, as the request table lists it: the same as `recipients`"
        " of one recipient with that number; give it, `recipients` or `messages`.",
    )
    text: str = Field(min_length=1, description="The message; `{{KEY}}` tags from `meta`.")
    originator: str = Field(
        min_length=1, description="A sender number registered with `/v1/sms/numbers`."
    )
    name: str | None = Field(None, max_length=200, description="The batch's name.")
    shorten_urls: bool | None = Field(
        None,
        description="Replace each http(s) URL of every message with a short link whose clicks"
        " are counted (default `false`).",
    )
    exclude_duplicates: bool | None = Field(
        None, description="Skip a number given earlier in the batch (default `true`)."
    )
    exclude_opt_outs: bool | None = Field(
        None,
        validation_alias=AliasChoices("excludeOptOuts", "excludeOptouts"),
        description="Skip numbers opted out for this account (default `true`); also"
        " spelled `excludeOptouts`.",
    )
    spread_hours: float | None = Field(
        None, ge=0, le=168, description="Spread the sends over this many hours; 0: no spread."
    )
    schedule_date_time: Moment | None = Field(
        None, description="Send at this future time (ISO 8601 with `Z` or an offset)."
    )
    route_id: str | int | None = Field(None, description="Accepted and stored; not used.")
    status_webhook: AnyHttpUrl | None = Field(
        None,
        description="Herald's own: the batch's status webhook (lifecycle and `click` events).",
    )
    number_check: NumberCheck = Field(
        POSSIBLE,
        description="`possible` (default here): a number of a possible length for its country"
        " code is sent, the carrier refuses the rest; `valid`: only numbers in ranges their"
        " numbering plan assigns.",
    )

    @field_validator("recipient")
    @classmethod
    def _one_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else not_blank(value)

    @field_validator("schedule_date_time")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise PydanticCustomError("past_schedule", "scheduleDateTime is in the past")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = [self.recipients, self.messages, self.recipient]
        if sum(value is not None for value in given) != 1:
            raise PydanticCustomError(
                "recipients",
                "give the recipients in `recipients` or `messages`, or one number in"
                " `recipient` (one of the three)",
            )
        return self

    def to_send(self) -> list[MobivateRecipient]:
        if self.recipient is not None:
            return [MobivateRecipient(recipient=self.recipient)]
        return self.recipients or self.messages or []


class MobivateRecord(MobivateModel):
    id: str = Field(description="The batch id, the same in every other API.")
    type: Literal["BatchSMS"] = "BatchSMS"
    scheduled: str = Field(description="When sending starts, ISO 8601 in UTC.")
    recipient_count: int = Field(
        description="Recipients in the request, a mailing list counting its contacts."
    )


class MobivateBatchAccepted(MobivateModel):
    model_config = example(
        {
            "success": True,
            "record": {
                "id": "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10",
                "type": "BatchSMS",
                "scheduled": "2026-03-02T10:15:00.000Z",
                "recipientCount": 1,
            },
        }
    )

    success: Literal[True] = True
    record: MobivateRecord


class MobivateBatchState(MobivateModel):
    id: str = Field(description="The batch id, the same in every other API.")
    type: Literal["BatchSMS"] = "BatchSMS"
    scheduled: str = Field(description="When sending starts, ISO 8601 in UTC.")
    recipient_count: int | None = Field(
        description="Rows of the batch, a mailing list's contacts each one; null until"
        " the batch is validated."
    )
    name: str | None
    status: str = Field(description="Herald's batch status (`validating`, `completed`, ...).")
    counts: dict[str, int] = Field(description="Ledger rows by message status, and `rejected`.")


class MobivateBatchRead(MobivateModel):
    model_config = example(
        {
            "success": True,
            "record": {
                "id": "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10",
                "type": "BatchSMS",
                "scheduled": "2026-03-02T10:15:00.000Z",
                "recipientCount": 1,
                "name": "My Campaign",
                "status": "completed",
                "counts": {"sent": 1, "rejected": 0},
            },
        }
    )

    success: Literal[True] = True
    record: MobivateBatchState


class MobivateErrorDetail(MobivateModel):
    name: str = Field(description="`AuthenticationError`, `ValidationError`, ...")
    status_code: int
    code: str | None = Field(None, description="Herald's error code.")
    message: str | None = None
    details: list[str] | None = Field(None, description="Each problem with the request.")


class MobivateError(MobivateModel):
    model_config = example(
        {"success": False, "error": {"name": "AuthenticationError", "statusCode": 403}}
    )

    success: Literal[False] = False
    error: MobivateErrorDetail
