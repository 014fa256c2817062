"""The account's campaigns: a sender and message templates per language."""

from fastapi import APIRouter

from api.campaign_models import Campaign, CampaignList, CampaignRequest, CampaignUpdate
from api.deps import AppSettings, CampaignsRead, CampaignsWrite, Pool
from api.models import Envelope
from api.pagination import Cursor, Limit
from api.services import campaigns as service

router = APIRouter(tags=["campaigns"])


def _reply(campaign: dict) -> Campaign:
    return Campaign.model_validate({**campaign, "id": str(campaign["id"])})


@router.post("/v1/campaigns", status_code=201, response_model=Envelope[Campaign])
async def create_campaign(
    account_id: CampaignsWrite, pool: Pool, settings: AppSettings, body: CampaignRequest
) -> dict:
    """Create a campaign; its templates are checked and its parameters derived from them."""
    return {"data": _reply(await service.create_campaign(pool, settings, account_id, body))}


@router.get("/v1/campaigns", response_model=Envelope[CampaignList])
async def list_campaigns(
    account_id: CampaignsRead, pool: Pool, cursor: Cursor = None, limit: Limit = 100
) -> dict:
    """The account's campaigns, oldest first (see Pagination)."""
    rows, next_cursor = await service.list_campaigns(pool, account_id, limit=limit, cursor=cursor)
    return {"data": CampaignList(campaigns=[_reply(c) for c in rows], next_cursor=next_cursor)}


@router.get("/v1/campaigns/{campaign_id}", response_model=Envelope[Campaign])
async def get_campaign(account_id: CampaignsRead, pool: Pool, campaign_id: str) -> dict:
    return {"data": _reply(await service.get_campaign(pool, account_id, campaign_id))}


@router.patch("/v1/campaigns/{campaign_id}", response_model=Envelope[Campaign])
async def update_campaign(
    account_id: CampaignsWrite,
    pool: Pool,
    settings: AppSettings,
    campaign_id: str,
    body: CampaignUpdate,
) -> dict:
    """Change the given fields; new templates replace all the old ones."""
    updated = await service.update_campaign(pool, settings, account_id, campaign_id, body)
    return {"data": _reply(updated)}


@router.delete("/v1/campaigns/{campaign_id}", response_model=Envelope[dict[str, str]])
async def delete_campaign(account_id: CampaignsWrite, pool: Pool, campaign_id: str) -> dict:
    """Delete a campaign; batches already started from it go on."""
    return {"data": {"deleted": await service.delete_campaign(pool, account_id, campaign_id)}}
