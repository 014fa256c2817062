"""Starting, steering and reading batches."""

import asyncio
import dataclasses
import hashlib
import json
import uuid
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.recipients.phones import to_sender
from activities.recipients.preview import preview
from activities.recipients.rows import RecipientRules
from api.errors import HeraldError, InvalidRequest
from api.models import (
    BatchControl,
    BatchDetail,
    BatchDryRun,
    BatchLogs,
    BatchRequest,
    BatchStarted,
    BatchSummary,
    DryRunMessage,
    MessageList,
    RejectedRow,
    RejectedRowList,
    WebhookDeliveries,
)
from api.services.webhook_urls import require_safe_webhook
from settings import Settings
from store import batches, events, files, messages, numbers, opt_outs
from workflows.contracts import (
    ACCOUNT_ID,
    AGENT_NUMBER,
    BATCH_ID,
    BATCH_STATUS,
    BATCH_WORKFLOW,
    BatchInput,
    DispatchSettings,
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


class TooManyRecipients(HeraldError):
    code = "TOO_MANY_RECIPIENTS"


class AgentNumberNotFound(HeraldError):
    status_code = 404
    code = "AGENT_NUMBER_NOT_FOUND"


class BatchAlreadyExists(HeraldError):
    status_code = 409
    code = "BATCH_ALREADY_EXISTS"


class BatchNotFound(HeraldError):
    status_code = 404
    code = "BATCH_NOT_FOUND"


class BatchAlreadyFinished(HeraldError):
    status_code = 409
    code = "BATCH_ALREADY_FINISHED"


class BatchNotFinished(HeraldError):
    status_code = 409
    code = "BATCH_NOT_FINISHED"


class NothingToRetry(HeraldError):
    status_code = 409
    code = "NOTHING_TO_RETRY"


class TemporalUnavailable(HeraldError):
    status_code = 503
    code = "TEMPORAL_UNAVAILABLE"


def parse_batch_id(value: str, error: type[HeraldError] = BatchNotFound) -> uuid.UUID:
    """A malformed id cannot name anything of the caller's: the same 404 as a missing one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise error(f"{value!r} is not an id of this account") from None


def _request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def dispatch_settings(settings: Settings) -> DispatchSettings:
    return DispatchSettings(
        chunk_size=settings.chunk_size,
        slice_size=settings.slice_size,
        chunk_window=settings.chunk_window,
        slices_in_flight=settings.slices_in_flight,
        chunks_per_run=settings.chunks_per_run,
        send_heartbeat_timeout_seconds=settings.send_heartbeat_timeout_seconds,
    )


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
) -> BatchStarted:
    """Record the batch and start its workflow; the same request again is the same batch.

    Inline `recipients` are stored as a JSON file first, so from there on the batch is one
    of an attached file in every way (and each such request is a new batch)."""
    file_id, agent_number = await _checked_sources(pool, settings, account_id, body)
    if file_id is None:
        file_id = await _inline_file(pool, settings, account_id, body.recipients or [])
    request = _stored_request(body, agent_number)
    request.setdefault("file_id", str(file_id))
    workflow_id = batch_workflow_id(str(file_id))
    batch, created = await batches.create_batch(
        pool,
        batch_id=file_id,
        account_id=account_id,
        workflow_id=workflow_id,
        name=body.name,
        agent_number=agent_number,
        request=request,
        request_hash=_request_hash(request),
    )
    if not created and batch["request_hash"] != _request_hash(request):
        raise BatchAlreadyExists(
            f"file {file_id} already started batch {workflow_id} with a different request"
        )
    if not created and batch["code"] == TemporalUnavailable.code:
        # Its workflow never started: this request is the new attempt.
        await batches.set_unstarted(
            pool, file_id, unstarted=False, code=TemporalUnavailable.code, reason=None
        )
    try:
        await _start_workflow(
            temporal,
            settings,
            batch,
            BatchInput(
                batch_id=str(file_id),
                account_id=str(account_id),
                agent_number=agent_number,
                dispatch=dispatch_settings(settings),
                limits=validation_limits(settings),
                timing=Timing(
                    schedule_at=body.schedule_at.timestamp() if body.schedule_at else 0.0,
                    spread_seconds=(body.spread_hours or 0.0) * 3600,
                    expire_at=body.expire_at.timestamp() if body.expire_at else 0.0,
                ),
            ),
            WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass
    except TemporalUnavailable as error:
        # Final rather than `queued` forever: the batch says it never started, and the
        # same request again starts it.
        await batches.set_unstarted(
            pool, file_id, unstarted=True, code=error.code, reason=error.message
        )
        raise
    return BatchStarted(batch_id=str(file_id), workflow_id=workflow_id)


async def dry_run_batch(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: BatchRequest
) -> BatchDryRun:
    """Validate the batch's rows now, as its workflow would, by the same code; nothing is
    stored and nothing is sent."""
    file_id, agent_number = await _checked_sources(pool, settings, account_id, body)
    if file_id is None:
        content = _inline_content(settings, body.recipients or [])
    else:
        _, content = await files.file_content(pool, account_id, file_id)
    request = _stored_request(body, agent_number)
    opted_out: set[str] = set()
    if ValidationOptions.from_request(request).exclude_opt_outs:
        opted_out = await opt_outs.opted_out_numbers(pool, account_id)
    rules = RecipientRules.from_request(request, validation_limits(settings), opted_out)
    found = await asyncio.to_thread(preview, content, rules, strict=body.strict)
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
    )


async def _checked_sources(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: BatchRequest
) -> tuple[uuid.UUID | None, str]:
    """The request's file (None for inline rows) and sender (E.164, or a sender ID), both the
    account's; its status webhook checked."""
    file_id = None
    if body.file_id is not None:
        file_id = parse_batch_id(body.file_id, FileNotFound)
        if not await files.file_exists(pool, account_id, file_id):
            raise FileNotFound(f"no file {body.file_id!r}")
    await require_safe_webhook(
        None if body.status_webhook is None else str(body.status_webhook), settings
    )
    agent_number = to_sender(body.global_.agent_number)
    if agent_number is None or not await numbers.has_number(pool, account_id, agent_number):
        raise AgentNumberNotFound(
            f"{body.global_.agent_number} is not a registered sender of this account"
        )
    return file_id, agent_number


def _stored_request(body: BatchRequest, agent_number: str) -> dict[str, Any]:
    """The request as the batch keeps it. Options at their defaults are left out, so adding
    an option changes no earlier request's hash: the same request again still finds its
    batch. Inline rows are in the file, as an attached file's are."""
    request = body.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude_defaults=True,
        exclude={"recipients", "dry_run"},
    )
    request["global"]["agent_number"] = agent_number
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
        raise TemporalUnavailable(
            f"the batch is recorded but its workflow could not start ({error}); "
            "send the same request again"
        ) from error


