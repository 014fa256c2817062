"""Request bodies and reply shapes at the API's edge."""

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from activities.recipients.phones import VALID, NumberCheck
from activities.recipients.rows import PHONE_COLUMN
from api.input_checks import check_json, too_deep
from api.pagination import CursorPage
from settings import SENDER_MPS_MAX, SENDER_MPS_MIN
from workflows.contracts import DEFAULT_VALIDATION, AutoPause
from workflows.statuses import BatchStatus, LedgerStatus

T = TypeVar("T")


def _in_utc_years(moment: datetime) -> datetime:
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall in the years 1 to 9999 once in UTC") from None
    return moment


def _written_as_date_time(value: object) -> object:
    """A time comes as ISO 8601 text: pydantic would also read a number, or a string of
    digits, as Unix seconds (or milliseconds, past a size), which no document promises."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _NUMBER.fullmatch(value.strip()):
        raise ValueError("must be an ISO 8601 date-time with a zone, as 2026-01-01T09:00:00Z")
    return value


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

# A time with its zone, which is a date in UTC too: "9999-12-31T23:59:59-14:00" is year 10000
# in UTC, which neither Python's dates nor PostgreSQL's timestamps hold.
Moment = Annotated[
    AwareDatetime, BeforeValidator(_written_as_date_time), AfterValidator(_in_utc_years)
]

# A message's channel: null as its default, "sms", as clients that send every optional
# field send an unset one.
Channel = Annotated[
    Literal["sms", "whatsapp"], BeforeValidator(lambda value: "sms" if value is None else value)
]

# The one batch the schema's examples show.
BATCH_ID = "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10"
# A Twilio account's (or subaccount's) SID.
ACCOUNT_SID_PATTERN = r"^AC[0-9a-fA-F]{32}$"
WORKFLOW_ID = f"sms-batch-{BATCH_ID}"
BATCH_SUMMARY: dict[str, Any] = {
    "batch_id": BATCH_ID,
    "workflow_id": WORKFLOW_ID,
    "name": "spring",
    "status": "completed",
    "code": None,
    "reason": None,
    "agent_number": "+15005550006",
    "rows_total": 3,
    "recipients": 3,
    "rejected": 0,
    "segments_total": 3,
    "messages_gsm7": 3,
    "messages_ucs2": 0,
    "created_at": "2026-03-02T10:15:00Z",
    "updated_at": "2026-03-02T10:15:04Z",
    "finished_at": "2026-03-02T10:15:04Z",
}
MESSAGE_ROW: dict[str, Any] = {
    "seq": 0,
    "row_number": 1,
    "to_number": "+12015550123",
    "body": "Hi Ada!",
    "encoding": "gsm7",
    "segments": 1,
    "status": "delivered",
    "carrier_sid": "SM" + "0" * 32,
    "error_code": None,
    "error_message": None,
    "attempts": 1,
    "created_at": "2026-03-02T10:15:00Z",
    "sent_at": "2026-03-02T10:15:01Z",
    "updated_at": "2026-03-02T10:15:02Z",
    "reference": None,
}


def example(value: dict[str, Any]) -> ConfigDict:
    """A model's config that shows `value` as its example in the OpenAPI schema."""
    return ConfigDict(json_schema_extra={"examples": [value]})


class RequestBody(BaseModel):
    """A request body: its numbers must be finite, `"Infinity"` or `"NaN"` given as a string
    included."""

    model_config = ConfigDict(allow_inf_nan=False)


