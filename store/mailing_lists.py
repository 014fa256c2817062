"""Mailing lists: an account's named lists of contacts (a number and its fields)."""

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from store.db import after_key, rows_affected

_COLUMNS = (
    "l.id, l.name, l.created_at,"
    " (SELECT count(*) FROM mailing_list_contacts AS c"
    " WHERE c.account_id = l.account_id AND c.list_id = l.id) AS contacts"
)


async def create_list(
    pool: asyncpg.Pool, account_id: uuid.UUID, name: str, list_id: uuid.UUID
) -> dict | None:
    """The new list; None when the account has a list of that id (another account's list of
    the same id is no obstacle)."""
    created = await pool.fetchval(
        "INSERT INTO mailing_lists (id, account_id, name) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id, id) DO NOTHING RETURNING id",
        list_id,
        account_id,
        name,
    )
    return None if created is None else await get_list(pool, account_id, list_id)


async def get_list(pool: asyncpg.Pool, account_id: uuid.UUID, list_id: uuid.UUID) -> dict | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM mailing_lists AS l WHERE l.id = $1 AND l.account_id = $2",
        list_id,
        account_id,
    )
    return dict(row) if row else None


async def list_exists(pool: asyncpg.Pool, account_id: uuid.UUID, list_id: uuid.UUID) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT true FROM mailing_lists WHERE id = $1 AND account_id = $2", list_id, account_id
        )
    )


async def list_lists(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[dict]:
    """Up to `limit` of the account's lists, oldest first by (created_at, id), after the key
    `after`."""
    keyset = after_key("l.created_at, l.id", after, 3, descending=False)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM mailing_lists AS l WHERE l.account_id = $1{keyset}"
        " ORDER BY l.created_at, l.id LIMIT $2",
        account_id,
        limit,
        *(after or ()),
    )
    return [dict(r) for r in rows]


async def delete_list(pool: asyncpg.Pool, account_id: uuid.UUID, list_id: uuid.UUID) -> bool:
    status = await pool.execute(
        "DELETE FROM mailing_lists WHERE id = $1 AND account_id = $2", list_id, account_id
    )
    return status != "DELETE 0"


async def count_contacts(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """The number of contacts of each of the account's lists among `list_ids`; a list that is
    not the account's is missing from the answer."""
    rows = await pool.fetch(
        "SELECT l.id, count(c.phone_number) AS contacts FROM mailing_lists AS l"
        " LEFT JOIN mailing_list_contacts AS c ON c.account_id = l.account_id AND c.list_id = l.id"
        " WHERE l.account_id = $1 AND l.id = ANY($2::uuid[]) GROUP BY l.id",
        account_id,
        list(list_ids),
    )
    return {r["id"]: r["contacts"] for r in rows}


@contextlib.asynccontextmanager
async def held_list(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_id: uuid.UUID
) -> AsyncIterator[asyncpg.Connection | None]:
    """A transaction that holds the list (its row locked): writers of one list's contacts
    take turns, so that two uploads, each locking its numbers' rows in its own order, do not
    deadlock, and the list is not deleted meanwhile. None when the list is gone."""
    async with pool.acquire() as conn, conn.transaction():
        held = await conn.fetchval(
            "SELECT true FROM mailing_lists WHERE id = $1 AND account_id = $2 FOR NO KEY UPDATE",
            list_id,
            account_id,
        )
        yield conn if held else None


async def add_contacts(
    conn: asyncpg.Connection,
    account_id: uuid.UUID,
    list_id: uuid.UUID,
    contacts: Mapping[str, Mapping[str, str]],
) -> None:
    """Add contacts (E.164 number -> fields) to a list `held_list` holds; a number already
    listed takes the new fields."""
    await conn.execute(
        "INSERT INTO mailing_list_contacts (list_id, phone_number, account_id, fields)"
        " SELECT $1, phone_number, $2, fields FROM unnest($3::text[], $4::jsonb[])"
        " AS new (phone_number, fields)"
        " ON CONFLICT (account_id, list_id, phone_number)"
        " DO UPDATE SET fields = EXCLUDED.fields",
        list_id,
        account_id,
        list(contacts),
        list(contacts.values()),
    )


async def remove_contacts(
    conn: asyncpg.Connection | asyncpg.Pool,
    account_id: uuid.UUID,
    list_id: uuid.UUID,
    numbers: list[str],
) -> int:
    """Remove the numbers from the list; how many were listed."""
    status = await conn.execute(
        "DELETE FROM mailing_list_contacts"
        " WHERE list_id = $1 AND account_id = $2 AND phone_number = ANY($3::text[])",
        list_id,
        account_id,
        numbers,
    )
    return rows_affected(status)


async def list_contacts(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_id: uuid.UUID, *, limit: int, after: str
) -> list[dict]:
    rows = await pool.fetch(
        "SELECT phone_number, fields, created_at FROM mailing_list_contacts"
        " WHERE list_id = $1 AND account_id = $2 AND phone_number > $3"
        " ORDER BY phone_number LIMIT $4",
        list_id,
        account_id,
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def contacts_of(
    pool: asyncpg.Pool, account_id: uuid.UUID, list_id: uuid.UUID
) -> list[tuple[str, dict[str, Any]]]:
    """Every contact of the list, in number order, as (number, fields): a batch's expansion."""
    rows = await pool.fetch(
        "SELECT phone_number, fields FROM mailing_list_contacts"
        " WHERE list_id = $1 AND account_id = $2 ORDER BY phone_number",
        list_id,
        account_id,
    )
    return [(r["phone_number"], r["fields"]) for r in rows]
