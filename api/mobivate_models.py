"""Request and reply shapes of the Mobivate dialect, `POST /send/batch`."""

import re
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    AwareDatetime,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from activities.recipients.phones import POSSIBLE, NumberCheck, to_sender
from api.models import RequestBody, example

# What link shortening would have replaced; until Herald shortens links, a batch that has
# one and asks for shortening is refused rather than sent with the links as written.
URL = re.compile(r"https?://", re.IGNORECASE)


class MobivateModel(RequestBody):
    """Fields are camelCase on the wire, as the dialect writes them; unknown ones are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class MobivateRecipient(MobivateModel):
    recipient: str = Field(
        min_length=1, description="The phone number in international format, `+` optional."
    )
    reference: str | None = Field(
        None, max_length=255, description="Your reference; returned on the message's reads."
    )
    meta: dict[str, Any] | None = Field(
        None, description="This recipient's template tags: `{{KEY}}` in the text, case as written."
    )
    originator: str | None = Field(
        None, min_length=1, description="Must be the batch's `originator` when given."
    )
    text: str | None = Field(
        None, min_length=1, description="This recipient's own text (tags are filled in too)."
    )

    @model_validator(mode="after")
    def _not_a_mailing_list(self) -> Self:
        if (self.meta or {}).get("type") == "mailinglist":
            raise PydanticCustomError(
                "mailing_list", "mailing-list recipients are not supported by this server"
            )
        return self


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
    text: str = Field(min_length=1, description="The message; `{{KEY}}` tags from `meta`.")
    originator: str = Field(
        min_length=1, description="A sender number registered with `/v1/sms/numbers`."
    )
    name: str | None = Field(None, max_length=200, description="The batch's name.")
    shorten_urls: bool = Field(
        False, description="Not supported: `true` is refused when a message holds a URL."
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
    spread_hours: float = Field(
        0, ge=0, le=168, description="Spread the sends over this many hours; 0: no spread."
    )
    schedule_date_time: AwareDatetime | None = Field(
        None, description="Send at this future time (ISO 8601 with `Z` or an offset)."
    )
    route_id: str | int | None = Field(None, description="Accepted and stored; not used.")
    number_check: NumberCheck = Field(
        POSSIBLE,
        description="`possible` (default here): a number of a possible length for its country"
        " code is sent, the carrier refuses the rest; `valid`: only numbers in ranges their"
        " numbering plan assigns.",
    )

    @field_validator("schedule_date_time")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise PydanticCustomError("past_schedule", "scheduleDateTime is in the past")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.recipients is None) == (self.messages is None):
            raise PydanticCustomError(
                "recipients", "give the recipients in `recipients` or `messages` (one of them)"
            )
        sender = _sender(self.originator)
        for index, recipient in enumerate(self.to_send()):
            if recipient.originator is not None and _sender(recipient.originator) != sender:
                raise PydanticCustomError(
                    "originator",
                    "recipient {index}: an originator other than the batch's is not supported",
                    {"index": index},
                )
        if self.shorten_urls and any(map(URL.search, self._texts())):
            raise PydanticCustomError(
                "shorten_urls",
                "shortenUrls is not supported by this server; send with shortenUrls false to"
                " send the links as written",
            )
        return self

    def to_send(self) -> list[MobivateRecipient]:
        return self.recipients or self.messages or []

    def _texts(self) -> list[str]:
        texts = [self.text]
        for recipient in self.to_send():
            texts += [recipient.text or "", *map(str, (recipient.meta or {}).values())]
        return texts


def _sender(originator: str) -> str:
    return to_sender(originator) or originator.strip()


class MobivateRecord(MobivateModel):
    id: str = Field(description="The batch id, the same in every other API.")
    type: Literal["BatchSMS"] = "BatchSMS"
    scheduled: str = Field(description="When sending starts, ISO 8601 in UTC.")
    recipient_count: int = Field(description="Recipients in the request.")


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
