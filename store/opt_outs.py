"""Numbers that asked not to be messaged, per account."""

import uuid

import asyncpg


async def add_opt_out(
    pool: asyncpg.Pool, account_id: uuid.UUID, number: str, *, source: str
) -> None:
    await pool.execute(
        "INSERT INTO opt_outs (account_id, number, source) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id, number) DO NOTHING",
        account_id,
        number,
        source,
    )


async def opted_out_numbers(pool: asyncpg.Pool, account_id: uuid.UUID) -> set[str]:
    rows = await pool.fetch("SELECT number FROM opt_outs WHERE account_id = $1", account_id)
    return {r["number"] for r in rows}


async def remove_opt_out(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> None:
    await pool.execute(
        "DELETE FROM opt_outs WHERE account_id = $1 AND number = $2", account_id, number
    )


async def is_opted_out(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT 1 FROM opt_outs WHERE account_id = $1 AND number = $2", account_id, number
        )
    )
