"""The account's opt-out list: numbers no batch sends to."""

from fastapi import APIRouter

from api.deps import OptOutsRead, OptOutsWrite, Pool
from api.models import Envelope, OptOut, OptOutList, OptOutRequest
from api.pagination import Cursor, Limit
from api.services import opt_outs as service

router = APIRouter(tags=["opt-outs"])


@router.get("/v1/opt-outs", response_model=Envelope[OptOutList])
async def list_opt_outs(
    account_id: OptOutsRead,
    pool: Pool,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict:
    """The account's opted-out numbers in number order, a page at a time (see Pagination)."""
    return {"data": await service.list_opt_outs(pool, account_id, limit=limit, cursor=cursor)}


@router.post("/v1/opt-outs", status_code=201, response_model=Envelope[OptOut])
async def add_opt_out(account_id: OptOutsWrite, pool: Pool, body: OptOutRequest) -> dict:
    """Stop messaging a number: later batches skip it, and so do running batches for every
    row not yet claimed by a slice (a running slice's rows still go: see DELIVERY.md, Running
    batches). Adding a number already listed keeps its first source and time."""
    return {"data": await service.add_opt_out(pool, account_id, body.number)}


@router.delete("/v1/opt-outs/{number}", response_model=Envelope[dict[str, str]])
async def remove_opt_out(account_id: OptOutsWrite, pool: Pool, number: str) -> dict:
    """Opt a number back in: batches validated from now on send to it; rows already skipped
    stay skipped."""
    return {"data": {"deleted": await service.remove_opt_out(pool, account_id, number)}}
