"""Starting, steering and reading batches."""

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.channels import Channel
from activities.recipients.phones import is_sender_id, to_sender
from activities.recipients.rows import RecipientRules
from api import pagination
from api.errors import HeraldError, InvalidRequest
from api.models import (
    BatchAction,
    BatchControl,
    BatchDetail,
    BatchDryRun,
    BatchList,
    BatchLogs,
    BatchRequest,
    BatchStarted,
    BatchSummary,
    CostEstimate,
    DryRunMessage,
    MessageList,
    RejectedRow,
    RejectedRowList,
    WebhookDeliveries,
)
from api.services import batch_checks
from api.services.batch_checks import FileShape, TooManyRecipients
from api.services.mailing_lists import list_sizes
from api.services.numbers import InvalidSenderId
from api.services.webhook_urls import require_safe_webhook
from settings import Settings
from store import batches, campaigns, events, files, messages, numbers, opt_outs
from workflows.contracts import (
    ACCOUNT_ID,
    AGENT_NUMBER,
    BATCH_ID,
    BATCH_STATUS,
    BATCH_WORKFLOW,
    SPREAD_CHUNK_ROWS,
    AutoPause,
    BatchInput,
    DispatchSettings,
    SendWindow,
    Timing,
    ValidationLimits,
    ValidationOptions,
    batch_workflow_id,
)
from workflows.statuses import FINAL_BATCH_STATUSES, BatchStatus, LedgerStatus

# How long a retry waits for the previous run, already final, to close.
FINAL_CLOSE_SECONDS = 10


class FileNotFound(HeraldError):
    status_code = 404
    code = "FILE_NOT_FOUND"


class AgentNumberNotFound(HeraldError):
    status_code = 404
    code = "AGENT_NUMBER_NOT_FOUND"


class CampaignNotFound(HeraldError):
    status_code = 404
    code = "CAMPAIGN_NOT_FOUND"


class LanguageNotInCampaign(HeraldError):
    code = "LANGUAGE_NOT_IN_CAMPAIGN"


class CampaignAndMessage(HeraldError):
    code = "CAMPAIGN_AND_MESSAGE"


class BatchAlreadyExists(HeraldError):
    status_code = 409
    code = "BATCH_ALREADY_EXISTS"


class BatchNotFound(HeraldError):
    status_code = 404
    code = "BATCH_NOT_FOUND"


class BatchAlreadyFinished(HeraldError):
    status_code = 409
    code = "BATCH_ALREADY_FINISHED"


class BatchExpired(HeraldError):
    status_code = 409
    code = "BATCH_EXPIRED"


class BatchNotFinished(HeraldError):
    status_code = 409
    code = "BATCH_NOT_FINISHED"


class NothingToRetry(HeraldError):
    status_code = 409
    code = "NOTHING_TO_RETRY"


class TemporalUnavailable(HeraldError):
    status_code = 503
    code = "TEMPORAL_UNAVAILABLE"


# The codes of a batch whose workflow never started, ended so rather than left `queued`: the
# same request again starts it (TEMPORAL_UNAVAILABLE at its start; `not_started`, ended by
# housekeeping after its API process stopped before the start).
UNSTARTED_CODES = (TemporalUnavailable.code, batches.NOT_STARTED)


# The rows a run of a batch's workflow leaves when it ends before the batch does (terminated
# through Temporal): the batch's next run sends them (`sending` ones reconciled first).
LEFT_BY_A_RUN = [LedgerStatus.PENDING, LedgerStatus.SENDING, LedgerStatus.UNCERTAIN]
# How long a start that failed waits to learn whether its run is there (_started_anyway).
STARTED_CHECK_TIMEOUT = timedelta(seconds=5)
# A file larger (about 40,000 rows of a typical list) is validated on the validation task
# queue (`_validation_queue`); a smaller one, in well under a second, on the workflow's own.
LARGE_FILE_BYTES = 1 << 20


