"""Mailing lists: an account's named lists of contacts, which a batch may send to."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime

import asyncpg

from activities.recipients.contacts import CONTACT_BLOCK_ROWS, Contacts, contact_blocks
from activities.recipients.phones import to_e164
from activities.recipients.rejections import SourceInvalid
from api import pagination
from api.errors import HeraldError
from api.models import (
    ContactList,
    ContactsAdded,
    ContactsRemoved,
    MailingList,
    MailingLists,
    RejectedRow,
)
from store import mailing_lists


class ListNotFound(HeraldError):
    status_code = 404
    code = "LIST_NOT_FOUND"


class ListAlreadyExists(HeraldError):
    status_code = 409
    code = "LIST_ALREADY_EXISTS"


class InvalidContacts(HeraldError):
    code = "INVALID_CONTACTS"


# An upload's rows that are not contacts, shown in its reply; `rejected` counts them all.
MAX_REJECTED_SHOWN = 1000


def parse_list_id(value: str) -> uuid.UUID:
    """A malformed id cannot name a list of the caller's: the same 404 as a missing one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ListNotFound(f"{value!r} is not a mailing list of this account") from None


def _reply(row: dict) -> MailingList:
    return MailingList(**{**row, "id": str(row["id"])})


async def create_list(
    pool: asyncpg.Pool, account_id: uuid.UUID, name: str, list_id: uuid.UUID | None
) -> MailingList:
    created = await mailing_lists.create_list(pool, account_id, name, list_id or uuid.uuid4())
    if created is None:
        raise ListAlreadyExists(f"the id {list_id} is taken")
    return _reply(created)


async def list_lists(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, cursor: str | None
) -> MailingLists:
    """A page of the account's lists, oldest first."""
    after = pagination.decode(cursor, (datetime, uuid.UUID), of="lists")
    rows = await mailing_lists.list_lists(pool, account_id, limit=limit + 1, after=after)
    kept, next_cursor = pagination.page(
        rows, limit, lambda r: (r["created_at"], r["id"]), of="lists"
    )
    return MailingLists(lists=[_reply(r) for r in kept], next_cursor=next_cursor)


async def list_key(pool: asyncpg.Pool, account_id: uuid.UUID, list_id: str) -> uuid.UUID:
    """The id of the account's list `list_id`, ListNotFound if it has none; its contacts not
    counted, as `get_list` counts them (a page of a list of a million counted it whole)."""
    parsed = parse_list_id(list_id)
    if not await mailing_lists.list_exists(pool, account_id, parsed):
        raise ListNotFound(f"no mailing list {list_id!r}")
    return parsed


async def get_list(pool: asyncpg.Pool, account_id: uuid.UUID, list_id: str) -> MailingList:
    found = await mailing_lists.get_list(pool, account_id, parse_list_id(list_id))
    if found is None:
        raise ListNotFound(f"no mailing list {list_id!r}")
    return _reply(found)


async def delete_list(pool: asyncpg.Pool, account_id: uuid.UUID, list_id: str) -> str:
    if not await mailing_lists.delete_list(pool, account_id, parse_list_id(list_id)):
        raise ListNotFound(f"no mailing list {list_id!r}")
    return list_id


async def list_sizes(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_ids: Sequence[str]
) -> dict[str, int]:
    """The contacts of each list named (ids as given); a list that is not the account's is
    LIST_NOT_FOUND, naming each such id."""
    parsed = {given: _maybe_uuid(given) for given in list_ids}
    counts = await mailing_lists.count_contacts(
        pool, account_id, [value for value in parsed.values() if value is not None]
    )
    missing = [given for given, value in parsed.items() if value not in counts]
    if missing:
        raise ListNotFound(
            "no mailing list " + ", ".join(repr(given) for given in missing) + " in this account"
        )
    return {given: counts[value] for given, value in parsed.items() if value is not None}


def _maybe_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def add_contacts(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    list_id: str,
    content: Callable[[], Awaitable[bytes]],
) -> ContactsAdded:
    """Add the contacts of a CSV or JSON file (or a JSON body's, as a file), read once the
    list is found, block by block in one transaction (all or none); a number already in the
    list takes the new fields."""
    found = await list_key(pool, account_id, list_id)
    blocks = contact_blocks(await content(), CONTACT_BLOCK_ROWS)
    numbers: set[str] = set()
    rejected: list[RejectedRow] = []
    rejected_count = 0
    async with mailing_lists.held_list(pool, account_id, found) as conn:
        if conn is None:
            raise ListNotFound(f"mailing list {list_id!r} was deleted while its file was read")
        while (block := await _next_block(blocks)) is not None:
            if block.contacts:
                await mailing_lists.add_contacts(conn, account_id, found, block.contacts)
            numbers.update(block.contacts)
            rejected_count += len(block.rejected)
            rejected += [
                RejectedRow(row_number=r.row_number, value=r.value, code=r.code, message=r.reason)
                for r in block.rejected[: MAX_REJECTED_SHOWN - len(rejected)]
            ]
    return ContactsAdded(
        added=len(numbers),
        contacts=(await get_list(pool, account_id, list_id)).contacts,
        rejected=rejected_count,
        rejected_rows=rejected,
    )


async def remove_contacts(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_id: str, numbers: Sequence[str]
) -> ContactsRemoved:
    """Remove numbers (as given, or normalised to E.164) from the list."""
    found = await list_key(pool, account_id, list_id)
    normalised = [to_e164(number, require_valid=False) or number for number in numbers]
    removed = await mailing_lists.remove_contacts(pool, account_id, found, normalised)
    return ContactsRemoved(
        removed=removed, contacts=(await get_list(pool, account_id, list_id)).contacts
    )


async def remove_contacts_in_file(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    list_id: str,
    content: Callable[[], Awaitable[bytes]],
) -> ContactsRemoved:
    """Remove the numbers of a file's `phone_number` column from the list, read once the list
    is found, block by block in one transaction."""
    found = await list_key(pool, account_id, list_id)
    blocks = contact_blocks(await content(), CONTACT_BLOCK_ROWS)
    removed = 0
    async with mailing_lists.held_list(pool, account_id, found) as conn:
        if conn is None:
            raise ListNotFound(f"mailing list {list_id!r} was deleted while its file was read")
        while (block := await _next_block(blocks)) is not None:
            removed += await mailing_lists.remove_contacts(
                conn, account_id, found, list(block.contacts)
            )
    return ContactsRemoved(
        removed=removed, contacts=(await get_list(pool, account_id, list_id)).contacts
    )


async def list_contacts(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_id: str, *, limit: int, cursor: str | None
) -> ContactList:
    """A page of the list's contacts, in number order."""
    found = await list_key(pool, account_id, list_id)
    of = f"contacts of {found}"
    after = pagination.decode(cursor, (str,), of=of)
    rows = await mailing_lists.list_contacts(
        pool, account_id, found, limit=limit + 1, after=after[0] if after else ""
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["phone_number"],), of=of)
    return ContactList(contacts=kept, next_cursor=next_cursor)


async def _next_block(blocks: Iterator[Contacts]) -> Contacts | None:
    """The next block of an upload's contacts, read off the event loop; None after the last."""
    try:
        return await asyncio.to_thread(next, blocks, None)
    except SourceInvalid as error:
        raise InvalidContacts(f"{error.code}: {error.reason}") from error
