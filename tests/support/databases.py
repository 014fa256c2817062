"""Databases of a test's own in the session's PostgreSQL: a schema as an older release left it,
or statistics and read counts no other test's batches touch. And a wait for a statement to be
blocked on a test's lock (`blocked_behind`), and the nodes of a plan (`plan_nodes`)."""

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tests.support.sending import eventually


@asynccontextmanager
async def own_database(pool: asyncpg.Pool, postgres_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database (its URL), dropped at the end."""
    database = f"{prefix}_{secrets.token_hex(4)}"
    await pool.execute(f"CREATE DATABASE {database}")
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{database}"
    finally:
        await pool.execute(f"DROP DATABASE {database} WITH (FORCE)")


async def blocked_behind(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Once another session waits on a lock `conn` holds (only `conn`'s: a lock another
    test's leftover work holds does not count)."""
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            conn.get_server_pid(),
        ),
        bool,
    )


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, the root first."""
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]
