"""The account's opt-out list: numbers no batch sends to."""

from typing import Annotated

from fastapi import APIRouter, Query

from activities.recipients.phones import to_e164
from api.deps import AccountId, Pool
from api.errors import HeraldError
from api.models import Envelope, OptOut, OptOutList, OptOutRequest
from api.routes.numbers import InvalidPhoneNumber
from store import opt_outs

router = APIRouter(tags=["opt-outs"])


class OptOutNotFound(HeraldError):
    status_code = 404
    code = "OPT_OUT_NOT_FOUND"


@router.get("/v1/opt-outs", response_model=Envelope[OptOutList])
async def list_opt_outs(
    account_id: AccountId,
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str, Query(description="Cursor: the last `number` seen.")] = "",
) -> dict:
    """The account's opted-out numbers in number order, a page at a time."""
    rows = await opt_outs.list_opt_outs(pool, account_id, limit=limit, after=after)
    next_cursor = rows[-1]["number"] if len(rows) == limit else None
    return {"data": OptOutList(opt_outs=rows, next_cursor=next_cursor)}


@router.post("/v1/opt-outs", status_code=201, response_model=Envelope[OptOut])
async def add_opt_out(account_id: AccountId, pool: Pool, body: OptOutRequest) -> dict:
    """Stop messaging a number: later batches skip it, and so do running batches for every
    row not yet sent. Adding a number already listed keeps its first source and time."""
    number = to_e164(body.number, require_valid=False)
    if number is None:
        raise InvalidPhoneNumber(f"{body.number!r} is not a phone number")
    return {"data": await opt_outs.add_opt_out(pool, account_id, number, source="api")}


@router.delete("/v1/opt-outs/{number}", response_model=Envelope[dict[str, str]])
async def remove_opt_out(account_id: AccountId, pool: Pool, number: str) -> dict:
    """Opt a number back in: batches validated from now on send to it; rows already skipped
    stay skipped."""
    normalised = to_e164(number, require_valid=False) or number
    if not await opt_outs.remove_opt_out(pool, account_id, normalised):
        raise OptOutNotFound(f"{number} is not opted out for this account")
    return {"data": {"deleted": normalised}}