def parse_batch_id(value: str, error: type[HeraldError] = BatchNotFound) -> uuid.UUID:
    """A malformed id cannot name anything of the caller's: the same 404 as a missing one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise error(f"{value!r} is not an id of this account") from None


def _request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def dispatch_settings(
    settings: Settings, sender_mps: float | None, timing: Timing
) -> DispatchSettings:
    """`sender_mps`, the slowest rate among the batch's senders, shortens its slices to
    `slice_seconds` of sending: the batch's slices in flight at once (`chunk_window` x
    `slices_in_flight`) share the sender's rate, each a part of it. A batch from unlimited
    senders gets the largest, which costs Temporal least per message. A spread batch's chunks
    are smaller (SPREAD_CHUNK_ROWS)."""
    slice_size = settings.slice_size
    chunk_window, slices_in_flight = settings.chunk_window, settings.slices_in_flight
    if sender_mps is not None:
        in_flight = chunk_window * slices_in_flight
        rows = sender_mps * settings.slice_seconds
        if rows < in_flight:
            # A sender slower than a row per slice in flight in `slice_seconds` (0.01 mps:
            # one row in 100 s) gets fewer slices at once, one chunk's: each of 8 slices of
            # one row booked its turn 100 s after the one before, the last past its
            # activity's 10 minutes, whose retry booked another turn behind, for good.
            chunk_window, slices_in_flight = 1, max(1, int(rows))
            in_flight = slices_in_flight
        slice_size = max(1, min(slice_size, int(rows / in_flight)))
    chunk_size = settings.chunk_size
    if timing.spread_seconds:
        chunk_size = min(chunk_size, SPREAD_CHUNK_ROWS)
    return DispatchSettings(
        chunk_size=chunk_size,
        slice_size=slice_size,
        chunk_window=chunk_window,
        slices_in_flight=slices_in_flight,
        chunks_per_run=settings.chunks_per_run,
        send_heartbeat_timeout_seconds=settings.send_heartbeat_timeout_seconds,
        send_task_queue=settings.send_task_queue,
        inline_slices=settings.inline_slices,
        sender_mps=sender_mps,
    )


async def _validation_queue(
    pool: asyncpg.Pool, settings: Settings, file_id: uuid.UUID, request: Mapping[str, Any]
) -> str | None:
    """Where the batch's ledger is built: a file of over `LARGE_FILE_BYTES`, or one with
    mailing lists to add, on the validation task queue, where each worker validates at most
    `HERALD_VALIDATIONS_AT_ONCE` at once and the others wait holding no worker's slot; a
    smaller one on the workflow's own queue, at once, never behind a large one."""
    if request.get("lists") or await files.size_of(pool, file_id) > LARGE_FILE_BYTES:
        return settings.validation_task_queue
    return None


async def _slowest_rate(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    agent_number: str | None,
    request: Mapping[str, Any],
) -> float | None:
    """The slowest rate limit among every sender of a batch: its own, its rows', its lists'."""
    senders = [n for n in batches.batch_senders(agent_number or "", request) if n]
    return await numbers.slowest_rate(pool, account_id, senders)


def validation_limits(settings: Settings) -> ValidationLimits:
    """The limits travel in the workflow input: a batch is validated under the limits in
    force when the API accepted it, whatever settings the worker that runs it has."""
    return ValidationLimits(
        max_rows=settings.max_rows_per_batch, max_message_chars=settings.max_message_chars
    )


