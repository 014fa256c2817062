"""Sender numbers, each registered by one account at a time, with their rate limits and
pacing."""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from store.db import after_key

_COLUMNS = "number, kind, channel, mps, webhook, opening_message, created_at"


@dataclass(frozen=True, slots=True)
class Slots:
    """Send times granted to a sender: `count` of them, `interval` seconds apart, the first
    `starts_in` seconds from now (by the database's clock)."""

    count: int
    starts_in: float
    interval: float


async def add_number(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    number: str,
    channel: str,
    mps: float | None,
    webhook: str | None = None,
    kind: str = "number",
    opening_message: str | None = None,
) -> dict | None:
    """Register a sender (`kind` "number", or "sender_id" for an alphanumeric ID), or update
    the account's own registration of it; None when another account holds it (the unique
    indexes decide, so concurrent claims cannot both win), or an ID differing only in case."""
    try:
        row = await pool.fetchrow(
            "INSERT INTO sender_numbers"
            " (account_id, number, channel, mps, webhook, kind, opening_message)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (number) DO UPDATE"
            " SET channel = EXCLUDED.channel, mps = EXCLUDED.mps, webhook = EXCLUDED.webhook,"
            " opening_message = EXCLUDED.opening_message"
            " WHERE sender_numbers.account_id = EXCLUDED.account_id"
            f" RETURNING {_COLUMNS}",
            account_id,
            number,
            channel,
            mps,
            webhook,
            kind,
            opening_message,
        )
    except asyncpg.UniqueViolationError:
        return None
    return dict(row) if row else None


async def list_numbers(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[dict]:
    """Up to `limit` of the account's senders, oldest first by (created_at, number), after the
    key `after`."""
    keyset = after_key("created_at, number", after, 3, descending=False)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM sender_numbers WHERE account_id = $1{keyset}"
        " ORDER BY created_at, number LIMIT $2",
        account_id,
        limit,
        *(after or ()),
    )
    return [dict(r) for r in rows]


async def get_number(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> dict | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM sender_numbers WHERE account_id = $1 AND number = $2",
        account_id,
        number,
    )
    return dict(row) if row else None


async def slowest_rate(
    pool: asyncpg.Pool, account_id: uuid.UUID, numbers: list[str]
) -> float | None:
    """The lowest rate limit (messages a second) among the account's `numbers`; None when
    none of them has one."""
    return await pool.fetchval(
        "SELECT min(mps) FROM sender_numbers WHERE account_id = $1 AND number = ANY($2)",
        account_id,
        numbers,
    )


async def sender_id_holder(pool: asyncpg.Pool, sender_id: str) -> tuple[uuid.UUID, str] | None:
    """The account holding the sender ID in any case, and the ID as it registered it."""
    row = await pool.fetchrow(
        "SELECT account_id, number FROM sender_numbers"
        " WHERE kind = 'sender_id' AND lower(number) = lower($1)",
        sender_id,
    )
    return (row["account_id"], row["number"]) if row else None


def sends_on(registered: Mapping[str, Any], channel: str) -> bool:
    """Whether a sender registered as `registered` (its row) may send on `channel`: an SMS
    only from a sender registered for SMS, whose registration the carrier's numbers check (a
    WhatsApp sender's is not checked); a WhatsApp message from either."""
    return channel != "sms" or registered["channel"] == "sms"


async def has_number(
    pool: asyncpg.Pool, account_id: uuid.UUID, number: str, *, channel: str
) -> bool:
    """Whether the account holds sender `number`, registered to send on `channel` (sends_on)."""
    registered = await get_number(pool, account_id, number)
    return registered is not None and sends_on(registered, channel)


async def update_number(
    pool: asyncpg.Pool, account_id: uuid.UUID, number: str, changes: dict[str, object]
) -> dict | None:
    """Set the given `mps`, `webhook` and/or `opening_message` of a number; None if the
    account has no such."""
    row = await pool.fetchrow(
        "UPDATE sender_numbers SET"
        " mps = CASE WHEN $3 THEN $4 ELSE mps END,"
        " webhook = CASE WHEN $5 THEN $6 ELSE webhook END,"
        " opening_message = CASE WHEN $7 THEN $8 ELSE opening_message END"
        f" WHERE account_id = $1 AND number = $2 RETURNING {_COLUMNS}",
        account_id,
        number,
        "mps" in changes,
        changes.get("mps"),
        "webhook" in changes,
        changes.get("webhook"),
        "opening_message" in changes,
        changes.get("opening_message"),
    )
    return dict(row) if row else None


