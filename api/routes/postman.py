"""The Postman dialect: batch send `POST /campaigns/{campaignId}/batch/messages`, the batch's
messages `GET .../batch/{batchId}/messages` and its retry `POST .../batch/{batchId}/retry`."""

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, UploadFile

from api.deps import AppSettings, CampaignBatchesRead, CampaignBatchesWrite, Pool, Temporal
from api.input_checks import INT64_MAX
from api.postman_models import PostmanBatchAccepted, PostmanError, PostmanMessagePage
from api.routes.files import one_file
from api.services import postman as service


@dataclass(frozen=True)
class Reached:
    """The key's account and the campaign its request named."""

    account_id: uuid.UUID
    campaign: dict


async def _write_campaign(
    request: Request,
    pool: Pool,
    settings: AppSettings,
    grant: CampaignBatchesWrite,
    campaign_id: str,
) -> Reached:
    found = await service.campaign(pool, settings, grant, campaign_id, _client_ip(request))
    return Reached(grant.account_id, found)


async def _read_campaign(
    request: Request,
    pool: Pool,
    settings: AppSettings,
    grant: CampaignBatchesRead,
    campaign_id: str,
) -> Reached:
    found = await service.campaign(pool, settings, grant, campaign_id, _client_ip(request))
    return Reached(grant.account_id, found)


# The campaign the request names, found (its rate, or the key's, spent: `service.campaign`)
# as a dependency, before FastAPI checks the route's query and body: a request refused for
# them spent no rate at all.
WriteCampaign = Annotated[Reached, Depends(_write_campaign)]
ReadCampaign = Annotated[Reached, Depends(_read_campaign)]

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
            " campaign, or rows are in error (`error.details` names each); for a retry,"
            " `batch_not_found_or_is_not_retryable` or `no_failed_batch_messages_to_retry`",
        ),
        (
            401,
            "`invalid_api_key_provided`: missing or unknown API key;"
            " `invalid_ip_address_error`: an address not on the campaign's `allowed_ips`",
        ),
        (
            403,
            "`forbidden`: the key lacks the permission the route needs (`batches:write` to"
            " send or retry, `batches:read` to list messages)",
        ),
        (
            404,
            "`campaign_not_found`: no such campaign in this account;"
            " `agent_number_not_found`: the campaign's sender is no longer the account's;"
            " for the messages,"
            " `batch_not_found`: no such batch of the campaign (a retry's is"
            " `batch_not_found_or_is_not_retryable`, 400)",
        ),
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
    reached: WriteCampaign,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    file: UploadFile | None = None,
) -> PostmanBatchAccepted:
    """Send the campaign's template to each row of the CSV in `file`, in the row's language.
    The whole file is checked first: any row in error refuses it, and nothing is sent. An
    unknown campaign is 404 whatever the body holds, as a resource of another account."""
    file = await one_file(request, file, settings)
    return await service.send_batch(
        pool, temporal, settings, reached.account_id, reached.campaign, file.file
    )


@router.get(
    "/campaigns/{campaign_id}/batch/{batch_id}/messages",
    response_model=PostmanMessagePage,
    responses=ERROR_RESPONSES,
)
async def list_batch_messages(
    reached: ReadCampaign,
    pool: Pool,
    batch_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        int | None, Query(ge=-1, le=INT64_MAX, description="`pageData.endCursor` of a page.")
    ] = None,
    before: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="`pageData.startCursor` of a page.")
    ] = None,
    search: Annotated[
        str | None, Query(max_length=32, description="Only numbers holding these digits.")
    ] = None,
) -> PostmanMessagePage:
    """The batch's messages with their latest status, a page at a time in the file's order."""
    return await service.list_batch_messages(
        pool,
        reached.account_id,
        reached.campaign,
        batch_id,
        limit=limit,
        after=after,
        before=before,
        search=search,
    )


@router.post(
    "/campaigns/{campaign_id}/batch/{batch_id}/retry",
    status_code=201,
    response_class=Response,
    responses={201: {"description": "The retry has started; no body."}, **ERROR_RESPONSES},
)
async def retry_batch(
    reached: WriteCampaign,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    batch_id: str,
) -> Response:
    """Send the finished batch's failed messages again, in the same batch."""
    await service.retry_batch(
        pool, temporal, settings, reached.account_id, reached.campaign, batch_id
    )
    return Response(status_code=201)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
