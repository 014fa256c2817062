"""The Mobivate dialect's batch send, `POST /send/batch`."""

from typing import Any

from fastapi import APIRouter

from api.deps import AppSettings, CreateBatchSMS, Pool, ReadBatchSMS, Temporal
from api.mobivate_models import (
    MobivateBatchAccepted,
    MobivateBatchRead,
    MobivateBatchRequest,
    MobivateError,
)
from api.services import mobivate as service

router = APIRouter(tags=["mobivate"])

# Every failure of the dialect's routes, in its envelope (see `mobivate_error`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": MobivateError, "description": description}
    for status, description in (
        (400, "The request is invalid: `error.details` lists each problem"),
        (403, "Missing or unknown API key, or one without the permission (`AuthenticationError`)"),
        (404, "The originator, a mailing list or the batch is not this account's"),
        (413, "The body is too large"),
        (429, "Too many requests with this key; see `Retry-After`"),
        (503, "Temporal is unavailable; send the same request again"),
    )
}


@router.post(
    "/send/batch",
    response_model=MobivateBatchAccepted,
    responses=ERROR_RESPONSES,
)
async def send_batch(
    account_id: CreateBatchSMS,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    body: MobivateBatchRequest,
) -> MobivateBatchAccepted:
    """Send one message to each recipient, as one Herald batch; `record.id` is its id."""
    return await service.send_batch(pool, temporal, settings, account_id, body)


@router.get(
    "/send/batch/{batch_id}",
    response_model=MobivateBatchRead,
    responses=ERROR_RESPONSES,
)
async def read_batch(
    account_id: ReadBatchSMS, pool: Pool, settings: AppSettings, batch_id: str
) -> MobivateBatchRead:
    """A batch of this account, started by `POST /send/batch` or any other route: its record
    with Herald's status and counts."""
    return await service.read_batch(pool, settings, account_id, batch_id)
