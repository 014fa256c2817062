"""The account's own Twilio subaccount: its sends then go through it, not the service's."""

from fastapi import APIRouter, Response

from api.deps import CarrierRead, CarrierWrite, Pool
from api.models import CarrierAccount, CarrierAccountRequest, Envelope
from api.services import carrier_account as service

router = APIRouter(tags=["carrier account"])


@router.put("/v1/carrier-account", response_model=Envelope[CarrierAccount])
async def set_carrier_account(
    account_id: CarrierWrite, pool: Pool, body: CarrierAccountRequest
) -> dict:
    """Set (or replace) the account's Twilio subaccount SID and auth token; the token is
    never returned, only masked."""
    return {"data": await service.set_carrier_account(pool, account_id, body)}


@router.get("/v1/carrier-account", response_model=Envelope[CarrierAccount])
async def get_carrier_account(account_id: CarrierRead, pool: Pool) -> dict:
    return {"data": await service.get_carrier_account(pool, account_id)}


@router.delete("/v1/carrier-account", status_code=204)
async def delete_carrier_account(account_id: CarrierWrite, pool: Pool) -> Response:
    """Go back to the service's carrier credentials."""
    await service.delete_carrier_account(pool, account_id)
    return Response(status_code=204)
