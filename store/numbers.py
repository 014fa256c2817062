"""Sender numbers registered by each account."""

import uuid

import asyncpg


async def add_number(pool: asyncpg.Pool, account_id: uuid.UUID, number: str, channel: str) -> dict:
    row = await pool.fetchrow(
        "INSERT INTO sender_numbers (account_id, number, channel) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id, number) DO UPDATE SET channel = EXCLUDED.channel"
        " RETURNING number, channel, created_at",
        account_id,
        number,
        channel,
    )
    return dict(row)


async def list_numbers(pool: asyncpg.Pool, account_id: uuid.UUID) -> list[dict]:
    rows = await pool.fetch(
        "SELECT number, channel, created_at FROM sender_numbers WHERE account_id = $1"
        " ORDER BY created_at, number",
        account_id,
    )
    return [dict(r) for r in rows]


async def has_number(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT 1 FROM sender_numbers WHERE account_id = $1 AND number = $2",
            account_id,
            number,
        )
    )


async def delete_number(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> bool:
    status = await pool.execute(
        "DELETE FROM sender_numbers WHERE account_id = $1 AND number = $2", account_id, number
    )
    return status != "DELETE 0"


async def accounts_for_number(pool: asyncpg.Pool, number: str) -> list[uuid.UUID]:
    """The accounts that registered a sender, first registration first (inbound routing)."""
    rows = await pool.fetch(
        "SELECT account_id FROM sender_numbers WHERE number = $1 ORDER BY created_at, account_id",
        number,
    )
    return [r["account_id"] for r in rows]
