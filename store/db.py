"""The asyncpg pool and the migration runner."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from importlib import resources
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any fixed 64-bit number: serialises concurrent migrators (API and worker start together).
MIGRATION_LOCK = 0x48455241_4C440001
# Held by the API process sweeping stranded messages (api/services/stranded_messages.py).
SWEEP_LOCK = 0x48455241_4C440002

# What a statement raises while PostgreSQL is down, restarting or shutting down: worth trying
# again once it is back, unlike an error in the statement itself.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
)


# jsonb's binary form: a version byte, then the JSON's text.
_JSONB_VERSION = b"\x01"


def _jsonb_encode(value: Any) -> bytes:
    return _JSONB_VERSION + json.dumps(value).encode()


def _jsonb_decode(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # In binary, so that a binary COPY (copy_records_to_table) takes jsonb values too.
    await conn.set_type_codec(
        "jsonb",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        schema="pg_catalog",
        format="binary",
    )


def after_key(columns: str, after: tuple[Any, ...] | None, first: int, *, descending: bool) -> str:
    """The condition (` AND (...) > (...)`, or nothing for the first page) that keeps the rows
    after the key `after` of a list ordered by `columns`, all ascending or all descending; the
    key's values are the query's parameters from `$first` on."""
    if after is None:
        return ""
    params = ", ".join(f"${first + i}" for i in range(len(after)))
    return f" AND ({columns}) {'<' if descending else '>'} ({params})"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, after asyncpg has ended any open
    transaction: nothing. Herald leaves no session state behind (no session `SET` but while
    the receipts intake holds a connection, which it resets before giving it back; no `LISTEN`
    or cursor outside a transaction; the migrations' session advisory lock is given back
    before their connection is), so asyncpg's default reset
    (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) would only cost a round
    trip to PostgreSQL after every pool statement: two of the send path's per wave."""


def rows_affected(status: str) -> int:
    """The row count of a command's status (`DELETE 3`, `UPDATE 0`, `INSERT 0 1`)."""
    return int(status.split()[-1])


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session
    )


# How often a migrator asks again for the lock another migrator holds.
MIGRATION_LOCK_POLL_SECONDS = 0.2
# A migration's first line that runs it outside a transaction, a statement at a time.
NO_TRANSACTION = "-- migration: no transaction"


def _statements(sql: str) -> list[str]:
    """A migration's statements: its lines but comments, split at each `;` that ends one."""
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("store") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


async def migrate(pool: asyncpg.Pool, *, before: str | None = None) -> list[str]:
    """Apply, in name order, each migration not yet recorded (only those named before
    `before`, when given: a schema as an older release left it); return the names applied.

    Each migration commits on its own, with its record: the locks one takes (an index built
    on the ledger holds its writes) end with it, not with the last migration of the upgrade,
    while the release still running writes on. One whose first line is NO_TRANSACTION runs
    its statements one by one, outside any transaction (`CREATE INDEX CONCURRENTLY`, which
    lets the ledger be written while its index is built), then records itself: its
    statements must be safe to run again (`IF EXISTS`), as an interrupted one is. The
    session's advisory lock serialises concurrent migrators (API and workers start
    together)."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        # Asked again and again, not waited for in one statement: that statement's snapshot
        # would hold up the other migrator's CONCURRENTLY build, which waits for every older
        # snapshot, while this one waited for its lock (a deadlock PostgreSQL breaks by
        # failing one of them).
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK):  # noqa: ASYNC110 - polling
            await asyncio.sleep(MIGRATION_LOCK_POLL_SECONDS)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in _migration_files():
                if name in done or (before is not None and name >= before):
                    continue
                alone = sql.startswith(NO_TRANSACTION)
                async with nullcontext() if alone else conn.transaction():
                    for statement in _statements(sql) if alone else [sql]:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    if applied:
        log.info("migrations applied", migrations=applied)
    return applied


class SchemaBehind(RuntimeError):
    """The database lacks migrations of this release, and this process is not to apply them."""


async def pending_migrations(pool: asyncpg.Pool) -> list[str]:
    """The migrations of this release not recorded as applied, in name order."""
    async with pool.acquire() as conn:
        known = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = (
            {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            if known
            else set()
        )
    return [name for name, _ in _migration_files() if name not in done]


async def ready_schema(pool: asyncpg.Pool, *, migrate_now: bool) -> None:
    """Apply the pending migrations (`migrate`), or, without `migrate_now`, only check that
    none is pending: SchemaBehind names them and the command that applies them."""
    if migrate_now:
        await migrate(pool)
        return
    pending = await pending_migrations(pool)
    if pending:
        raise SchemaBehind(
            f"the database lacks {len(pending)} migration(s) of this release"
            f" ({', '.join(pending)}): run `python -m deploy.prepare` (the image's `prepare`,"
            " the herald-prepare Job) first, or set HERALD_MIGRATE_ON_START=true"
        )


@asynccontextmanager
async def session_lock(pool: asyncpg.Pool, key: int) -> AsyncIterator[bool]:
    """Whether this process took the session advisory lock `key` (not waiting for it), held
    on a connection of its own until the block ends."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            yield False
            return
        try:
            yield True
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def ping(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=2) as conn:
        await conn.fetchval("SELECT 1", timeout=2)