async def sender_webhook(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> str | None:
    return await pool.fetchval(
        "SELECT webhook FROM sender_numbers WHERE account_id = $1 AND number = $2",
        account_id,
        number,
    )


async def reserve_slots(pool: asyncpg.Pool, number: str, *, seconds: float) -> Slots | None:
    """Take the next `seconds` of the sender's timeline (at least one slot); None when the
    sender has no limit. The timeline is the number's, not the sending account's: a batch
    that outlives its account's registration is paced by whoever holds the number now. The
    row lock orders concurrent reservations from every worker (not batches being recorded,
    which only keep the row from going: `batches.create_batch`), and an idle sender's
    timeline restarts at now, so no burst builds up while it rests."""
    row = await pool.fetchrow(
        "WITH granted AS ("
        "  SELECT mps, greatest(ceil(mps * $2)::int, 1) AS n FROM sender_numbers"
        "  WHERE number = $1 AND mps IS NOT NULL FOR NO KEY UPDATE)"
        " UPDATE sender_numbers AS s"
        " SET paced_until = greatest(s.paced_until, now()) + make_interval(secs => g.n / g.mps)"
        " FROM granted AS g WHERE s.number = $1"
        " RETURNING g.n AS n, 1 / g.mps AS interval, extract(epoch FROM"
        "  s.paced_until - make_interval(secs => g.n / g.mps) - now()) AS starts_in",
        number,
        seconds,
    )
    if row is None:
        return None
    return Slots(
        count=row["n"], starts_in=max(0.0, float(row["starts_in"])), interval=row["interval"]
    )


@dataclass(frozen=True)
class Removal:
    """What `delete_number` did: `found`, the account held the number; `busy`, the batches
    (at most five) that send from it, in which case it is kept."""

    found: bool
    busy: list[uuid.UUID]


async def delete_number(
    pool: asyncpg.Pool, account_id: uuid.UUID, number: str, *, final: list[str]
) -> Removal:
    """Remove the account's sender unless a batch not in a `final` status sends from it, as
    its sender, a row's own (`senders`) or a list's: read from the batch's request, so that
    a batch still writing its rows (validation) counts too.

    The number is locked first, then the batches read: a batch being created holds its
    senders (`batches.create_batch`), so it is either found here or finds the number gone."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(
            "SELECT true FROM sender_numbers WHERE account_id = $1 AND number = $2 FOR UPDATE",
            account_id,
            number,
        ):
            return Removal(found=False, busy=[])
        busy = await conn.fetch(
            "SELECT b.id FROM batches AS b WHERE b.account_id = $1"
            " AND b.status <> ALL($3::text[]) AND (b.agent_number = $2"
            " OR EXISTS (SELECT FROM jsonb_each_text(coalesce(b.request->'senders', '{}'))"
            " AS s WHERE s.value = $2)"
            " OR EXISTS (SELECT FROM jsonb_array_elements(coalesce(b.request->'lists', '[]'))"
            " AS l WHERE l->>'agent_number' = $2))"
            " ORDER BY b.created_at LIMIT 5",
            account_id,
            number,
            final,
        )
        if busy:
            return Removal(found=True, busy=[r["id"] for r in busy])
        await conn.execute(
            "DELETE FROM sender_numbers WHERE account_id = $1 AND number = $2", account_id, number
        )
    return Removal(found=True, busy=[])


async def holder_of_number(pool: asyncpg.Pool, number: str) -> dict | None:
    """The `account_id` and registered `channel` of a sender number, if an account holds it.
    Never a sender ID's: nobody can reply to one, so a message "to" it is no one's."""
    row = await pool.fetchrow(
        "SELECT account_id, channel FROM sender_numbers WHERE number = $1 AND kind = 'number'",
        number,
    )
    return dict(row) if row is not None else None


async def owner_of_number(pool: asyncpg.Pool, number: str, *, channel: str) -> uuid.UUID | None:
    """The account that holds a sender number (inbound routing), if any does and its
    registration takes `channel` (sends_on: an SMS only to or from a number registered for
    SMS)."""
    holder = await holder_of_number(pool, number)
    return holder["account_id"] if holder is not None and sends_on(holder, channel) else None