async def start_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    body: BatchRequest,
    *,
    senders: Mapping[int, str] | None = None,
    references: Sequence[tuple[int, str]] = (),
    campaign_id: uuid.UUID | None = None,
    load_validated: bool = False,
) -> BatchStarted:
    """Record the batch (of `campaign_id`, if a campaign's) and start its workflow; the same
    request again is the same batch. With `load_validated`, the file is ledger rows the
    caller validated (`columns.write_ledger`): the workflow loads them, validating nothing.

    Inline `recipients` are stored as a JSON file first, so from there on the batch is one
    of an attached file in every way (and each such request is a new batch); so is a batch
    of mailing lists alone, with an empty file. `senders` gives rows their own sender (row
    number -> sender, each one the account's); `references`, the caller's reference of rows
    (row number, reference), are stored before the workflow starts, so that no failure to
    store them answers an error for a batch already sending; `campaign_id` makes it that
    campaign's (a Postman upload's)."""
    checked = await _checked_request(pool, settings, account_id, body)
    file_id = checked.file_id
    agent_number = checked.agent_number
    request = checked.request
    campaign_id = checked.campaign_id or campaign_id
    await _check_lists(pool, account_id, request, agent_number)
    row_senders = {
        str(row): sender
        for row, sender in (
            await _own_senders(pool, account_id, senders or {}, channel=body.global_.channel)
        ).items()
        if sender != agent_number
    }
    if body.global_.channel == "whatsapp":
        # The lists' and rows' own senders too: a sender ID's messages would all fail.
        _require_whatsapp_senders(
            batches.batch_senders(agent_number, {**request, "senders": row_senders})
        )
    inline = file_id is None
    if file_id is None:
        file_id = await _inline_file(pool, settings, account_id, body.recipients or [])
    for kept in (request, checked.given):
        kept.setdefault("file_id", str(file_id))
        if row_senders:
            kept["senders"] = row_senders
    workflow_id = batch_workflow_id(str(file_id))
    try:
        recorded = await batches.create_batch(
            pool,
            batch_id=file_id,
            account_id=account_id,
            workflow_id=workflow_id,
            name=body.name,
            agent_number=agent_number,
            request=request,
            request_hash=_request_hash(checked.given),
            campaign_id=campaign_id,
        )
    except asyncpg.ForeignKeyViolationError as error:
        if error.constraint_name == batches.FILE_KEY:
            # Found above, deleted since: left unused past HERALD_UNUSED_FILE_DAYS.
            raise FileNotFound(f"no file {body.file_id!r}") from error
        if error.constraint_name != batches.CAMPAIGN_KEY:
            raise
        # Read earlier (a Postman upload's, before its whole file was checked), deleted since.
        if inline:
            await files.delete_unused_file(pool, account_id, file_id)
        raise CampaignNotFound(f"campaign {campaign_id} was deleted") from error
    if recorded is None:
        # Checked above, removed since (`numbers.delete_number`).
        if inline:
            await files.delete_unused_file(pool, account_id, file_id)
        raise AgentNumberNotFound("a sender of the batch was removed from the account meanwhile")
    batch, created = recorded
    if not created and batch["request_hash"] != _request_hash(checked.given):
        raise BatchAlreadyExists(
            f"file {file_id} already started batch {workflow_id} with a different request"
        )
    if not created and batch["code"] in UNSTARTED_CODES:
        # Its workflow never started: this request is the new attempt.
        await _requeue_unstarted(pool, account_id, batch, batch["code"])
    elif not created and batch["status"] != BatchStatus.QUEUED:
        # Started before: nothing to start, even once Temporal has forgotten that run (past
        # its namespace's retention), when a start would validate and send the file again.
        return BatchStarted(batch_id=str(file_id), workflow_id=workflow_id)
    elif not created and not await batches.keep_queued(pool, file_id):
        # Housekeeping ended it as never started since it was read: this request is the new
        # attempt. (Or a workflow moved it on: then the start below finds it started.)
        await _requeue_unstarted(pool, account_id, batch, batches.NOT_STARTED)
    if created and references:
        await messages.add_references(pool, account_id, file_id, references)
    timing = _timing(request)
    try:
        await _start_workflow(
            temporal,
            settings,
            batch,
            BatchInput(
                batch_id=str(file_id),
                account_id=str(account_id),
                agent_number=agent_number,
                dispatch=dispatch_settings(
                    settings,
                    await _slowest_rate(pool, account_id, agent_number, request),
                    timing,
                ),
                limits=validation_limits(settings),
                timing=timing,
                auto_pause=_auto_pause(request),
                load_validated=load_validated,
                # After the final event of its end as unstarted, if housekeeping ended it.
                first_event_seq=0 if created else await events.last_event_seq(pool, file_id),
                validation_task_queue=await _validation_queue(pool, settings, file_id, request),
            ),
            WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass
    except TemporalUnavailable as error:
        # Final rather than `queued` forever: the batch says it never started, and the
        # same request again starts it.
        await batches.set_unstarted(pool, file_id, code=error.code, reason=error.message)
        raise
    return BatchStarted(batch_id=str(file_id), workflow_id=workflow_id)


async def dry_run_batch(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: BatchRequest
) -> BatchDryRun:
    """Validate the batch's rows now, as its workflow would, by the same code; nothing is
    stored and nothing is sent."""
    checked = await _checked_request(pool, settings, account_id, body)
    if checked.file_id is None:
        content = _inline_content(settings, body.recipients or [])
    else:
        _, content = await files.file_content(pool, account_id, checked.file_id)
    request = checked.request
    opted_out: set[str] = set()
    if ValidationOptions.from_request(request).exclude_opt_outs:
        opted_out = await opt_outs.opted_out_numbers(pool, account_id)
    # The validation engine (polars) loads with the first dry run, not with the API: an API
    # that never runs one stays ~35 MB smaller.
    from activities.recipients.preview import preview
    from activities.recipients.prices import estimate

    rules = RecipientRules.from_request(request, validation_limits(settings), opted_out)
    found = await asyncio.to_thread(
        preview,
        content,
        rules,
        strict=body.strict,
        short_links_base=settings.api_url if body.shorten_urls else None,
    )
    tally = found.tally
    return BatchDryRun(
        code=found.code,
        reason=found.reason,
        rows_total=tally.rows,
        recipients=tally.recipients,
        to_send=tally.recipients - tally.skipped,
        skipped=tally.skipped,
        rejected=tally.rejected,
        segments_total=tally.segments,
        messages_gsm7=tally.gsm7,
        messages_ucs2=tally.ucs2,
        rejected_rows=[
            RejectedRow(row_number=r.row_number, value=r.value, code=r.code, message=r.reason)
            for r in found.rejected
        ],
        messages=[DryRunMessage(**dataclasses.asdict(m)) for m in found.messages],
        estimated_cost=CostEstimate(
            **dataclasses.asdict(
                estimate(found.groups.by_key.values(), settings.prices, settings.price_currency)
            )
        ),
    )


@dataclass(frozen=True, kw_only=True)
class CheckedRequest:
    """A batch request found acceptable: its file (None for inline rows), its sender, and
    the request as the batch keeps it (`given`: as given, whose hash finds its batch again;
    `request`: with what the sender adds, its opening message)."""

    file_id: uuid.UUID | None
    agent_number: str
    given: dict[str, Any]
    request: dict[str, Any]
    # The campaign whose template is the message, if the request named one.
    campaign_id: uuid.UUID | None = None


async def _checked_request(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: BatchRequest
) -> CheckedRequest:
    """The request checked as far as it can be before it is accepted: its file and sender
    are the account's, its status webhook is safe, and its file's size, header and message
    will not fail the batch at validation."""
    file_id = None
    if body.file_id is not None:
        file_id = parse_batch_id(body.file_id, FileNotFound)
        if not await files.file_exists(pool, account_id, file_id):
            raise FileNotFound(f"no file {body.file_id!r}")
    await require_safe_webhook(
        None if body.status_webhook is None else str(body.status_webhook), settings
    )
    agent_number, sender = await _registered_sender(
        pool, account_id, body.global_.agent_number, channel=body.global_.channel
    )
    if body.global_.channel == "whatsapp":
        _require_whatsapp_senders([agent_number])
    given = _stored_request(body, agent_number, file_id)
    campaign_id = await _campaign_message(pool, account_id, body, given, file_id)
    request = dict(given)
    if sender["opening_message"] and not (body.global_.agent_message or "").strip():
        request["opening_message"] = sender["opening_message"]
    lists_rows = await _lists_rows(pool, settings, account_id, request)
    shape = await _file_shape(pool, settings, account_id, file_id, body, lists_rows)
    batch_checks.require_phone_column(shape.header)
    batch_checks.require_message(request, shape.header)
    rules = RecipientRules.from_request(request, validation_limits(settings), frozenset())
    batch_checks.require_usable_header(
        shape.header, rules, body.strict, with_lists=bool(request.get("lists"))
    )
    return CheckedRequest(
        file_id=file_id,
        agent_number=agent_number,
        given=given,
        request=request,
        campaign_id=campaign_id,
    )


async def _lists_rows(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, request: dict[str, Any]
) -> int:
    """The contacts of the mailing lists the request names (a list named twice, twice: each
    naming expands it), within the batch's rows; LIST_NOT_FOUND for one not the account's."""
    ids = [source["id"] for source in request.get("lists") or []]
    sizes = await list_sizes(pool, account_id, ids)
    total = sum(sizes[given] for given in ids)
    if total > settings.max_rows_per_batch:
        raise TooManyRecipients(
            f"the {total} contacts of the lists named; a batch holds at most"
            f" {settings.max_rows_per_batch}"
        )
    return total


async def _file_shape(
    pool: asyncpg.Pool,
    settings: Settings,
    account_id: uuid.UUID,
    file_id: uuid.UUID | None,
    body: BatchRequest,
    lists_rows: int,
) -> FileShape:
    """The header of the request's file (or inline rows), once its size, with the
    `lists_rows` contacts of its mailing lists, is within limits; None for a batch of
    mailing lists alone (its contacts' fields are known at validation)."""
    if file_id is None and body.recipients is None:
        return FileShape(header=None)
    if file_id is None:
        rows = body.recipients or []
        if lists_rows and len(rows) + lists_rows > settings.max_rows_per_batch:
            raise batch_checks.too_many_with_lists(
                f"{len(rows)} recipients", lists_rows, settings.max_rows_per_batch
            )
        return batch_checks.shape_of_content(_inline_content(settings, rows))
    shape = await batch_checks.shape_of_file(pool, account_id, file_id)
    await batch_checks.require_file_within_limit(
        pool, account_id, file_id, shape, settings.max_rows_per_batch, lists_rows=lists_rows
    )
    return shape


async def own_sender(pool: asyncpg.Pool, account_id: uuid.UUID, given: str, *, channel: str) -> str:
    """`given` as Herald stores a sender (E.164, or a sender ID), when it is the account's,
    registered to send on `channel` (numbers.sends_on)."""
    sender, _ = await _registered_sender(pool, account_id, given, channel=channel)
    return sender


async def _registered_sender(
    pool: asyncpg.Pool, account_id: uuid.UUID, given: str, *, channel: str
) -> tuple[str, dict]:
    """`own_sender`, with its registration (its row)."""
    sender = to_sender(given)
    registered = None if sender is None else await numbers.get_number(pool, account_id, sender)
    if sender is None or registered is None:
        raise AgentNumberNotFound(f"{given} is not a registered sender of this account")
    if not numbers.sends_on(registered, channel):
        raise AgentNumberNotFound(
            f"{given} is registered for whatsapp, not configured for SMS: register it with"
            ' channel "sms" (the carrier account must own it) to send SMS from it'
        )
    return sender, registered


async def _own_senders(
    pool: asyncpg.Pool, account_id: uuid.UUID, given: Mapping[int, str], *, channel: str
) -> dict[int, str]:
    """Rows' own senders, each checked once and stored as `own_sender` gives it."""
    checked = {
        raw: await own_sender(pool, account_id, raw, channel=channel) for raw in set(given.values())
    }
    return {row: checked[raw] for row, raw in given.items()}


async def _require_senders_held(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch: Mapping[str, Any]
) -> None:
    """AgentNumberNotFound unless the account still holds every sender of the batch (its own,
    its rows', its lists'): one given up since, perhaps registered by another account now, is
    not sent from again."""
    channel = Channel.of(batch["request"]).channel
    for sender in sorted(batches.batch_senders(batch["agent_number"], batch["request"])):
        await own_sender(pool, account_id, sender, channel=channel)


async def _requeue_unstarted(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch: Mapping[str, Any], code: str
) -> None:
    """Put a batch that never started back to `queued` for this request's start
    (`batches.requeue_unstarted`); AgentNumberNotFound when a sender of it was removed since
    `create_batch` held them. Requeued by another attempt meanwhile (or started and ended
    since), it is left to the start, which finds it started."""
    if await batches.requeue_unstarted(pool, batch, code=code):
        return
    now = await batches.get_batch(pool, account_id, batch["id"])
    if now is not None and now["status"] == BatchStatus.FAILED and now["code"] == code:
        await _require_senders_held(pool, account_id, batch)


def _require_whatsapp_senders(senders: Iterable[str]) -> None:
    """InvalidSenderId for a sender ID among a WhatsApp batch's senders."""
    for sender in sorted(senders):
        if is_sender_id(sender):
            raise InvalidSenderId(f"sender ID {sender!r} can only send SMS, not whatsapp")


async def _check_lists(
    pool: asyncpg.Pool, account_id: uuid.UUID, request: dict[str, Any], agent_number: str
) -> None:
    """The request's mailing lists' senders are the account's (kept as stored; the lists
    were found by `_lists_rows`); a list's sender that is the batch's own is no sender of its
    own (its rows, as a file's, have no `from_number`)."""
    named: list[dict[str, Any]] = request.get("lists") or []
    channel = Channel.of(request).channel
    for source in named:
        if "agent_number" in source:
            sender = await own_sender(pool, account_id, source["agent_number"], channel=channel)
            if sender == agent_number:
                del source["agent_number"]
            else:
                source["agent_number"] = sender


def _timing(request: dict[str, Any]) -> Timing:
    """The batch's timing, from its request as stored (so a retry run reads it as well)."""

    def moment(key: str) -> float:
        value = request.get(key)
        return datetime.fromisoformat(value).timestamp() if value else 0.0

    return Timing(
        schedule_at=moment("schedule_at"),
        spread_seconds=float(request.get("spread_hours") or 0.0) * 3600,
        expire_at=moment("expire_at"),
        send_window=send_window(request),
    )


def _auto_pause(request: dict[str, Any]) -> AutoPause | None:
    """When the batch pauses itself, from its request as stored (a retry run reads it too):
    a rate left out is the default, an explicit null turns it off."""
    if "auto_pause_error_rate" not in request:
        return AutoPause()
    rate = request["auto_pause_error_rate"]
    return None if rate is None else AutoPause(error_rate=float(rate))


async def campaign_or_404(pool: asyncpg.Pool, account_id: uuid.UUID, campaign_id: str) -> dict:
    found = await campaigns.get_campaign(
        pool, account_id, parse_batch_id(campaign_id, CampaignNotFound)
    )
    if found is None:
        raise CampaignNotFound(f"no campaign {campaign_id!r} in this account")
    return found


async def campaign_template(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    campaign_id: str,
    language: str | None,
    message: str | None,
) -> tuple[dict, str]:
    """The campaign named instead of a `message`, and its template in `language`."""
    if message is not None:
        raise CampaignAndMessage("give campaign_id or a message, not both")
    language = language or "english"
    found = await campaign_or_404(pool, account_id, campaign_id)
    template = found["templates"].get(language)
    if template is None:
        raise LanguageNotInCampaign(
            f"campaign {campaign_id} has no {language!r} template; it has"
            f" {', '.join(found['templates'])}"
        )
    return found, template


async def _campaign_message(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    body: BatchRequest,
    request: dict[str, Any],
    file_id: uuid.UUID | None,
) -> uuid.UUID | None:
    """With `campaign_id`, its template becomes the stored request's message (so the batch
    keeps the text it was started with); the campaign's id, or None. For a file whose batch
    that campaign started, the text that batch was started with: the same request again is
    that batch, however the campaign changed since, or if it was deleted."""
    if body.campaign_id is None:
        return None
    if file_id is not None and not body.global_.agent_message:
        started = await batches.get_batch(pool, account_id, file_id)
        if started is not None and started["request"].get("campaign_id") == request.get(
            "campaign_id"
        ):
            request["global"]["agent_message"] = started["request"]["global"]["agent_message"]
            return started["campaign_id"]
    found, template = await campaign_template(
        pool, account_id, body.campaign_id, body.language, body.global_.agent_message
    )
    request["global"]["agent_message"] = template
    return found["id"]


def _stored_request(
    body: BatchRequest, agent_number: str, file_id: uuid.UUID | None
) -> dict[str, Any]:
    """The request as the batch keeps it. Options at their defaults are left out, so adding
    an option changes no earlier request's hash: the same request again still finds its
    batch; so is the sender as E.164 and the file's id in its one spelling (a client may
    send it in capitals). Inline rows are in the file, as an attached file's are."""
    request = body.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude_defaults=True,
        exclude={"recipients", "dry_run"},
    )
    if body.auto_pause_error_rate is None:
        request["auto_pause_error_rate"] = None  # off: kept, unlike other nulls
    request["global"]["agent_number"] = agent_number
    if file_id is not None:
        request["file_id"] = str(file_id)
    return request


