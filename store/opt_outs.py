"""Numbers that asked not to be messaged, per account."""

import uuid

import asyncpg

_COLUMNS = "number, source, created_at"


async def add_opt_out(
    db: asyncpg.Pool | asyncpg.Connection, account_id: uuid.UUID, number: str, *, source: str
) -> dict:
    """Opt `number` out; the row as stored (an earlier opt-out keeps its source and time)."""
    row = await db.fetchrow(
        "INSERT INTO opt_outs (account_id, number, source) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id, number) DO UPDATE SET source = opt_outs.source"
        f" RETURNING {_COLUMNS}",
        account_id,
        number,
        source,
    )
    return dict(row)


async def remove_opt_out(
    db: asyncpg.Pool | asyncpg.Connection, account_id: uuid.UUID, number: str
) -> bool:
    status = await db.execute(
        "DELETE FROM opt_outs WHERE account_id = $1 AND number = $2", account_id, number
    )
    return status != "DELETE 0"


async def list_opt_outs(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, after: str
) -> list[dict]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM opt_outs WHERE account_id = $1 AND number > $2"
        " ORDER BY number LIMIT $3",
        account_id,
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def opted_out_numbers(pool: asyncpg.Pool, account_id: uuid.UUID) -> set[str]:
    rows = await pool.fetch("SELECT number FROM opt_outs WHERE account_id = $1", account_id)
    return {r["number"] for r in rows}


async def is_opted_out(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT 1 FROM opt_outs WHERE account_id = $1 AND number = $2", account_id, number
        )
    )
