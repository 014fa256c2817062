"""SMS batches: start one from a file, read its state, ledger and lifecycle log."""

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import (
    AppSettings,
    BatchesRead,
    BatchesReadKey,
    BatchesWrite,
    BatchesWriteKey,
    Pool,
    Temporal,
    require_named,
)
from api.input_checks import INT32_MAX
from api.models import (
    BatchControl,
    BatchDetail,
    BatchDryRun,
    BatchList,
    BatchLogs,
    BatchRequest,
    BatchStarted,
    CancelRequest,
    Envelope,
    MessageList,
    RejectedRowList,
    RetryRequest,
    WebhookDeliveries,
)
from api.pagination import Cursor, Limit
from api.services import batch_events, batch_exports
from api.services import batches as service
from workflows.statuses import LedgerStatus

router = APIRouter(tags=["batches"])


@router.post("/v1/sms/batch", response_model=Envelope[BatchStarted | BatchDryRun])
async def create_batch(
    grant: BatchesWriteKey,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    body: BatchRequest,
) -> dict:
    """Start one BatchWorkflow for a file; answers at once with its `workflow_id`. With
    `dry_run`, validates the file now and answers with what the batch would send."""
    require_named(grant, lists=bool(body.lists), campaign=body.campaign_id is not None)
    account_id = grant.account_id
    if body.dry_run:
        return {"data": await service.dry_run_batch(pool, settings, account_id, body)}
    return {"data": await service.start_batch(pool, temporal, settings, account_id, body)}