def _inline_content(settings: Settings, rows: list[dict[str, Any]]) -> bytes:
    """Inline rows as the JSON file they are stored as."""
    if len(rows) > settings.max_rows_per_batch:
        raise TooManyRecipients(
            f"{len(rows)} recipients; a batch holds at most {settings.max_rows_per_batch}"
        )
    return json.dumps(rows, ensure_ascii=False).encode()


async def _inline_file(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, rows: list[dict[str, Any]]
) -> uuid.UUID:
    row = await files.insert_bytes(
        pool,
        account_id,
        filename="recipients.json",
        content_type="application/json",
        content=_inline_content(settings, rows),
    )
    return row["id"]


async def _start_workflow(
    temporal: Client,
    settings: Settings,
    batch: dict[str, Any],
    input: BatchInput,
    reuse: WorkflowIDReusePolicy,
) -> None:
    try:
        await temporal.start_workflow(
            BATCH_WORKFLOW,
            input,
            id=batch["workflow_id"],
            task_queue=settings.task_queue,
            id_reuse_policy=reuse,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(BATCH_STATUS, BatchStatus.QUEUED),
                    SearchAttributePair(BATCH_ID, input.batch_id),
                    SearchAttributePair(ACCOUNT_ID, input.account_id),
                    SearchAttributePair(AGENT_NUMBER, input.agent_number),
                ]
            ),
            memo={"name": batch["name"] or ""},
        )
    except (RuntimeError, RPCError) as error:
        if await _started_anyway(temporal, batch["workflow_id"], reuse):
            return
        raise TemporalUnavailable(
            f"the batch is recorded but its workflow could not start ({error}); "
            "send the same request again"
        ) from error


