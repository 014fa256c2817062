"""Idempotency keys of single sends: the first request with a key claims it and stores its reply."""

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg


@dataclass(frozen=True, kw_only=True)
class StoredKey:
    request_hash: str
    reply: dict[str, Any] | None
    claimed_seconds_ago: float


async def claim(
    pool: asyncpg.Pool, account_id: uuid.UUID, key: str, request_hash: str, *, ttl: timedelta
) -> bool:
    """Take the key for this request; False when another request holds it and it has not expired.

    One statement, so of two requests racing for a key exactly one gets True.
    """
    claimed = await pool.fetchval(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, expires_at)"
        " VALUES ($1, $2, $3, now() + $4::interval)"
        " ON CONFLICT (account_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
        " reply = NULL, claimed_at = now(), expires_at = EXCLUDED.expires_at"
        " WHERE idempotency_keys.expires_at <= now()"
        " RETURNING true",
        account_id,
        key,
        request_hash,
        ttl,
    )
    return bool(claimed)


async def get(pool: asyncpg.Pool, account_id: uuid.UUID, key: str) -> StoredKey | None:
    """The key while it has not expired; None when free."""
    row = await pool.fetchrow(
        "SELECT request_hash, reply, extract(epoch FROM now() - claimed_at)::float8 AS age"
        " FROM idempotency_keys"
        " WHERE account_id = $1 AND key = $2 AND expires_at > now()",
        account_id,
        key,
    )
    if row is None:
        return None
    return StoredKey(
        request_hash=row["request_hash"], reply=row["reply"], claimed_seconds_ago=row["age"]
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


async def release(pool: asyncpg.Pool, account_id: uuid.UUID, key: str) -> None:
    """Free a claim whose request sent nothing, so the caller may try again with the key."""
    await pool.execute(
        "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 AND reply IS NULL",
        account_id,
        key,
    )
