"""The account's opt-out list: numbers no batch sends to."""

import uuid

import asyncpg

from activities.recipients.phones import to_e164
from api import pagination
from api.errors import HeraldError
from api.models import OptOutList
from api.services.numbers import InvalidPhoneNumber
from store import opt_outs


class OptOutNotFound(HeraldError):
    status_code = 404
    code = "OPT_OUT_NOT_FOUND"


async def list_opt_outs(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, cursor: str | None
) -> OptOutList:
    """A page of the account's opted-out numbers, in number order."""
    after = pagination.decode(cursor, (str,), of="opt_outs")
    rows = await opt_outs.list_opt_outs(
        pool, account_id, limit=limit + 1, after=after[0] if after else ""
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["number"],), of="opt_outs")
    return OptOutList(opt_outs=kept, next_cursor=next_cursor)


async def add_opt_out(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> dict:
    e164 = to_e164(number, require_valid=False)
    if e164 is None:
        raise InvalidPhoneNumber(f"{number!r} is not a phone number")
    return await opt_outs.add_opt_out(pool, account_id, e164, source="api")


async def remove_opt_out(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> str:
    """The number removed, normalised as the list holds it."""
    normalised = to_e164(number, require_valid=False) or number
    if not await opt_outs.remove_opt_out(pool, account_id, normalised):
        raise OptOutNotFound(f"{number} is not opted out for this account")
    return normalised