async def _started_anyway(temporal: Client, workflow_id: str, reuse: WorkflowIDReusePolicy) -> bool:
    """Whether a start that failed reached Temporal after all (a deadline that passed, or a
    connection cut, after the server took it): its run is there, sending, and a 503 would
    have the client send again (a dialect's repeat is a new batch: everyone twice). A first
    start (REJECT_DUPLICATE) made the run if any has its id, a retry's if one is running (the
    run before it had ended). Unknown (Temporal unreachable) is no."""
    try:
        described = await temporal.get_workflow_handle(workflow_id).describe(
            rpc_timeout=STARTED_CHECK_TIMEOUT
        )
    except (RuntimeError, RPCError):
        return False
    return (
        reuse is WorkflowIDReusePolicy.REJECT_DUPLICATE
        or described.status == WorkflowExecutionStatus.RUNNING
    )


async def signal_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    account_id: uuid.UUID,
    batch_id: str,
    signal: BatchAction,
    *args: Any,
) -> BatchControl:
    """Send `cancel`, `pause` or `resume` to a running batch's workflow."""
    batch = await batch_or_404(pool, account_id, batch_id)
    if batch["status"] in FINAL_BATCH_STATUSES:
        raise BatchAlreadyFinished(f"batch {batch_id} has already ended ({batch['status']})")
    try:
        await temporal.get_workflow_handle(batch["workflow_id"]).signal(signal, args=args)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise BatchAlreadyFinished(
                f"batch {batch_id} has no run of its workflow open: it has ended, or its run"
                " was terminated through Temporal (then /retry sends what it left)"
            ) from error
        raise TemporalUnavailable(f"the signal could not be sent ({error})") from error
    except RuntimeError as error:
        raise TemporalUnavailable(f"the signal could not be sent ({error})") from error
    return BatchControl(batch_id=str(batch["id"]), workflow_id=batch["workflow_id"], action=signal)


