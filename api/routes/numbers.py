"""The account's sender numbers."""

from fastapi import APIRouter

from api.deps import AppSettings, NumbersRead, NumbersWrite, Pool
from api.models import (
    Envelope,
    ErrorEnvelope,
    NumberRequest,
    NumberUpdate,
    SenderNumber,
    SenderNumberList,
)
from api.pagination import Cursor, Limit
from api.services import numbers as service

router = APIRouter(tags=["numbers"])


@router.post(
    "/v1/sms/numbers",
    status_code=201,
    response_model=Envelope[SenderNumber],
    responses={409: {"model": ErrorEnvelope}, 503: {"model": ErrorEnvelope}},
)
async def add_number(
    account_id: NumbersWrite, pool: Pool, settings: AppSettings, body: NumberRequest
) -> dict:
    """Register a sending number (E.164) for this account, with its rate limit; registering
    it again changes it. A number another account holds is refused until that one deletes it."""
    return {"data": await service.add_number(pool, settings, account_id, body)}


@router.patch("/v1/sms/numbers/{number}", response_model=Envelope[SenderNumber])
async def update_number(
    account_id: NumbersWrite, pool: Pool, settings: AppSettings, number: str, body: NumberUpdate
) -> dict:
    """Change a number's rate limit and/or webhook; sends already paced keep their times."""
    return {"data": await service.update_number(pool, settings, account_id, number, body)}


@router.get("/v1/sms/numbers", response_model=Envelope[SenderNumberList])
async def list_numbers(
    account_id: NumbersRead, pool: Pool, cursor: Cursor = None, limit: Limit = 100
) -> dict:
    """The account's senders, oldest first (see Pagination)."""
    return {"data": await service.list_numbers(pool, account_id, limit=limit, cursor=cursor)}


@router.delete("/v1/sms/numbers/{number}", response_model=Envelope[dict[str, str]])
async def delete_number(account_id: NumbersWrite, pool: Pool, number: str) -> dict:
    """Unregister a number; batches already running keep sending from it."""
    return {"data": {"deleted": await service.delete_number(pool, account_id, number)}}
