"""The migration runner and the migrations that change keys under a running release: each
checked on a database of the test's own, from the schema an older release left."""

import asyncio
import uuid

import asyncpg
import pytest

from store import db, mailing_lists
from store.accounts import create_account
from store.db import create_pool, migrate
from tests.support.databases import own_database


async def test_each_migration_commits_on_its_own(
    pool: asyncpg.Pool, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A migration that fails leaves those before it applied and recorded: their locks ended
    # with them, and the next start goes on from the one that failed.
    files = [
        ("001_first.sql", "CREATE TABLE first (id int)"),
        ("002_broken.sql", "CREATE TABLE broken (id no_such_type)"),
    ]
    monkeypatch.setattr(db, "_migration_files", lambda: files)
    async with (
        own_database(pool, postgres_dsn, "runner") as url,
        await create_pool(url, min_size=1) as own,
    ):
        with pytest.raises(asyncpg.UndefinedObjectError):
            await migrate(own)
        recorded = await own.fetch("SELECT name FROM schema_migrations")
        tables = await own.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        # The runner's lock is free again: a second runner gets as far as the broken one.
        with pytest.raises(asyncpg.UndefinedObjectError):
            await migrate(own)

    assert [r["name"] for r in recorded] == ["001_first.sql"]
    assert {r["tablename"] for r in tables} == {"schema_migrations", "first"}


async def test_a_migration_without_a_transaction_builds_an_index_concurrently_and_runs_again(
    pool: asyncpg.Pool, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CREATE INDEX CONCURRENTLY` cannot run in a transaction: a migration so marked runs a
    statement at a time, the table written meanwhile. A second migrator waits for the first
    without a snapshot the build would wait for (each waited for the other: a deadlock). One
    stopped before its record (an index left built, or invalid) runs again from its first
    statement."""
    concurrently = (
        f"{db.NO_TRANSACTION}\n-- builds the index\n"
        "SELECT pg_sleep(0.5);\n"
        "DROP INDEX CONCURRENTLY IF EXISTS t_n;\n"
        "CREATE INDEX CONCURRENTLY t_n ON t (n);\n"
    )
    files = [("001_table.sql", "CREATE TABLE t (n int)"), ("002_index.sql", concurrently)]
    monkeypatch.setattr(db, "_migration_files", lambda: files)
    async with (
        own_database(pool, postgres_dsn, "concurrently") as url,
        await create_pool(url, min_size=1) as own,
        await create_pool(url, min_size=1) as other,
    ):
        # Two processes starting together (make run's API and worker) both migrate.
        first = await asyncio.gather(migrate(own), migrate(other))
        await own.execute("DELETE FROM schema_migrations WHERE name = '002_index.sql'")
        again = await migrate(own)
        valid = await own.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_n'::regclass"
        )

    assert sorted(first) == [[], ["001_table.sql", "002_index.sql"]]
    assert again == ["002_index.sql"]
    assert valid is True


async def test_a_process_that_does_not_migrate_refuses_a_schema_behind_it_naming_what_lacks(
    pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    # HERALD_MIGRATE_ON_START=false: the pods leave migrations to the prepare Job (a long one
    # was cut short by a pod's startup probe), and refuse to run on a schema behind them.
    async with (
        own_database(pool, postgres_dsn, "behind") as url,
        await create_pool(url, min_size=1) as own,
    ):
        await migrate(own, before="350")
        with pytest.raises(db.SchemaBehind) as behind:
            await db.ready_schema(own, migrate_now=False)
        applied = await migrate(own)
        await db.ready_schema(own, migrate_now=False)
        pending = await db.pending_migrations(own)

    assert applied and all(name >= "350" for name in applied)
    assert ", ".join(applied) in str(behind.value)
    assert "deploy.prepare" in str(behind.value)
    assert pending == []


async def test_lists_keyed_by_account_keep_every_list_and_contact(
    pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    # Migration 320 on a database with the lists and contacts of the release before it: all
    # kept, deletion still takes a list's contacts, and another account may take a list's id.
    async with (
        own_database(pool, postgres_dsn, "lists") as url,
        await create_pool(url, min_size=1) as own,
    ):
        await migrate(own, before="320")
        first, other = await create_account(own, "first"), await create_account(own, "other")
        kept, dropped = uuid.uuid4(), uuid.uuid4()
        for list_id in (kept, dropped):
            await mailing_lists.create_list(own, first, "customers", list_id)
            await mailing_lists.add_contacts(own, first, list_id, {"+15005550001": {"N": "a"}})

        applied = await migrate(own)
        await mailing_lists.delete_list(own, first, dropped)
        taken = await mailing_lists.create_list(own, other, "theirs", kept)
        await mailing_lists.add_contacts(own, other, kept, {"+15005550002": {}})
        contacts = await own.fetch(
            "SELECT account_id, list_id, phone_number FROM mailing_list_contacts"
            " ORDER BY phone_number"
        )

    assert applied[0].startswith("320")
    assert taken is not None and taken["id"] == kept
    assert [tuple(r.values()) for r in contacts] == [
        (first, kept, "+15005550001"),
        (other, kept, "+15005550002"),
    ]