async def retry_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    batch_id: str,
    statuses: list[str],
    *,
    attempts_below: int | None = None,
) -> BatchControl:
    """Send a finished batch's rows in `statuses` again, as a new run of its workflow; with
    `attempts_below`, only those sent fewer times than that (the ledger's `attempts`).

    A batch not finished whose workflow has no run open (its run was terminated through
    Temporal, or a retry set it `queued` and its run never started) is retried too: nothing
    else would move it on. The new run also sends what the last one left (its rows
    `pending`; those `sending` become `uncertain` and are reconciled), or validates the file
    again if that run never recorded its ledger."""
    batch = await batch_or_404(pool, account_id, batch_id)
    handle = temporal.get_workflow_handle(batch["workflow_id"])
    left = batch["status"] not in FINAL_BATCH_STATUSES
    if left and not await _no_run_open(handle):
        raise BatchNotFinished(f"batch {batch_id} is still {batch['status']}")
    validated = batch["rows_total"] is not None
    # A run that never recorded the ledger: the next loads the stored ledger rows of a file
    # validated as it came (a Postman upload's), or validates the file again.
    load_validated = not validated and (
        (await files.file_head(pool, account_id, batch["id"]))["content_type"]
        == files.LEDGER_FILE_TYPE
    )
    rows = await messages.count_in_statuses(
        pool,
        batch["id"],
        statuses,
        attempts_below=attempts_below,
        also=LEFT_BY_A_RUN if left and validated else (),
    )
    if rows == 0 and not left:
        now = (await batch_or_404(pool, account_id, batch_id))["status"]
        if now not in FINAL_BATCH_STATUSES:
            # Another retry started a run since the batch was read (a double click): its
            # rows are that run's now.
            raise BatchNotFinished(f"batch {batch_id} is {now}: another retry runs it")
        limit = "" if attempts_below is None else f" sent fewer than {attempts_below} times"
        raise NothingToRetry(f"batch {batch_id} has no rows in {', '.join(statuses)}{limit}")
    await _last_run_closed(pool, temporal, account_id, batch)
    await _require_senders_held(pool, account_id, batch)
    # A retry run keeps the batch's spread, expiry and send window; it starts now, not at
    # `schedule_at`.
    timing = dataclasses.replace(_timing(batch["request"]), schedule_at=0.0)
    # A batch its ended run left is retried past its expiry too: the new run sends nothing and
    # closes what was left `expired` (else it would hold its senders for good).
    if timing.expire_at and timing.expire_at <= time.time() and not left:
        raise BatchExpired(
            f"batch {batch_id} expired at {batch['request']['expire_at']}: a retry would send"
            " nothing"
        )
    input = BatchInput(
        batch_id=str(batch["id"]),
        account_id=str(account_id),
        agent_number=batch["agent_number"],
        dispatch=dispatch_settings(
            settings,
            await _slowest_rate(pool, account_id, batch["agent_number"], batch["request"]),
            timing,
        ),
        timing=timing,
        auto_pause=_auto_pause(batch["request"]),
        retry_statuses=[LedgerStatus(status) for status in statuses] if validated else None,
        load_validated=load_validated,
        retry_attempts_below=attempts_below,
        first_event_seq=await events.last_event_seq(pool, batch["id"]),
        limits=validation_limits(settings),
        validation_task_queue=None
        if validated
        else await _validation_queue(pool, settings, batch["id"], batch["request"]),
    )
    queued_at = await batches.queue_for_retry(pool, batch)
    if queued_at is None:
        # A sender removed since it was checked, or another retry.
        await _require_senders_held(pool, account_id, batch)
        raise BatchNotFinished(f"batch {batch_id} is being retried already")
    try:
        await _start_workflow(
            temporal, settings, batch, input, WorkflowIDReusePolicy.ALLOW_DUPLICATE
        )
    except BaseException as error:
        # Nothing started: the batch is as it was (not `queued`, which nothing would move on
        # from), and the retry can be asked again.
        await batches.restore_status(pool, batch, queued_at)
        if isinstance(error, WorkflowAlreadyStartedError):
            raise BatchNotFinished(
                f"batch {batch_id} has a run of its workflow open still; retry once it ends"
            ) from error
        raise
    return BatchControl(
        batch_id=str(batch["id"]), workflow_id=batch["workflow_id"], action="retry", rows=rows
    )