class ContentTemplate(BaseModel):
    """A Twilio content template to send, as single sends and batches name it."""

    content_sid: str | None = Field(None, description="Twilio content template (HX...).")
    content_variables: dict[str, Any] | None = Field(
        None, description="Template variables: an object, or a JSON object as a string."
    )

    @field_validator("content_variables", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """Twilio takes the variables as a JSON string: accept that form too, checked as a
        JSON body is (`check_json`: its 400 in place of the field's code)."""
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON: {error.msg}") from error
        except RecursionError:
            raise too_deep("content_variables") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        check_json(parsed, "content_variables")
        return parsed


class Envelope(BaseModel, Generic[T]):
    data: T
    errors: None = None


class ErrorItem(BaseModel):
    error: str
    message: str


class ErrorEnvelope(BaseModel):
    """Every failure of Herald's own routes: a stable code per problem, first the main one."""

    model_config = example(
        {
            "data": None,
            "errors": [
                {
                    "error": "MISSING_FILE_ID",
                    "message": "file_id is required: body: give file_id, recipients or lists",
                }
            ],
        }
    )

    data: None = None
    errors: list[ErrorItem]


# Bland fields Herald accepts and keeps on the conversation, and does not act on.
STORED_FIELDS = (
    "persona_id",
    "persona_version",
    "persona_settings",
    "pathway_id",
    "pathway_version",
    "start_node_id",
    "disposition_ids",
    "citation_schema_ids",
)


class StoredFields(RequestBody):
    """The Bland fields kept on a conversation (STORED_FIELDS), from a send, or from the batch
    whose message a reply answers."""

    persona_id: str | None = None
    persona_version: int | str | None = None
    persona_settings: dict[str, Any] | None = None
    pathway_id: str | None = None
    pathway_version: int | str | None = None
    start_node_id: str | None = None
    disposition_ids: list[str] | None = None
    citation_schema_ids: list[str] | None = None


def kept_stored_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The STORED_FIELDS of `values` that StoredFields takes, each checked on its own: one
    that does not fit (a batch's, stored before `global` checked them) is left out rather
    than make every reading of the conversation fail."""
    kept = {}
    for name in STORED_FIELDS:
        if values.get(name) is None:
            continue
        try:
            kept[name] = getattr(StoredFields.model_validate({name: values[name]}), name)
        except ValidationError:
            continue
    return kept


class BatchGlobal(ContentTemplate, StoredFields):
    model_config = ConfigDict(extra="allow")

    agent_number: str = Field(min_length=1, description="A registered SMS sender of the account.")
    agent_message: str | None = Field(
        None, description="Message template; `{{name}}` is filled from each row."
    )
    request_data: dict[str, Any] | None = Field(
        None, description="Default template variables; a row's own values win."
    )
    metadata: dict[str, Any] | None = Field(
        None, description="Kept on each conversation the batch opens, echoed in its events."
    )
    disposition_ids: list[str] | None = Field(
        None, description="Kept on each conversation the batch opens, and echoed."
    )
    citation_schema_ids: list[str] | None = Field(
        None, description="Kept on each conversation the batch opens, and echoed."
    )
    pathway_id: str | None = Field(
        None, description="Kept on each conversation the batch opens, and echoed."
    )
    persona_id: str | None = Field(
        None, description="Kept on each conversation the batch opens, and echoed."
    )
    channel: Channel = Field(
        "sms", description="`whatsapp`: every message goes as WhatsApp (`whatsapp:` addresses)."
    )


class BatchMailingList(RequestBody):
    """A mailing list whose contacts the batch sends to, after its file's (or inline) rows."""

    id: str = Field(min_length=1, description="The list's id, from `/v1/lists`.")
    agent_message: str | None = Field(
        None,
        min_length=1,
        description="The message for this list's contacts, in place of `global.agent_message`.",
    )
    agent_number: str | None = Field(
        None,
        min_length=1,
        description="A registered sender of the account that sends to this"
        " list's contacts, in place of `global.agent_number`.",
    )
    request_data: dict[str, Any] | None = Field(
        None, description="Defaults of the contacts' fields; a contact's own values win."
    )


HOUR_MINUTE = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class SendWindowRequest(RequestBody):
    """The hours of each recipient's local day a batch may send in."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=HOUR_MINUTE, description='"HH:MM", 24-hour: the window opens.')
    end: str = Field(
        pattern=HOUR_MINUTE,
        description='"HH:MM": the window closes; before `start`, the window crosses midnight.',
    )
    timezone: str = Field(
        "UTC",
        min_length=1,
        description="An IANA zone, for numbers whose zone is not known from the number.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        # OSError: a name of a directory of zones ("America"), or too long for a file name.
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{name!r} is not a known time zone") from None
        return name

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("send_window start and end must differ")
        return self


class CampaignMessage(RequestBody):
    """A campaign named instead of a message (a batch's `global.agent_message`, a single
    send's `agent_message`)."""

    campaign_id: str | None = Field(
        None,
        description="A campaign of this account (`/v1/campaigns`) whose template in `language`"
        " is the message, instead of one given: a batch's rows fill its parameters from their"
        " columns, a single send's from `params`.",
    )
    # None, not "english": a request that names no campaign hashes as it did before.
    language: str | None = Field(
        None, description="With `campaign_id`: which of its templates is sent; `english` if unset."
    )


class BatchRequest(CampaignMessage):
    model_config = example(
        {
            "file_id": BATCH_ID,
            "name": "spring",
            "global": {
                "agent_number": "+15005550006",
                "agent_message": "Hi {{first_name}}!",
            },
            "status_webhook": "https://example.com/herald",
        }
    )

    file_id: str | None = Field(
        None, min_length=1, description="The `file_id` from `/v1/files/attach`; or `recipients`."
    )
    recipients: list[dict[str, Any]] | None = Field(
        None,
        min_length=1,
        description="The rows inline instead of `file_id`: objects like a JSON file's rows"
        " (`phone_number` plus fields), at most `HERALD_MAX_ROWS_PER_BATCH`.",
    )
    lists: list[BatchMailingList] | None = Field(
        None,
        min_length=1,
        description="Mailing lists to send to as well: each contact is a row after the file's"
        " (or the inline) rows, its fields the row's template variables.",
    )
    global_: BatchGlobal = Field(alias="global")
    column_mapping: dict[str, str] | None = Field(
        None,
        description="File column → `request_data` (the field takes the column's name) or"
        " `request_data.<field>`.",
    )
    exclude_duplicates: bool = Field(
        DEFAULT_VALIDATION.exclude_duplicates,
        description="Skip a number seen earlier in the file (`duplicate`).",
    )
    exclude_opt_outs: bool = Field(
        DEFAULT_VALIDATION.exclude_opt_outs,
        description="Skip numbers opted out for this account (`opted_out`).",
    )
    number_check: NumberCheck = Field(
        VALID,
        description="`valid`: a recipient's number must be in a range its numbering plan"
        " assigns (`invalid_number` otherwise); `possible`: a possible length for its country"
        " code is enough, and the carrier's refusal is the row's outcome.",
    )
    strict: bool = Field(
        DEFAULT_VALIDATION.strict,
        description="Any rejected row fails the whole batch; nothing is sent.",
    )
    shorten_urls: bool = Field(
        DEFAULT_VALIDATION.shorten_urls,
        description="Replace each http(s) URL of every message with a short link,"
        " `HERALD_PUBLIC_URL/s/<code>`, whose clicks are counted on the message.",
    )
    status_webhook: AnyHttpUrl | None = Field(
        None, description="Receives each lifecycle event: one POST per phase."
    )
    status_webhook_progress: bool = Field(
        False,
        description="Also POST the progress events (the phase repeated with its counts in"
        " `message`, at most once a second) to `status_webhook`; they are in `/logs` and"
        " `/events` either way.",
    )
    name: str | None = Field(None, max_length=200)
    schedule_at: Moment | None = Field(
        None,
        description="Send from this time (ISO 8601 with a zone); the batch waits in"
        " `waiting_for_scheduled_messages`. A past time means now.",
    )
    spread_hours: float | None = Field(
        None, gt=0, le=168, description="Spread the sends evenly over this many hours."
    )
    expire_at: Moment | None = Field(None, description="Rows not sent by this time end `expired`.")
    send_window: SendWindowRequest | None = Field(
        None,
        description="Send each recipient only inside this window of their local day (their"
        " zone from the number); rows outside it wait, counted as `waiting_for_window`.",
    )
    auto_pause_error_rate: float | None = Field(
        AutoPause().error_rate,
        ge=0,
        le=1,
        description="Pause the batch (event `paused`, code `carrier_error_rate`) when the"
        " carrier refuses more than this share of its last 200 messages; `null` never does.",
    )
    dry_run: bool = Field(
        False,
        description="Validate the file now, as the batch would, and answer with what it"
        " would send; nothing is sent or recorded.",
    )

    @model_validator(mode="after")
    def _one_recipient_source(self) -> Self:
        if self.file_id is None and self.recipients is None and self.lists is None:
            raise PydanticCustomError("missing_file_id", "give file_id, recipients or lists")
        if self.file_id is not None and self.recipients is not None:
            raise PydanticCustomError(
                "file_id_and_recipients", "give file_id or recipients, not both"
            )
        if self.lists is not None and self.dry_run:
            raise PydanticCustomError(
                "dry_run_lists", "a dry run does not expand mailing lists: leave out lists"
            )
        return self

    @field_validator("expire_at")
    @classmethod
    def _after_schedule(cls, expire_at: datetime | None, info: ValidationInfo) -> datetime | None:
        schedule_at = info.data.get("schedule_at")
        if expire_at is not None and schedule_at is not None and expire_at <= schedule_at:
            raise ValueError("expire_at must be after schedule_at")
        if expire_at is not None and expire_at <= datetime.now(UTC):
            # Every row would end `expired` and nothing be sent.
            raise ValueError("expire_at is in the past")
        return expire_at

    @field_validator("column_mapping")
    @classmethod
    def _targets_request_data(cls, mapping: dict[str, str] | None) -> dict[str, str] | None:
        """Bland's bare `request_data` target keeps the column's name as the field's; the
        mapping is kept with every target spelled out, `request_data.<field>`."""
        if mapping is None:
            return None
        spelled: dict[str, str] = {}
        for column, given in mapping.items():
            target = f"request_data.{column}" if given == "request_data" else given
            field = target.removeprefix("request_data.")
            if PHONE_COLUMN in (column, given, field):
                raise ValueError(
                    "phone_number cannot be used as a target — the phone number column in"
                    " your CSV must be named phone_number exactly"
                )
            spaced = any(char.isspace() for char in field)
            if not target.startswith("request_data.") or not field or spaced:
                raise ValueError(
                    f"column {column!r} must map to 'request_data' or 'request_data.<field>'"
                    f" (a field name without spaces), not {given!r}"
                )
            spelled[column] = target
        return spelled


class BatchStarted(BaseModel):
    model_config = example(
        {
            "message": "SMS batch processing initiated via Temporal workflow",
            "batch_id": BATCH_ID,
            "workflow_id": WORKFLOW_ID,
        }
    )

    message: str = "SMS batch processing initiated via Temporal workflow"
    batch_id: str
    workflow_id: str


class AttachedFile(BaseModel):
    model_config = example(
        {
            "file_id": BATCH_ID,
            "id": BATCH_ID,
            "filename": "recipients.csv",
            "size_bytes": 1024,
        }
    )

    file_id: str
    id: str
    filename: str
    size_bytes: int


class NumberRequest(RequestBody):
    model_config = example({"number": "+15005550006", "channel": "sms", "mps": 10})

    number: str = Field(
        min_length=1,
        description="E.164 sender number, e.g. +15551234567, or an alphanumeric sender ID"
        " (1 to 11 letters, digits or spaces, at least one letter, e.g. `Acme`): SMS only,"
        " it sends batches but receives no replies.",
    )
    channel: Literal["sms", "whatsapp"] = "sms"
    mps: float | None = Field(
        None,
        ge=SENDER_MPS_MIN,
        le=SENDER_MPS_MAX,
        description="Messages per second this number's batches may send, across all of them"
        " and every worker (single sends and replies are not paced), from 0.01 to 10,000;"
        " left out: `HERALD_DEFAULT_SENDER_MPS`; null: no limit of Herald's own.",
    )
    webhook: AnyHttpUrl | None = Field(
        None, description="Conversation events of this number, when a send names no webhook."
    )
    opening_message: str | None = Field(
        None,
        min_length=1,
        description="The message a batch from this number sends when its request has no"
        " `global.agent_message`; `{{name}}` is filled from each row.",
    )


class NumberUpdate(RequestBody):
    """Only the fields given change."""

    model_config = example({"mps": 5, "webhook": "https://example.com/herald/conversations"})

    mps: float | None = Field(
        None,
        ge=SENDER_MPS_MIN,
        le=SENDER_MPS_MAX,
        description="Messages per second, from 0.01 to 10,000; null: no limit.",
    )
    webhook: AnyHttpUrl | None = Field(
        None, description="Conversation events of this number, when a send names no webhook."
    )
    opening_message: str | None = Field(
        None, min_length=1, description="The batches' opening message; null removes it."
    )


class SenderNumber(BaseModel):
    model_config = example(
        {
            "number": "+15005550006",
            "kind": "number",
            "channel": "sms",
            "mps": 10,
            "webhook": None,
            "created_at": "2026-03-02T10:15:00Z",
        }
    )

    number: str
    kind: Literal["number", "sender_id"]
    channel: str
    mps: float | None
    webhook: str | None
    opening_message: str | None
    created_at: datetime


class SenderNumberList(CursorPage):
    model_config = example({"numbers": [], "next_cursor": None})

    numbers: list[SenderNumber]


class OptOutRequest(RequestBody):
    model_config = example({"number": "+12015550123"})

    number: str = Field(min_length=1, description="The number to stop messaging, E.164 or bare.")


class OptOut(BaseModel):
    model_config = example(
        {"number": "+12015550123", "source": "api", "created_at": "2026-03-02T10:15:00Z"}
    )

    number: str
    source: str = Field(
        description="`api` (this endpoint), `carrier` (Twilio refused with 21610), or the"
        " channel the recipient opted out through."
    )
    created_at: datetime


class OptOutList(CursorPage):
    model_config = example({"opt_outs": [], "next_cursor": None})

    opt_outs: list[OptOut]


class BatchSummary(BaseModel):
    model_config = example(BATCH_SUMMARY)

    batch_id: str
    workflow_id: str
    name: str | None
    status: BatchStatus
    code: str | None
    reason: str | None
    agent_number: str
    rows_total: int | None
    recipients: int | None
    rejected: int | None = Field(description="Rows refused at validation; see `/errors`.")
    segments_total: int | None = Field(
        description="SMS segments of the messages to be sent (skipped ones excluded)."
    )
    messages_gsm7: int | None = Field(description="Messages to be sent in GSM-7.")
    messages_ucs2: int | None = Field(description="Messages to be sent in UCS-2.")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class BatchDetail(BatchSummary):
    model_config = example(
        {
            **BATCH_SUMMARY,
            "counts": {"delivered": 3, "rejected": 0},
            "temporal_ui_url": "http://127.0.0.1:8233/namespaces/default/workflows/" + WORKFLOW_ID,
        }
    )

    counts: dict[str, int] = Field(description="Ledger rows by message status, and `rejected`.")
    temporal_ui_url: str


class BatchList(CursorPage):
    model_config = example({"batches": [BATCH_SUMMARY], "next_cursor": None})

    batches: list[BatchSummary]


class MessageRow(BaseModel):
    seq: int
    row_number: int
    to_number: str
    body: str
    encoding: Literal["gsm7", "ucs2"] | None
    segments: int | None
    status: LedgerStatus
    carrier_sid: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    reference: str | None = Field(
        None, description="The caller's reference of this recipient (Mobivate `reference`)."
    )
    from_number: str | None = Field(
        None,
        description="The row's own sender when it is not the batch's `agent_number` (a"
        " Mobivate recipient's `originator`, a list's `agent_number`); null otherwise.",
    )
    clicks: int = Field(0, description="Clicks of the message's short links, repeats counted.")
    first_clicked_at: datetime | None = Field(
        None, description="When one of the message's short links was first followed."
    )


class MessageList(CursorPage):
    model_config = example({"messages": [MESSAGE_ROW], "next_cursor": "WzBd"})

    messages: list[MessageRow]


class RejectedRow(BaseModel):
    row_number: int = Field(description="1 is the first row after the header; 0 the header.")
    value: str | None = Field(description="The row's phone_number as given (row 0: columns).")
    code: str
    message: str


class RejectedRowList(CursorPage):
    model_config = example(
        {
            "rejected_rows": [
                {
                    "row_number": 3,
                    "value": "12",
                    "code": "invalid_number",
                    "message": "not a valid phone number",
                }
            ],
            "next_cursor": "WzNd",
        }
    )

    rejected_rows: list[RejectedRow]


class DryRunMessage(BaseModel):
    row_number: int
    to_number: str
    body: str
    encoding: Literal["gsm7", "ucs2"]
    segments: int
    skip_code: str | None = Field(description="`duplicate` or `opted_out`: would be skipped.")


class CountryCost(BaseModel):
    country: str = Field(description="ISO 3166 alpha-2, or `unknown`.")
    messages: int
    segments: int
    price_per_segment: float | None = Field(description="null: no price for the country.")
    cost: float | None = Field(description="null: no price for the country.")


class CostEstimate(BaseModel):
    currency: str
    total: float = Field(description="The cost of the priced countries' segments.")
    by_country: list[CountryCost]
    unknown_messages: int = Field(
        description="Messages to a country without a price, or whose country is not known."
    )
    unknown_segments: int


class BatchDryRun(BaseModel):
    """What `POST /v1/sms/batch` would do with the file, validated by the same code."""

    model_config = example(
        {
            "dry_run": True,
            "code": None,
            "reason": None,
            "rows_total": 1,
            "recipients": 1,
            "to_send": 1,
            "skipped": 0,
            "rejected": 0,
            "segments_total": 1,
            "messages_gsm7": 1,
            "messages_ucs2": 0,
            "rejected_rows": [],
            "messages": [
                {
                    "row_number": 1,
                    "to_number": "+12015550123",
                    "body": "Hi Ada!",
                    "encoding": "gsm7",
                    "segments": 1,
                    "skip_code": None,
                }
            ],
        }
    )

    dry_run: Literal[True] = True
    code: str | None = Field(
        description="The code the batch would fail with at validation (a file-level code,"
        " or `validation_failed` for `strict`); null if it would send."
    )
    reason: str | None
    rows_total: int
    recipients: int = Field(description="Ledger rows: to send, or skipped.")
    to_send: int
    skipped: int
    rejected: int
    segments_total: int
    messages_gsm7: int
    messages_ucs2: int
    rejected_rows: list[RejectedRow] = Field(description="The first 100, in file order.")
    messages: list[DryRunMessage] = Field(description="The first 20 ledger rows, rendered.")
    estimated_cost: CostEstimate = Field(
        description="The messages to be sent, priced by country from `HERALD_PRICES`."
    )


class BatchEvent(BaseModel):
    seq: int
    status: BatchStatus
    payload: dict[str, Any] = Field(description="Exactly the body posted to the status webhook.")
    created_at: datetime
    delivered_at: datetime | None


class StatusEvent(BaseModel):
    """A lifecycle event, as posted to a batch's `status_webhook` (and kept in `/logs`)."""

    model_config = example(
        {
            "batch_id": BATCH_ID,
            "workflow_id": WORKFLOW_ID,
            "status": "completed_partial",
            "timestamp": "2026-03-02T10:15:04.512938+00:00",
            "metadata": {"campaign": "spring"},
            "messages_total": 11,
            "messages_successful": 6,
            "messages_failed": 1,
            "messages_skipped": 3,
            "messages_cancelled": 0,
            "messages_uncertain": 0,
            "messages_expired": 1,
        }
    )

    batch_id: str
    workflow_id: str
    status: BatchStatus
    timestamp: datetime = Field(description="When the event was recorded, UTC.")
    message: str | None = Field(
        None,
        description="`waiting_for_scheduled_messages`, `dispatching` and progress events:"
        " `Requested: <rows_total>. Validated: <recipients>. Dispatched: <n>. MPS: <x.x>.`",
    )
    metadata: dict[str, Any] | None = Field(None, description="`global.metadata`, as given.")
    code: str | None = Field(None, description="Failed and cancelled events.")
    reason: str | None = Field(None, description="With `code`.")
    messages_total: int | None = Field(None, description="Final events only, as the rest.")
    messages_successful: int | None = None
    messages_failed: int | None = None
    messages_skipped: int | None = None
    messages_cancelled: int | None = None
    messages_uncertain: int | None = None
    messages_expired: int | None = None
    error_codes: dict[str, int] | None = Field(
        None,
        description="A `paused` event of a batch that paused itself: the commonest carrier"
        " error codes behind it, with their counts.",
    )
    messages_waiting_for_window: int | None = Field(
        None,
        description="Every event of a batch with a `send_window`: its rows `pending` until"
        " their window opens (0 in the final event).",
    )


class ClickEvent(BaseModel):
    """A short link's first click, as posted to its batch's `status_webhook` (signed and
    retried as the lifecycle events, `webhook-id` `click_<code>`), whenever it comes."""

    model_config = example(
        {
            "batch_id": BATCH_ID,
            "workflow_id": WORKFLOW_ID,
            "status": "click",
            "timestamp": "2026-03-02T11:02:41.118204+00:00",
            "seq": 1,
            "row_number": 1,
            "to_number": "+14155552671",
            "url": "https://example.com/spring-sale",
            "clicked_at": "2026-03-02T11:02:40.907115+00:00",
            "user_agent": "Mozilla/5.0",
            "metadata": {"campaign": "spring"},
        }
    )

    batch_id: str
    workflow_id: str
    status: Literal["click"]
    timestamp: datetime = Field(description="When the event was posted, UTC.")
    seq: int = Field(description="The message's ledger seq.")
    row_number: int | None = Field(description="The message's row in the file.")
    to_number: str
    url: str = Field(description="The link's own URL, which the short link redirects to.")
    clicked_at: datetime = Field(description="The first click, UTC.")
    user_agent: str | None = Field(description="The first click's User-Agent.")
    reference: str | None = Field(None, description="The message's reference, if it has one.")
    metadata: dict[str, Any] | None = Field(None, description="`global.metadata`, as given.")


class BatchLogs(CursorPage):
    model_config = example(
        {
            "events": [
                {
                    "seq": 1,
                    "status": "validating",
                    "payload": {
                        "batch_id": BATCH_ID,
                        "workflow_id": WORKFLOW_ID,
                        "status": "validating",
                        "timestamp": "2026-03-02T10:15:00.100000+00:00",
                    },
                    "created_at": "2026-03-02T10:15:00.100000Z",
                    "delivered_at": None,
                }
            ],
            "next_cursor": None,
        }
    )

    events: list[BatchEvent]


class WebhookDelivery(BaseModel):
    event_seq: int = Field(description="The `seq` of the event in `/logs`.")
    attempt: int = Field(description="1 for the first post of the event, 2 for its first retry.")
    url: str
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null if none came.")
    error: str | None
    duration_ms: int
    next_retry_at: datetime | None = Field(
        description="When the event is posted again; null once delivered or given up on."
    )


class WebhookDeliveries(CursorPage):
    model_config = example(
        {
            "deliveries": [
                {
                    "event_seq": 1,
                    "attempt": 1,
                    "url": "https://example.com/herald",
                    "attempted_at": "2026-03-02T10:15:00.200000Z",
                    "status_code": 204,
                    "error": None,
                    "duration_ms": 42,
                    "next_retry_at": None,
                }
            ],
            "next_cursor": None,
        }
    )

    deliveries: list[WebhookDelivery]


class CancelRequest(RequestBody):
    model_config = example({"reason": "wrong list"})

    reason: str | None = Field(None, max_length=500, description="Kept on the batch and sent.")


RetryStatus = Literal["failed", "uncertain", "cancelled"]


def _failed_only() -> list[RetryStatus]:
    return ["failed"]


class RetryRequest(RequestBody):
    model_config = example({"statuses": ["failed"]})

    statuses: list[RetryStatus] = Field(
        default_factory=_failed_only,
        min_length=1,
        description="Ledger statuses to send again. `uncertain` rows may have reached the"
        " carrier already: retry them only when a duplicate is acceptable.",
    )


BatchAction = Literal["cancel", "pause", "resume", "retry"]


class BatchControl(BaseModel):
    model_config = example(
        {"batch_id": BATCH_ID, "workflow_id": WORKFLOW_ID, "action": "pause", "rows": None}
    )

    batch_id: str
    workflow_id: str
    action: BatchAction = Field(description="As requested.")
    rows: int | None = Field(
        None,
        description="For `retry`: the rows that will be sent again; of a batch whose run"
        " ended before it did, also the rows that run left unsent or on the wire (some of the"
        " latter found sent by reconciliation), or none while its file is validated again.",
    )


class CarrierAccountRequest(RequestBody):
    """The account's own Twilio subaccount, whose SID and auth token its sends then use."""

    model_config = example({"account_sid": "AC" + "0" * 32, "auth_token": "your-auth-token"})

    account_sid: str = Field(pattern=ACCOUNT_SID_PATTERN, examples=["AC" + "0" * 32])
    auth_token: SecretStr = Field(min_length=1, max_length=200)

    @field_validator("auth_token")
    @classmethod
    def _printable_ascii(cls, token: SecretStr) -> SecretStr:
        """It goes in HTTP Basic auth, which takes no other text (Twilio's are 32 hex
        digits): a token the carrier client could not send failed the first request."""
        if not all("!" <= char <= "~" for char in token.get_secret_value()):
            raise ValueError("auth_token must be printable ASCII, without spaces")
        return token


class CarrierAccount(BaseModel):
    model_config = example({"account_sid": "AC" + "0" * 32, "auth_token": "****oken"})

    account_sid: str
    # Never the token itself: its last four characters, after asterisks.
    auth_token: str


class ListRequest(RequestBody):
    model_config = example({"name": "newsletter"})

    name: str = Field(min_length=1, max_length=200, description="The list's name.")
    id: uuid.UUID | None = Field(
        None,
        description="The list's id, when it must keep one it has elsewhere (a Mobivate"
        " list's, so that requests naming it need no change); a new one when left out.",
    )


class MailingList(BaseModel):
    model_config = example(
        {
            "id": "0c1d2e3f-5d0a-4c47-9a51-2f1c8e7d9b10",
            "name": "newsletter",
            "contacts": 2,
            "created_at": "2026-03-02T10:15:00Z",
        }
    )

    id: str
    name: str
    contacts: int = Field(description="Contacts in the list.")
    created_at: datetime


class MailingLists(CursorPage):
    model_config = example(
        {
            "lists": [
                {
                    "id": "0c1d2e3f-5d0a-4c47-9a51-2f1c8e7d9b10",
                    "name": "newsletter",
                    "contacts": 2,
                    "created_at": "2026-03-02T10:15:00Z",
                }
            ],
            "next_cursor": None,
        }
    )

    lists: list[MailingList]


class ContactsRequest(RequestBody):
    model_config = example({"contacts": [{"phone_number": "+12015550123", "first_name": "Ada"}]})

    contacts: list[dict[str, Any]] = Field(
        min_length=1,
        description="Contacts like a JSON file's rows: `phone_number` plus fields (the"
        " template tags of a batch that names the list).",
    )


class ContactsAdded(BaseModel):
    model_config = example({"added": 1, "contacts": 2, "rejected": 0, "rejected_rows": []})

    added: int = Field(description="Contacts added or updated (a number listed once).")
    contacts: int = Field(description="Contacts in the list now.")
    rejected: int = Field(description="Rows that are not contacts (blank or impossible number).")
    rejected_rows: list[RejectedRow] = Field(
        description="The first 1,000 rows that are not contacts, by row number."
    )


class ContactsRemoved(BaseModel):
    model_config = example({"removed": 1, "contacts": 1})

    removed: int = Field(description="Numbers that were in the list.")
    contacts: int = Field(description="Contacts in the list now.")


class Contact(BaseModel):
    phone_number: str
    fields: dict[str, str]
    created_at: datetime


class ContactList(CursorPage):
    model_config = example(
        {
            "contacts": [
                {
                    "phone_number": "+12015550123",
                    "fields": {"first_name": "Ada"},
                    "created_at": "2026-03-02T10:15:00Z",
                }
            ],
            "next_cursor": None,
        }
    )

    contacts: list[Contact]