async def signal_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    account_id: uuid.UUID,
    batch_id: str,
    signal: str,
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
            raise BatchAlreadyFinished(f"batch {batch_id} has already ended") from error
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
) -> BatchControl:
    """Send a finished batch's rows in `statuses` again, as a new run of its workflow."""
    batch = await batch_or_404(pool, account_id, batch_id)
    if batch["status"] not in FINAL_BATCH_STATUSES:
        raise BatchNotFinished(f"batch {batch_id} is still {batch['status']}")
    rows = await messages.count_in_statuses(pool, batch["id"], statuses)
    if rows == 0:
        raise NothingToRetry(f"batch {batch_id} has no rows in {', '.join(statuses)}")
    # The final event is recorded just before the workflow closes: let it close.
    handle = temporal.get_workflow_handle(batch["workflow_id"])
    try:
        async with asyncio.timeout(FINAL_CLOSE_SECONDS):
            await handle.result()
    except (TimeoutError, WorkflowFailureError, RPCError, RuntimeError):
        pass
    await batches.set_status(pool, batch["id"], status=BatchStatus.QUEUED)
    input = BatchInput(
        batch_id=str(batch["id"]),
        account_id=str(account_id),
        agent_number=batch["agent_number"],
        dispatch=dispatch_settings(settings),
        retry_statuses=[LedgerStatus(status) for status in statuses],
        first_event_seq=await events.last_event_seq(pool, batch["id"]),
    )
    try:
        await _start_workflow(
            temporal, settings, batch, input, WorkflowIDReusePolicy.ALLOW_DUPLICATE
        )
    except WorkflowAlreadyStartedError as error:
        raise BatchNotFinished(f"batch {batch_id} is running again already") from error
    except TemporalUnavailable:
        # Nothing started: the batch is as it was, and the retry can be asked again.
        await batches.set_status(
            pool,
            batch["id"],
            status=BatchStatus(batch["status"]),
            code=batch["code"],
            reason=batch["reason"],
        )
        raise
    return BatchControl(
        batch_id=str(batch["id"]), workflow_id=batch["workflow_id"], action="retry", rows=rows
    )


def _summary(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "batch_id": str(batch["id"])}


async def get_batch(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, batch_id: str
) -> BatchDetail:
    batch = await batch_or_404(pool, account_id, batch_id)
    counts = await messages.count_by_status(pool, batch["id"])
    counts["rejected"] = batch["rejected"] or 0
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
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[BatchSummary], int]:
    rows, total = await batches.list_batches(pool, account_id, limit=limit, offset=offset)
    return [BatchSummary(**_summary(r)) for r in rows], total


async def rejected_rows_page(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID, *, limit: int, after: int
) -> RejectedRowList:
    rows = await messages.list_rejected(pool, account_id, batch_id, limit=limit, after_row=after)
    return RejectedRowList(
        rejected_rows=[
            RejectedRow(
                row_number=r["row_number"], value=r["value"], code=r["code"], message=r["reason"]
            )
            for r in rows
        ],
        next_cursor=rows[-1]["row_number"] if len(rows) == limit else None,
    )


async def list_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: str,
    *,
    status: str | None,
    limit: int,
    after: int,
) -> MessageList:
    """A page of the batch's ledger, in `seq` order, after the cursor `after`."""
    require_ledger_status(status)
    batch = await require_batch(pool, account_id, batch_id)
    rows = await messages.list_messages(
        pool, account_id, batch, status=status, limit=limit, after_seq=after
    )
    next_cursor = rows[-1]["seq"] if len(rows) == limit else None
    return MessageList(messages=rows, next_cursor=next_cursor)


def require_ledger_status(status: str | None) -> None:
    """A filter by ledger status names one (or none)."""
    if status is not None and status not in tuple(LedgerStatus):
        raise InvalidRequest(f"status must be one of {', '.join(LedgerStatus)}")


async def list_events(pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: str) -> BatchLogs:
    batch = await require_batch(pool, account_id, batch_id)
    return BatchLogs(events=await events.list_events(pool, account_id, batch))


async def list_deliveries(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: str
) -> WebhookDeliveries:
    batch = await require_batch(pool, account_id, batch_id)
    return WebhookDeliveries(deliveries=await events.list_deliveries(pool, account_id, batch))