@router.get("/v1/sms/batches", response_model=Envelope[BatchList])
async def list_batches(
    account_id: BatchesRead,
    pool: Pool,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict:
    """The account's batches, newest first (see Pagination)."""
    return {"data": await service.list_batches(pool, account_id, limit=limit, cursor=cursor)}


@router.get("/v1/sms/batch/{batch_id}", response_model=Envelope[BatchDetail])
async def get_batch(
    account_id: BatchesRead, pool: Pool, settings: AppSettings, batch_id: str
) -> dict:
    return {"data": await service.get_batch(pool, settings, account_id, batch_id)}


def csv_asked(export: str | None, accept: str | None) -> bool:
    """`format=csv`; without `format`, an `Accept` header that takes `text/csv` (its q above
    0) at least as gladly as `application/json`: `text/csv;q=0` refuses it."""
    if export is not None:
        return export == "csv"
    weights: dict[str, float] = {}
    for media_range in (accept or "").split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[kind.lower()] = weight
    taken = weights.get("text/csv", 0.0)
    return taken > 0 and taken >= weights.get("application/json", 0.0)


@router.get(
    "/v1/sms/batch/{batch_id}/messages",
    response_model=Envelope[MessageList],
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV when asked"}},
)
async def list_messages(
    account_id: BatchesRead,
    pool: Pool,
    batch_id: str,
    status: Annotated[str | None, Query(description=f"One of {', '.join(LedgerStatus)}")] = None,
    export: Annotated[
        Literal["json", "csv"] | None,
        Query(alias="format", description="`csv` for every row as CSV (as `Accept: text/csv`)."),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict | StreamingResponse:
    """The batch's ledger, a page at a time in `seq` order (see Pagination).

    As CSV (`?format=csv` or `Accept: text/csv`) every row (of `status`, if given) comes at
    once, streamed, with cells a spreadsheet would run as formulas prefixed by `'`.
    """
    if csv_asked(export, accept):
        service.require_ledger_status(status)
        batch = await service.require_batch(pool, account_id, batch_id)
        return StreamingResponse(
            batch_exports.messages_csv(pool, account_id, batch, status),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{batch}-messages.csv"'},
        )
    page = await service.list_messages(
        pool, account_id, batch_id, status=status, limit=limit, cursor=cursor
    )
    return {"data": page}


@router.get("/v1/sms/batch/{batch_id}/logs", response_model=Envelope[BatchLogs])
async def batch_logs(
    account_id: BatchesRead,
    pool: Pool,
    batch_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict:
    """The lifecycle events, in order, exactly as posted to the status webhook (see
    Pagination)."""
    return {
        "data": await service.list_events(pool, account_id, batch_id, limit=limit, cursor=cursor)
    }


@router.get("/v1/sms/batch/{batch_id}/deliveries", response_model=Envelope[WebhookDeliveries])
async def webhook_deliveries(
    account_id: BatchesRead,
    pool: Pool,
    batch_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict:
    """Every attempt to post this batch's events to its status webhook, oldest first (see
    Pagination)."""
    return {
        "data": await service.list_deliveries(
            pool, account_id, batch_id, limit=limit, cursor=cursor
        )
    }


@router.post("/v1/sms/batch/{batch_id}/cancel", response_model=Envelope[BatchControl])
async def cancel_batch(
    account_id: BatchesWrite,
    pool: Pool,
    temporal: Temporal,
    batch_id: str,
    body: CancelRequest | None = None,
) -> dict:
    """Stop a running batch: sends on the wire finish, every row not sent ends `cancelled`."""
    reason = body.reason if body else None
    return {
        "data": await service.signal_batch(pool, temporal, account_id, batch_id, "cancel", reason)
    }


@router.post("/v1/sms/batch/{batch_id}/pause", response_model=Envelope[BatchControl])
async def pause_batch(
    account_id: BatchesWrite, pool: Pool, temporal: Temporal, batch_id: str
) -> dict:
    """No new sends until `resume`; the batch's status is `paused` meanwhile."""
    return {"data": await service.signal_batch(pool, temporal, account_id, batch_id, "pause")}


@router.post("/v1/sms/batch/{batch_id}/resume", response_model=Envelope[BatchControl])
async def resume_batch(
    account_id: BatchesWrite, pool: Pool, temporal: Temporal, batch_id: str
) -> dict:
    """Go on sending from where `pause` stopped; the batch returns to its previous phase."""
    return {"data": await service.signal_batch(pool, temporal, account_id, batch_id, "resume")}


@router.post("/v1/sms/batch/{batch_id}/retry", response_model=Envelope[BatchControl])
async def retry_batch(
    account_id: BatchesWrite,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    batch_id: str,
    body: RetryRequest | None = None,
) -> dict:
    """Send a finished batch's `failed` rows (or the statuses given) again."""
    statuses = (body or RetryRequest()).statuses
    return {
        "data": await service.retry_batch(
            pool, temporal, settings, account_id, batch_id, list(statuses)
        )
    }


@router.get(
    "/v1/sms/batch/{batch_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def batch_event_stream(
    key: BatchesReadKey,
    pool: Pool,
    temporal: Temporal,
    batch_id: str,
    last_event_id: Annotated[
        int, Header(ge=0, le=INT32_MAX, description="Resume after this event.")
    ] = 0,
) -> StreamingResponse:
    """Server-sent events: `status` (each lifecycle event, as posted to the webhook) and
    `progress` (about once a second while it runs); the stream ends after the final event."""
    stream = await batch_events.stream_events(pool, temporal, key, batch_id, last_event_id)
    return StreamingResponse(stream, media_type="text/event-stream")


@router.get(
    "/v1/sms/batch/{batch_id}/errors",
    response_model=Envelope[RejectedRowList],
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV when asked"}},
)
async def rejected_rows(
    account_id: BatchesRead,
    pool: Pool,
    batch_id: str,
    export: Annotated[
        Literal["json", "csv"] | None,
        Query(alias="format", description="`csv` for every row as CSV (as `Accept: text/csv`)."),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict | StreamingResponse:
    """The rows validation refused, in file order (see Pagination); row 0 reports the header
    itself.

    As CSV (`?format=csv` or `Accept: text/csv`) every row comes at once, with cells that a
    spreadsheet would run as formulas prefixed by `'`.
    """
    batch = await service.require_batch(pool, account_id, batch_id)
    if csv_asked(export, accept):
        return StreamingResponse(
            batch_exports.rejected_rows_csv(pool, account_id, batch),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{batch}-errors.csv"'},
        )
    page = await service.rejected_rows_page(pool, account_id, batch, limit=limit, cursor=cursor)
    return {"data": page}
