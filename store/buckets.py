"""Token buckets kept in a row of PostgreSQL, so that every API process spends from the same
one: the row's `rate_tokens` (tokens left at `rate_updated`; NULL, a full bucket) and
`rate_updated` columns."""

import uuid
from typing import Literal

import asyncpg

# The tables whose rows carry a bucket; the name is spliced into the statement, so it is
# one of these and never a caller's text.
BucketTable = Literal["campaigns", "api_keys"]


async def take(
    pool: asyncpg.Pool, table: BucketTable, row_id: uuid.UUID, *, per_second: float, burst: float
) -> float | None:
    """Spend one token of the row's bucket, refilled at `per_second` up to `burst`: None if it
    had one (or there is no such row), else the seconds until it has. The row lock serialises
    concurrent requests, from any API process."""
    row = await pool.fetchrow(
        "WITH bucket AS ("
        " SELECT id, least($2::float8, coalesce(rate_tokens + extract(epoch FROM"
        " clock_timestamp() - rate_updated)::float8 * $3::float8, $2::float8)) AS tokens"
        f" FROM {table} WHERE id = $1 FOR UPDATE)"
        f" UPDATE {table} AS t SET rate_updated = clock_timestamp(),"
        " rate_tokens = CASE WHEN bucket.tokens >= 1 THEN bucket.tokens - 1 ELSE bucket.tokens END"
        " FROM bucket WHERE t.id = bucket.id RETURNING bucket.tokens",
        row_id,
        burst,
        per_second,
    )
    if row is None or row["tokens"] >= 1:
        return None
    return (1 - row["tokens"]) / per_second
