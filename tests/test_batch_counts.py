"""A batch's counts by status are kept as its ledger changes (migration 211): exact after
failures, receipts and a retry, and read without touching the ledger, so that `GET
/v1/sms/batch/{id}` costs the same at 1,000,000 rows as at 100."""

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import httpx

from activities.recipients.columns import in_thread
from api.services.batches import get_batch
from settings import Settings
from store import links, messages, receipts
from tests.support.batches import FINAL, recorded_batch, sending_batch, start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.databases import plan_nodes
from tests.support.delivery import ledger_rows, receipts_applied
from tests.support.stack import Account, Configure, WebhookReceiver


async def test_counts_are_exact_after_failures_receipts_and_a_retry(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(30)
    await carrier(scripted={number: [400] for number in numbers[:4]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await webhooks.wait_for(marker, *FINAL)
    sent = [r for r in await ledger_rows(api, account, file_id) if r["status"] == "sent"]
    given = list(zip(sent, ["delivered"] * 5 + ["undelivered"] * 2, strict=False))
    await receipts.queue_receipts(
        api_pool(api), [receipts.Receipt(row["carrier_sid"], status, None) for row, status in given]
    )
    await receipts_applied(api_pool(api), [row["carrier_sid"] for row, _ in given])
    retry = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    await webhooks.wait_for(marker, *FINAL, times=2)

    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    ledger = Counter(r["status"] for r in await ledger_rows(api, account, file_id))

    assert retry.status_code == 200, retry.text
    assert batch["counts"] == dict(ledger) | {"rejected": 0}
    assert batch["counts"] == {"sent": 23, "delivered": 5, "undelivered": 2, "rejected": 0}


def api_pool(api: httpx.AsyncClient) -> asyncpg.Pool:
    """The pool of the API app behind `api`."""
    transport = api._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app.state.pool  # type: ignore[attr-defined]


class _Recording:
    """Stands for the pool in a service call: runs each statement on one connection (inside
    the test's transaction) and keeps it, with its arguments."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.statements.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self.statements.append((sql, args))
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetchval(sql, *args)


@asynccontextmanager
async def _rolled_back(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction rolled back at the end: the tests' million-row ledgers
    are never written for good."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield conn
        finally:
            await transaction.rollback()


async def _read_cost(
    conn: asyncpg.Connection, settings: Settings, account: Account, batch_id: uuid.UUID
) -> tuple[dict[str, int], set[str], int]:
    """The batch's counts as `GET /v1/sms/batch/{id}` reads them; the tables its statements
    read and the buffers they touch (EXPLAIN ANALYZE of each)."""
    recording = _Recording(conn)
    detail = await get_batch(recording, settings, account.account_id, str(batch_id))  # type: ignore[arg-type]
    tables: set[str] = set()
    buffers = 0
    for sql, args in recording.statements:
        plan = json.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
        )[0]["Plan"]
        tables |= set(_relations(plan))
        buffers += plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    return detail.counts, tables, buffers


def _relations(plan: dict[str, Any]) -> list[str]:
    found = [plan["Relation Name"]] if "Relation Name" in plan else []
    for child in plan.get("Plans", []):
        found += _relations(child)
    return found


async def test_reading_a_batch_costs_the_same_at_a_million_rows_as_at_a_hundred(
    pool: asyncpg.Pool, settings: Settings, account: Account
) -> None:
    async with _rolled_back(pool) as conn:
        costs = []
        for rows in (100, 1_000_000):
            batch_id = await recorded_batch(conn, account)
            await conn.execute(
                "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number,"
                " body, status) SELECT $1, i, $2, i, '+1555' || i, 'x',"
                " CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'sent' END"
                " FROM generate_series(0, $3 - 1) AS i",
                batch_id,
                account.account_id,
                rows,
            )
            costs.append(await _read_cost(conn, settings, account, batch_id))

    (small, small_tables, small_buffers), (large, large_tables, large_buffers) = costs
    assert small == {"sent": 90, "failed": 10, "rejected": 0}
    assert large == {"sent": 900_000, "failed": 100_000, "rejected": 0}
    assert "messages" not in small_tables | large_tables
    assert large_buffers <= small_buffers + 5


async def test_a_windowed_batchs_rows_waiting_are_counted_without_reading_the_ledger(
    pool: asyncpg.Pool, settings: Settings, account: Account
) -> None:
    """A batch with a `send_window` also shows its rows waiting for it (migration 280): kept
    as the ledger changes, into the wait and out of it, like the counts by status."""
    windowed = {"send_window": {"start": "09:00", "end": "17:00"}}
    async with _rolled_back(pool) as conn:
        costs = []
        for rows in (100, 1_000_000):
            batch_id = await recorded_batch(conn, account, windowed)
            await conn.execute(
                "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number,"
                " body, status, window_opens_at) SELECT $1, i, $2, i, '+1555' || i, 'x',"
                " CASE WHEN i % 10 < 2 THEN 'pending' ELSE 'sent' END,"
                " CASE WHEN i % 10 = 0 THEN now() END"
                " FROM generate_series(0, $3 - 1) AS i",
                batch_id,
                account.account_id,
                rows,
            )
            costs.append(await _read_cost(conn, settings, account, batch_id))
        # Into the wait without a change of status (a slice finds the window shut), and out
        # of it by the mark of the rows that waited.
        await conn.execute(
            "UPDATE messages SET window_opens_at = now()"
            " WHERE batch_id = $1 AND status = 'pending' AND window_opens_at IS NULL",
            batch_id,
        )
        all_waiting, _, _ = await _read_cost(conn, settings, account, batch_id)
        await conn.execute(
            "UPDATE messages SET status = 'sending' WHERE batch_id = $1 AND seq % 10 = 0",
            batch_id,
        )
        half_marked, _, _ = await _read_cost(conn, settings, account, batch_id)

    (small, small_tables, small_buffers), (large, large_tables, large_buffers) = costs
    assert small == {"sent": 80, "pending": 20, "rejected": 0, "waiting_for_window": 10}
    assert large == {
        "sent": 800_000,
        "pending": 200_000,
        "rejected": 0,
        "waiting_for_window": 100_000,
    }
    assert "messages" not in small_tables | large_tables
    assert large_buffers <= small_buffers + 5
    assert all_waiting["waiting_for_window"] == 200_000
    assert half_marked == {
        "sent": 800_000,
        "pending": 100_000,
        "sending": 100_000,
        "rejected": 0,
        "waiting_for_window": 100_000,
    }


async def test_a_row_reconciliation_finds_unsent_goes_back_to_pending_not_to_its_wait(
    pool: asyncpg.Pool, account: Account
) -> None:
    """A row that waited for its window, was marked and left `uncertain`, then found unsent
    by reconciliation, is `pending` again as a fresh row is: not counted as waiting."""
    async with pool.acquire() as conn:
        batch_id = await recorded_batch(
            conn, account, {"send_window": {"start": "09:00", "end": "17:00"}}
        )
        await conn.execute(
            "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body,"
            " status, window_opens_at) SELECT $1, i, $2, i, '+1555' || i, 'x', 'uncertain',"
            " now() FROM generate_series(0, 2) AS i",
            batch_id,
            account.account_id,
        )
    await messages.settle_uncertain(
        pool, account.account_id, batch_id, {seq: (f"+1555{seq}", []) for seq in range(3)}
    )

    assert await messages.count_by_status(pool, batch_id) == {"pending": 3}
    assert await messages.count_waiting_for_window(pool, batch_id) == 0


async def test_a_ledger_row_of_no_batch_is_refused_and_a_batch_with_rows_stays(
    pool: asyncpg.Pool, account: Account
) -> None:
    """The ledger's batch is checked through the counts' foreign key (migration 230), by a
    COPY as by an INSERT."""
    missing = uuid.uuid4()
    row = (missing, 0, account.account_id, 1, "+15550000000", "x", "pending")
    columns = ("batch_id", "seq", "account_id", "row_number", "to_number", "body", "status")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            refused = []
            for write in (
                conn.copy_records_to_table("messages", records=[row], columns=columns),
                conn.execute(
                    f"INSERT INTO messages ({', '.join(columns)}) VALUES ($1, $2, $3, $4, $5,"
                    " $6, $7)",
                    *row,
                ),
            ):
                try:
                    async with conn.transaction():
                        await write
                except asyncpg.ForeignKeyViolationError as error:
                    refused.append(error.constraint_name)
            batch_id = await recorded_batch(conn, account)
            await conn.copy_records_to_table(
                "messages", records=[(batch_id, *row[1:])], columns=columns
            )
            try:
                async with conn.transaction():
                    await conn.execute("DELETE FROM batches WHERE id = $1", batch_id)
                deleted = True
            except asyncpg.ForeignKeyViolationError:
                deleted = False
        finally:
            await transaction.rollback()

    assert refused == ["batch_status_counts_batch_id_fkey"] * 2
    assert not deleted


async def test_a_validation_starting_again_clears_what_its_batch_had_written_only(
    pool: asyncpg.Pool, account: Account
) -> None:
    """`clear_validation` (one statement) drops the batch's ledger rows, short links,
    rejected rows and rows' own contents, and takes its ledger rows off its counts; another
    batch's stay."""
    tables = ("messages", "short_links", "rejected_rows", "message_contents")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            batches = [await recorded_batch(conn, account) for _ in range(2)]
            for batch_id in batches:
                # A ledger row as the row engine COPYs it (messages.LEDGER_COLUMNS).
                row = (batch_id, 0, account.account_id, 1, "+15550000000", "x", "pending")
                await messages.copy_recipients(conn, [(*row, None, "gsm7", 1, None, None)])
                await conn.execute(
                    "INSERT INTO short_links (code, batch_id, seq, account_id, url)"
                    " VALUES ($1, $2, 0, $3, 'https://example.com')",
                    uuid.uuid4().hex,
                    batch_id,
                    account.account_id,
                )
                await messages.copy_rejected(
                    conn, [(batch_id, 2, account.account_id, "invalid_number", "no", "+1")]
                )
                await conn.execute(
                    "INSERT INTO message_contents (batch_id, row_number, content_sid)"
                    " VALUES ($1, 1, 'HX1')",
                    batch_id,
                )

            await messages.clear_validation(conn, batches[0])

            left = {
                table: [
                    await conn.fetchval(
                        f"SELECT count(*) FROM {table} WHERE batch_id = $1",
                        batch_id,
                    )
                    for batch_id in batches
                ]
                for table in tables
            }
            counted = [
                await conn.fetchval(
                    "SELECT coalesce(sum(n), 0) FROM batch_status_counts WHERE batch_id = $1",
                    batch_id,
                )
                for batch_id in batches
            ]
        finally:
            await transaction.rollback()

    assert left == {table: [0, 1] for table in tables}
    assert counted == [0, 1]


class _CopyCounter:
    """A connection that counts its COPYs by table, and hands them on."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.copies: list[str] = []

    async def copy_records_to_table(self, table: str, **options: Any) -> str:
        self.copies.append(table)
        return await self._conn.copy_records_to_table(table, **options)


async def test_rows_none_of_a_kind_cost_no_copy(pool: asyncpg.Pool, account: Account) -> None:
    """Most blocks reject no row and shorten no link: those COPYs (two round trips each,
    even empty) are not made; a row of a kind is COPYed."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            batch_id = await recorded_batch(conn, account)
            counter = _CopyCounter(conn)
            copying = cast(asyncpg.Connection, counter)
            await messages.copy_outcomes(
                copying, in_thread(iter(())), [], messages.RECIPIENT_COLUMNS
            )
            await messages.copy_recipients(copying, [])
            await links.copy_links(copying, [])
            none = list(counter.copies)
            rejected = (batch_id, 2, account.account_id, "invalid_number", "no", "+1")
            await messages.copy_outcomes(
                copying, in_thread(iter(())), [rejected], messages.RECIPIENT_COLUMNS
            )
            stored = await conn.fetchval(
                "SELECT count(*) FROM rejected_rows WHERE batch_id = $1", batch_id
            )
        finally:
            await transaction.rollback()

    assert none == []
    assert counter.copies == ["rejected_rows"]
    assert stored == 1


async def test_a_retry_counts_its_rows_from_the_kept_counts_not_the_ledger(
    pool: asyncpg.Pool, account: Account
) -> None:
    """`POST /retry` counts the rows it would send again: a count over the batch's whole
    ledger (a million rows a request). Without an attempts bound, the counts the triggers
    keep say it; with one, the ledger still must."""
    async with _rolled_back(pool) as conn:
        batch_id = await recorded_batch(conn, account)
        await conn.execute(
            "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body,"
            " status, attempts) SELECT $1, i, $2, i, '+1555' || i, 'x',"
            " (ARRAY['failed', 'failed', 'uncertain', 'sent'])[i % 4 + 1], 1 + i % 2"
            " FROM generate_series(0, 99) AS i",
            batch_id,
            account.account_id,
        )
        recording = _Recording(conn)
        plain = await messages.count_in_statuses(
            cast(asyncpg.Pool, recording), batch_id, ["failed"], also=["uncertain"]
        )
        kept_statements = list(recording.statements)
        bounded = await messages.count_in_statuses(
            cast(asyncpg.Pool, recording), batch_id, ["failed"], attempts_below=2
        )

    assert (plain, bounded) == (75, 25)
    assert all("FROM messages" not in sql for sql, _ in kept_statements), kept_statements


async def test_reconciliation_reads_no_ledger_of_a_batch_without_rows_on_the_wire(
    pool: asyncpg.Pool, account: Account
) -> None:
    """Each round of reconciliation asks which numbers the account's other sending batches
    have on the wire (`sending`) or `uncertain`: it read every such batch's whole ledger by
    its key, a million rows each, whatever they held. The kept counts say which hold any."""
    async with _rolled_back(pool) as conn:
        quiet = await sending_batch(conn, account)
        await conn.execute(
            "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body,"
            " status) SELECT $1, i, $2, i, '+1555' || i, 'x', 'sent'"
            " FROM generate_series(0, 99999) AS i",
            quiet,
            account.account_id,
        )
        recording = _Recording(conn)
        pairs = [(account.agent_number, "+15551")]
        await messages.numbers_in_flight(
            cast(asyncpg.Pool, recording), account.account_id, uuid.uuid4(), pairs, 30.0
        )
        await messages.uncertain_elsewhere(
            cast(asyncpg.Pool, recording), account.account_id, uuid.uuid4(), pairs
        )
        read = []
        for sql, args in recording.statements:
            plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))[
                0
            ]["Plan"]
            read += [
                node.get("Actual Loops", 0)
                for node in plan_nodes(plan)
                if node.get("Relation Name") == "messages"
            ]

    assert len(recording.statements) == 2
    assert read and set(read) == {0}, read