async def _last_run_closed(
    pool: asyncpg.Pool, temporal: Client, account_id: uuid.UUID, batch: Mapping[str, Any]
) -> None:
    """Let the batch's last run close (up to FINAL_CLOSE_SECONDS): its final event is recorded
    just before it closes, while it still posts the events. That run, not the newest: the run
    described while the batch was still as read, BatchNotFinished if it changed meanwhile (a
    retry at the same time, whose new run this one must not wait for)."""
    handle = temporal.get_workflow_handle(batch["workflow_id"])
    try:
        run_id = (await handle.describe()).run_id
    except (RPCError, RuntimeError):
        return
    now = await batches.get_batch(pool, account_id, batch["id"])
    if now is None or now["updated_at"] != batch["updated_at"]:
        raise BatchNotFinished(f"batch {batch['id']} is being retried already")
    last = temporal.get_workflow_handle(batch["workflow_id"], run_id=run_id)
    with contextlib.suppress(TimeoutError, WorkflowFailureError, RPCError, RuntimeError):
        async with asyncio.timeout(FINAL_CLOSE_SECONDS):
            await last.result(follow_runs=False)


async def _no_run_open(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the batch's workflow has no run open (none at all, or its last one closed)."""
    try:
        described = await handle.describe()
    except (RPCError, RuntimeError) as error:
        if isinstance(error, RPCError) and error.status == RPCStatusCode.NOT_FOUND:
            return True
        raise TemporalUnavailable(f"the batch's workflow could not be read ({error})") from error
    return described.status != WorkflowExecutionStatus.RUNNING


def send_window(request: dict[str, Any]) -> SendWindow | None:
    """The send window of a stored request, if it has one."""
    window = request.get("send_window")
    return None if window is None else SendWindow(**window)


def _summary(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "batch_id": str(batch["id"])}


async def get_batch(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, batch_id: str
) -> BatchDetail:
    batch = await batch_or_404(pool, account_id, batch_id)
    counts = await messages.count_by_status(pool, batch["id"])
    counts["rejected"] = batch["rejected"] or 0
    if send_window(batch["request"]) is not None:
        counts["waiting_for_window"] = await messages.count_waiting_for_window(pool, batch["id"])
    ui = (
        f"{settings.temporal_ui_base}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{batch['workflow_id']}"
    )
    return BatchDetail(**_summary(batch), counts=counts, temporal_ui_url=ui)


async def batch_or_404(pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: str) -> dict:
    batch = await batches.get_batch(pool, account_id, parse_batch_id(batch_id))
    if batch is None:
        raise BatchNotFound(f"no batch {batch_id!r}")
    return batch


async def require_batch(pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: str) -> uuid.UUID:
    return (await batch_or_404(pool, account_id, batch_id))["id"]


async def list_batches(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, cursor: str | None
) -> BatchList:
    """A page of the account's batches, newest first."""
    after = pagination.decode(cursor, (datetime, uuid.UUID), of="batches")
    rows = await batches.list_batches(pool, account_id, limit=limit + 1, after=after)
    kept, next_cursor = pagination.page(
        rows, limit, lambda r: (r["created_at"], r["id"]), of="batches"
    )
    return BatchList(batches=[BatchSummary(**_summary(r)) for r in kept], next_cursor=next_cursor)


async def rejected_rows_page(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None,
) -> RejectedRowList:
    """A page of the rows validation refused, in file order."""
    of = f"errors of {batch_id}"
    after = pagination.decode(cursor, (int,), of=of)
    rows = await messages.list_rejected(
        pool, account_id, batch_id, limit=limit + 1, after_row=after[0] if after else -1
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["row_number"],), of=of)
    return RejectedRowList(
        rejected_rows=[
            RejectedRow(
                row_number=r["row_number"], value=r["value"], code=r["code"], message=r["reason"]
            )
            for r in kept
        ],
        next_cursor=next_cursor,
    )


