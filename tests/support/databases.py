"""Databases of a test's own in the session's PostgreSQL: a schema as an older release left it,
or statistics and read counts no other test's batches touch."""

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


@asynccontextmanager
async def own_database(pool: asyncpg.Pool, postgres_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database (its URL), dropped at the end."""
    database = f"{prefix}_{secrets.token_hex(4)}"
    await pool.execute(f"CREATE DATABASE {database}")
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{database}"
    finally:
        await pool.execute(f"DROP DATABASE {database} WITH (FORCE)")
