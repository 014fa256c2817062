"""Idempotency keys of single sends: the first request with a key claims it and stores its reply."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from store.conversation_messages import SIGNAL_FAILED


@dataclass(frozen=True, kw_only=True)
class HeldMessage:
    """The message the request holding a key recorded (`hold_message`)."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    # Still queued and never signalled (`signalled_at`).
    unsignalled: bool
    # Failed because its request's signal failed (conversation_messages.SIGNAL_FAILED): that
    # request releases the key (`release`), unless it died first.
    failed_unsent: bool


@dataclass(frozen=True, kw_only=True)
class StoredKey:
    request_hash: str
    reply: dict[str, Any] | None
    claimed_at: datetime
    claimed_seconds_ago: float
    message: HeldMessage | None = None


@dataclass(frozen=True)
class Claim:
    """A request's hold on a key. `claimed_at` tells it from a later claim of the same key: a
    repeat that took over a claim whose request recorded nothing (`take_over`)."""

    key: str
    claimed_at: datetime


async def claim(
    pool: asyncpg.Pool, account_id: uuid.UUID, key: str, request_hash: str, *, ttl: timedelta
) -> Claim | None:
    """Take the key for this request; None when another request holds it and it has not expired.

    One statement, so of two requests racing for a key exactly one gets it.
    """
    claimed_at = await pool.fetchval(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, expires_at)"
        " VALUES ($1, $2, $3, now() + $4::interval)"
        " ON CONFLICT (account_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
        " reply = NULL, claimed_at = now(), expires_at = EXCLUDED.expires_at, message_id = NULL"
        " WHERE idempotency_keys.expires_at <= now()"
        " RETURNING claimed_at",
        account_id,
        key,
        request_hash,
        ttl,
    )
    return Claim(key, claimed_at) if claimed_at is not None else None


async def take_over(pool: asyncpg.Pool, account_id: uuid.UUID, held: Claim) -> Claim | None:
    """Claim the key for a repeat, from a request (`held`) that has neither a reply nor a
    message recorded: it died before recording its message, or is stuck before it. From now
    on that request cannot record one (`hold_message`), so the message is sent once. None when
    the key changed meanwhile (another repeat took it over, or the message was recorded).

    The key keeps its lifetime (from its first use). One statement: of repeats racing, one
    gets it; the time of the claim is the clock's, never the transaction's start that the
    claim it replaces may share."""
    claimed_at = await pool.fetchval(
        "UPDATE idempotency_keys SET claimed_at = clock_timestamp()"
        " WHERE account_id = $1 AND key = $2 AND claimed_at = $3"
        " AND reply IS NULL AND message_id IS NULL AND expires_at > now()"
        " RETURNING claimed_at",
        account_id,
        held.key,
        held.claimed_at,
    )
    return Claim(held.key, claimed_at) if claimed_at is not None else None


async def get(pool: asyncpg.Pool, account_id: uuid.UUID, key: str) -> StoredKey | None:
    """The key while it has not expired, with the message its request recorded; None when free.

    A message created before the key's claim is not this claim's: the release before this
    one re-claims an expired key without clearing `message_id`."""
    row = await pool.fetchrow(
        "SELECT k.request_hash, k.reply, k.claimed_at,"
        " extract(epoch FROM now() - k.claimed_at)::float8 AS age,"
        " m.id AS message_id, m.conversation_id,"
        " coalesce(m.status = 'queued' AND m.signalled_at IS NULL, false) AS unsignalled,"
        " coalesce(m.status = 'failed' AND m.signalled_at IS NULL AND m.error_code = $3, false)"
        " AS failed_unsent"
        " FROM idempotency_keys AS k LEFT JOIN conversation_messages AS m"
        " ON m.id = k.message_id AND m.created_at >= k.claimed_at"
        " WHERE k.account_id = $1 AND k.key = $2 AND k.expires_at > now()",
        account_id,
        key,
        SIGNAL_FAILED,
    )
    if row is None:
        return None
    return StoredKey(
        request_hash=row["request_hash"],
        reply=row["reply"],
        claimed_at=row["claimed_at"],
        claimed_seconds_ago=row["age"],
        message=HeldMessage(
            message_id=row["message_id"],
            conversation_id=row["conversation_id"],
            unsignalled=row["unsignalled"],
            failed_unsent=row["failed_unsent"],
        )
        if row["message_id"] is not None
        else None,
    )


async def hold_message(
    conn: asyncpg.Connection, account_id: uuid.UUID, held: Claim, message_id: uuid.UUID
) -> bool:
    """Note the message the key's request queued, in the transaction that queues it; False
    when the request's claim was taken over (`take_over`): the transaction must not commit."""
    return bool(
        await conn.fetchval(
            "UPDATE idempotency_keys SET message_id = $3"
            " WHERE account_id = $1 AND key = $2 AND claimed_at = $4 RETURNING true",
            account_id,
            held.key,
            message_id,
            held.claimed_at,
        )
    )


async def complete(
    pool: asyncpg.Pool, account_id: uuid.UUID, key: str, reply: dict[str, Any]
) -> None:
    await pool.execute(
        "UPDATE idempotency_keys SET reply = $3 WHERE account_id = $1 AND key = $2",
        account_id,
        key,
        reply,
    )


async def release(pool: asyncpg.Pool, account_id: uuid.UUID, held: Claim) -> None:
    """Free a claim whose request handed nothing over (refused before its message was
    recorded, or its message failed unsignalled: TEMPORAL_UNAVAILABLE), so the caller may try
    again with the key; not a later claim of the key (a repeat's, `take_over`).

    A claim whose message is queued or was signalled is kept: its request failed after the
    commit, and a repeat signals the message if it never was and answers with its reply (a
    new message would leave the first queued for good, or send twice)."""
    await pool.execute(
        "DELETE FROM idempotency_keys AS k WHERE account_id = $1 AND key = $2 AND reply IS NULL"
        " AND claimed_at = $3 AND NOT EXISTS (SELECT FROM conversation_messages AS m"
        " WHERE m.id = k.message_id AND m.created_at >= k.claimed_at"
        " AND (m.status <> 'failed' OR m.signalled_at IS NOT NULL))",
        account_id,
        held.key,
        held.claimed_at,
    )