async def list_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: str,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> MessageList:
    """A page of the batch's ledger, in `seq` order."""
    require_ledger_status(status)
    batch = await require_batch(pool, account_id, batch_id)
    of = f"messages of {batch}"
    after = pagination.decode(cursor, (int,), of=of)
    rows = await messages.list_messages(
        pool,
        account_id,
        batch,
        status=status,
        limit=limit + 1,
        after_seq=after[0] if after else -1,
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["seq"],), of=of)
    return MessageList(messages=kept, next_cursor=next_cursor)


def require_ledger_status(status: str | None) -> None:
    """A filter by ledger status names one (or none)."""
    if status is not None and status not in tuple(LedgerStatus):
        raise InvalidRequest(f"status must be one of {', '.join(LedgerStatus)}")


async def list_events(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: str, *, limit: int, cursor: str | None
) -> BatchLogs:
    """A page of the batch's lifecycle events, in order."""
    batch = await require_batch(pool, account_id, batch_id)
    of = f"logs of {batch}"
    after = pagination.decode(cursor, (int,), of=of)
    rows = await events.list_events(
        pool, account_id, batch, after_seq=after[0] if after else 0, limit=limit + 1
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["seq"],), of=of)
    return BatchLogs(events=kept, next_cursor=next_cursor)


async def list_deliveries(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: str, *, limit: int, cursor: str | None
) -> WebhookDeliveries:
    """A page of the attempts to post the batch's events, oldest first."""
    batch = await require_batch(pool, account_id, batch_id)
    of = f"deliveries of {batch}"
    after = pagination.decode(cursor, (int,), of=of)
    rows = await events.list_deliveries(
        pool, account_id, batch, limit=limit + 1, after_id=after[0] if after else 0
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["id"],), of=of)
    return WebhookDeliveries(deliveries=kept, next_cursor=next_cursor)
