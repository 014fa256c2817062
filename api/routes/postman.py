"""The Postman dialect's batch send, `POST /campaigns/{campaignId}/batch/messages`."""

from typing import Any

from fastapi import APIRouter, Request, UploadFile

from api.deps import AppSettings, BearerBatchesWrite, Pool, Temporal
from api.postman_models import PostmanBatchAccepted, PostmanError
from api.routes.files import EmptyFile, FileTooLarge, MissingFile, MultipleFiles
from api.services import postman as service

# Named after the dialect: both dialects' handlers are `send_batch`.
router = APIRouter(
    tags=["postman"], generate_unique_id_function=lambda route: f"postman_{route.name}"
)

# Every failure of the dialect's routes, in its envelope (see `postman_error`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": PostmanError, "description": description}
    for status, description in (
        (
            400,
            "`parameter_invalid`: the file is too large, its header does not match the"
            " campaign, or rows are in error (`error.details` names each)",
        ),
        (401, "`invalid_api_key_provided`: missing or unknown API key"),
        (404, "No such campaign in this account"),
        (429, "`too_many_requests`; see `Retry-After`"),
        (503, "Temporal is unavailable; send the same request again"),
    )
}


@router.post(
    "/campaigns/{campaign_id}/batch/messages",
    status_code=201,
    response_model=PostmanBatchAccepted,
    responses=ERROR_RESPONSES,
)
async def send_batch(
    request: Request,
    account_id: BearerBatchesWrite,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    campaign_id: str,
    file: UploadFile | None = None,
) -> PostmanBatchAccepted:
    """Send the campaign's template to each row of the CSV in `file`, in the row's language.
    The whole file is checked first: any row in error refuses it, and nothing is sent."""
    # An unknown campaign is 404 whatever the body holds, as a resource of another account.
    campaign = await service.campaign(pool, settings, account_id, campaign_id)
    if file is None:
        raise MissingFile("multipart field 'file' is required")
    parts = len((await request.form()).getlist("file"))
    if parts > 1:
        raise MultipleFiles(f"send one multipart field 'file' per request, not {parts}")
    size = file.size or 0
    if size > settings.max_upload_bytes:
        raise FileTooLarge(f"files are limited to {settings.max_upload_bytes} bytes")
    if size == 0:
        raise EmptyFile("the file is empty")
    return await service.send_batch(pool, temporal, settings, account_id, campaign, file.file)
