"""The Mobivate dialect's batch send, `POST /send/batch`."""

from typing import Any

from fastapi import APIRouter

from api.deps import AppSettings, CreateBatchSMS, Pool, Temporal
from api.mobivate_models import MobivateBatchAccepted, MobivateBatchRequest, MobivateError
from api.services import mobivate as service

# Named after the dialect: both dialects' handlers are `send_batch`.
router = APIRouter(
    tags=["mobivate"], generate_unique_id_function=lambda route: f"mobivate_{route.name}"
)

# Every failure of the dialect's routes, in its envelope (see `mobivate_error`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": MobivateError, "description": description}
    for status, description in (
        (400, "The request is invalid: `error.details` lists each problem"),
        (403, "Missing or unknown API key, or one without the permission (`AuthenticationError`)"),
        (404, "The originator is not a registered sender of this account"),
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
