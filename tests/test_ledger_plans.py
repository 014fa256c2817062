"""A freshly validated batch's ledger has its statistics before its first slice: validation
samples the columns the send path selects rows by once its bulk COPY is in
(messages.refresh_statistics, for a batch large beside the ledger), so that no plan takes the
new rows for absent and reads the whole batch for a slice. A batch small beside the ledger
does not sample it again: that cost a small batch about a second of its validation while a
large one sent (fairness between batches)."""

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import httpx
import pytest

from api.services.receipts import ReceiptIntake
from bench.ledger_copy import backend_wal_writes, validated_batch
from store import conversations, messages, receipts
from store.accounts import create_account
from store.db import _migration_files, create_pool, migrate
from tests.support import databases
from tests.support.batches import start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.stack import Account, WebhookReceiver
from workflows.statuses import LedgerStatus

ROWS = 20_000
SLICE = 100


class _Statement:
    """Stands for the pool: keeps the statement it is given instead of running it; every sid
    it is asked about has a receipt waiting."""

    sql = ""
    args: tuple[Any, ...] = ()

    async def fetchval(self, sql: str, sids: list[str]) -> list[str]:
        return sids

    async def execute(self, sql: str, *args: Any) -> None:
        self.sql, self.args = sql, args


class _Recording:
    """Stands for the pool: runs each statement on it, and keeps it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.pool.fetchval(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.pool.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.pool.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append((sql, args))
        return await self.pool.execute(sql, *args)


@pytest.fixture
async def own_database(pool: asyncpg.Pool, postgres_dsn: str) -> AsyncIterator[str]:
    """A migrated database of the test's own (its URL): its ledger's statistics and its
    tables' counts of reads are the test's alone, not those of the session's long-lived
    ledger."""
    async with databases.own_database(pool, postgres_dsn, "plans") as url:
        async with await create_pool(url, min_size=1) as own:
            await migrate(own)
        yield url


@pytest.fixture
async def own_pool(own_database: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection to the test's own database."""
    async with await create_pool(own_database, min_size=1, max_size=1) as pool:
        yield pool


async def _validated_batch(pool: asyncpg.Pool, rows: int) -> uuid.UUID:
    """A batch of `rows` ledger rows as validation leaves them (statistics sampled before any
    row has a sid: messages.refresh_statistics)."""
    account_id = await create_account(pool, "plans")
    return await validated_batch(pool, account_id, rows)


async def _sent_batch(pool: asyncpg.Pool, rows: int) -> uuid.UUID:
    """A validated batch of `rows` rows (_validated_batch), then every row sent, sid `SM` +
    md5(seq)."""
    batch_id = await _validated_batch(pool, rows)
    await pool.execute(
        "UPDATE messages SET status = 'sent', carrier_sid = 'SM' || md5(seq::text)"
        " WHERE batch_id = $1",
        batch_id,
    )
    return batch_id


def _sid(seq: int) -> str:
    return "SM" + hashlib.md5(str(seq).encode()).hexdigest()


# What receipt_queue's sequential scans read, and how many searches the receipt tables' sid
# indexes had, so far in this database (a connection's counts: _counted).
QUEUE_ROWS_SCANNED = "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'receipt_queue'"
# The ledger rows read so far, by sequential scans and index fetches.
LEDGER_READS = (
    "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
    " WHERE relname = 'messages'"
)
# The ledger's row updates so far, and those of them PostgreSQL wrote as HOT updates.
LEDGER_UPDATES = "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'messages'"
LEDGER_HOT_UPDATES = "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'"
RECEIPT_SEARCHES = (
    "SELECT sum(idx_scan)::int FROM pg_stat_user_indexes"
    " WHERE indexrelname IN ('carrier_receipts_pkey', 'receipt_queue_sid')"
)


async def _counted(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, sql: str) -> int:
    """A count of the statistics views (`sql`), with this connection's own counts flushed
    first."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval(sql)


def _ledger_indexes(plan: dict[str, Any]) -> list[str | None]:
    """The index each node of `plan` that reads the ledger goes by (None: no index). A bitmap
    heap scan goes by the index of the bitmap index scan below it, which names no relation."""
    if plan.get("Relation Name") == "messages" and plan["Node Type"] == "Bitmap Heap Scan":
        return [_bitmap_index(plan)]
    found = (
        [plan.get("Index Name")]
        if plan.get("Relation Name") == "messages" and plan["Node Type"] != "ModifyTable"
        else []
    )
    for child in plan.get("Plans", []):
        found += _ledger_indexes(child)
    return found


def _receipt_lookups(plan: dict[str, Any]) -> list[str]:
    """The conditions of each node of `plan` that reads a receipt table or its sid index."""
    found = []
    if plan.get("Relation Name") in ("carrier_receipts", "receipt_queue") or plan.get(
        "Index Name"
    ) in ("carrier_receipts_pkey", "receipt_queue_sid"):
        conditions = ("Index Cond", "Recheck Cond", "Filter")
        found.append(" ".join(plan.get(name, "") for name in conditions))
    for child in plan.get("Plans", []):
        found += _receipt_lookups(child)
    return found


def _bitmap_index(plan: dict[str, Any]) -> str | None:
    """The one index a bitmap heap scan's bitmap comes from (None: several, or none)."""
    names = {child.get("Index Name") for child in plan.get("Plans", [])}
    return names.pop() if len(names) == 1 else None


async def test_the_send_paths_statistics_are_sampled_from_a_few_thousand_rows(
    own_pool: asyncpg.Pool,
) -> None:
    """The refresh is on the way to a batch's first message: the send path's columns are
    sampled at statistics target 10 (ten buckets of `seq`, ten values at most of the others),
    so that an ANALYZE of them alone takes 3,000 rows, not the default's 30,000."""
    await _validated_batch(own_pool, ROWS)
    sampled = await own_pool.fetch(
        "SELECT attname, cardinality(histogram_bounds::text::text[]) AS bounds,"
        " cardinality(most_common_vals::text::text[]) AS common"
        " FROM pg_stats WHERE tablename = 'messages' AND attname = ANY($1)",
        list(messages.SEND_PATH_COLUMNS),
    )
    assert {r["attname"] for r in sampled} == set(messages.SEND_PATH_COLUMNS)
    bounds = {r["attname"]: r["bounds"] for r in sampled}
    assert bounds["seq"] == 11, sampled
    assert all((r["common"] or 0) <= 10 for r in sampled), sampled


async def test_a_rows_mark_and_its_receipt_add_no_index_entry(own_pool: asyncpg.Pool) -> None:
    """A row's mark (`sending`) and its final receipt change no indexed column: with room
    left on each page (migration 270) PostgreSQL writes them as HOT updates, beside the old
    version and with no new entry in the ledger's indexes. Its outcome (the sid, indexed)
    is not one. Rows are sent as a slice sends them: each wave marked in the statement that
    writes the last one's outcomes; receipts taken by the intake, 50 a statement."""
    rows, wave = 2_000, 100
    batch_id = await _validated_batch(own_pool, rows)
    updated, hot = await _updates(own_pool)
    done: list[messages.Outcome] = []
    for start in range(0, rows + wave, wave):
        mark = list(range(start, min(start + wave, rows)))
        await messages.write_outcomes(own_pool, batch_id, done, mark=mark)
        done = [messages.Outcome(seq, LedgerStatus.SENT, _sid(seq)) for seq in mark]
    sent_updated, sent_hot = await _updates(own_pool)
    async with own_pool.acquire() as intake:
        for start in range(0, rows, 50):
            taken = [
                receipts.Receipt(_sid(seq), "delivered", None) for seq in range(start, start + 50)
            ]
            await receipts.take_receipts(intake, taken)
    received_updated, received_hot = await _updates(own_pool)
    delivered = await own_pool.fetchval(
        "SELECT count(*) FROM messages WHERE batch_id = $1 AND status = 'delivered'", batch_id
    )

    assert delivered == rows
    assert sent_updated - updated == 2 * rows  # each row marked, then given its outcome
    assert sent_hot - hot >= 0.9 * rows, (sent_hot - hot, rows)  # the marks
    assert received_updated - sent_updated == rows
    assert received_hot - sent_hot >= 0.9 * rows, (received_hot - sent_hot, rows)


async def _updates(pool: asyncpg.Pool) -> tuple[int, int]:
    """The ledger's updates so far in this database, and how many of them were HOT."""
    async with pool.acquire() as conn:
        return await _counted(conn, LEDGER_UPDATES), await _counted(conn, LEDGER_HOT_UPDATES)


async def manual_analyses(pool: asyncpg.Pool) -> int:
    count = await pool.fetchval(
        "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'messages'"
    )
    return int(count)


async def test_a_batch_small_beside_the_ledger_leaves_its_statistics_be(
    own_pool: asyncpg.Pool,
) -> None:
    # The test's own ledger: no other test's batch, nor autovacuum on the session's large
    # one, analyses it meanwhile.
    await _validated_batch(own_pool, 20)
    await own_pool.execute("ANALYZE messages")
    counted = await own_pool.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'messages'")
    before = await manual_analyses(own_pool)

    await messages.refresh_statistics(own_pool, added=int(counted * messages.STATISTICS_SHARE) - 1)
    after_small = await manual_analyses(own_pool)
    await messages.refresh_statistics(own_pool, added=int(counted))
    after_large = await manual_analyses(own_pool)

    assert counted >= 20
    assert after_small == before
    assert after_large == before + 1


async def test_the_windowed_count_migration_waits_for_a_ledger_write_and_does_not_deadlock(
    own_database: str, own_pool: asyncpg.Pool
) -> None:
    """Migration 280 runs while the previous version still sends (docs/DEPLOY.md). A ledger
    write locks `messages`, then its trigger writes `batch_status_counts`: the migration takes
    the same order, so it waits for the write instead of deadlocking with it."""
    sql = dict(_migration_files())
    before = sql["211_batch_status_counts.sql"]
    count_function = before[before.index("CREATE FUNCTION") : before.index("END $$;") + 7]
    batch_id = await _validated_batch(own_pool, 2_000)
    # The schema as it was before the migration.
    await own_pool.execute(count_function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    await own_pool.execute("ALTER TABLE batch_status_counts DROP COLUMN windowed")
    writer = await asyncpg.connect(own_database)
    migrator = await asyncpg.connect(own_database)
    try:
        # Holds the ledger from its start; writes the counts only at its end, a second on.
        write = asyncio.create_task(
            writer.execute(
                "UPDATE messages SET updated_at = now() FROM (SELECT pg_sleep(1)) AS slow"
                " WHERE batch_id = $1",
                batch_id,
            )
        )
        await asyncio.sleep(0.3)
        async with migrator.transaction():
            await migrator.execute(sql["280_waiting_for_window_counted.sql"])
        assert await write == "UPDATE 2000"
        counted = await migrator.fetchval(
            "SELECT sum(n) FROM batch_status_counts WHERE batch_id = $1", batch_id
        )
    finally:
        await writer.close()
        await migrator.close()
    assert counted == 2_000


async def test_a_fresh_batchs_kept_receipts_are_looked_up_by_sid_not_by_reading_the_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, pool: asyncpg.Pool
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(ROWS), schedule_at=later
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    # What validation runs for a batch large beside the ledger (this one may not be, in a
    # long session; a skipped refresh is test_fairness's).
    await messages.refresh_statistics(pool, added=2**40)
    statement = _Statement()
    sids = [f"SM{uuid.uuid4().hex}" for _ in range(SLICE)]
    await messages.apply_kept_receipts(cast(asyncpg.Pool, statement), uuid.UUID(file_id), sids)

    plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {statement.sql}", *statement.args)
    sampled = await pool.fetch(
        "SELECT attname FROM pg_stats WHERE tablename = 'messages' AND attname = ANY($1)",
        list(messages.SEND_PATH_COLUMNS),
    )
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert {r["attname"] for r in sampled} == set(messages.SEND_PATH_COLUMNS)
    # The rows are found by the index of their sids, which holds none of the new batch's, then
    # locked in key order and moved by their key (receipts.move_ledger); never a read of the
    # whole batch.
    found, *moved = _ledger_indexes(json.loads(plan)[0]["Plan"])
    assert found == "messages_carrier_sid", plan
    assert moved == ["messages_pkey"], plan


async def test_a_wave_whose_receipts_have_not_come_reads_no_ledger_row(pool: asyncpg.Pool) -> None:
    recording = _Recording(pool)
    sids = [f"SM{uuid.uuid4().hex}" for _ in range(SLICE)]

    await messages.apply_kept_receipts(cast(asyncpg.Pool, recording), uuid.uuid4(), sids)

    assert recording.statements
    for sql, args in recording.statements:
        plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        # The receipts are looked up by sid; without one, the ledger is not read.
        assert _ledger_indexes(json.loads(plan)[0]["Plan"]) == [], plan


async def test_the_receipt_applier_reads_the_ledger_only_by_sid(own_pool: asyncpg.Pool) -> None:
    # On a ledger of the test's own, its statistics a sent batch's: the session's ledger, small
    # or not, has whatever statistics its last ANALYZE left.
    await _sent_batch(own_pool, 5000)
    async with own_pool.acquire() as conn, conn.transaction():
        # A queue full of receipts, as at full rate.
        await conn.execute(
            "INSERT INTO receipt_queue (carrier_sid, status)"
            " SELECT 'SM' || md5(g::text), 'delivered' FROM generate_series(1, 5000) AS g"
        )
        # Planned as the applier plans it: for each call (apply_queued).
        await conn.execute(receipts.PLAN_EACH_CALL_IN_TRANSACTION)
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {receipts.CLAIM}", 1000)

    # Whether the claimed receipts' messages are final: one read of the ledger, by all their
    # sids at once, never a read for each receipt (by its own sid, d.carrier_sid).
    [found] = _ledger_indexes(json.loads(plan)[0]["Plan"])
    assert found == "messages_carrier_sid", plan
    assert "carrier_sid = ANY ((InitPlan" in plan, plan
    assert "d.carrier_sid" not in plan, plan


async def test_a_waves_outcomes_look_their_receipts_up_once_not_row_by_row(
    pool: asyncpg.Pool,
) -> None:
    recording = _Recording(pool)
    outcomes = [
        messages.Outcome(seq=seq, status=LedgerStatus.SENT, carrier_sid=f"SM{uuid.uuid4().hex}")
        for seq in range(SLICE)
    ]

    await messages.write_outcomes(cast(asyncpg.Pool, recording), uuid.uuid4(), outcomes)

    sql, args = recording.statements[0]
    plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    lookups = _receipt_lookups(json.loads(plan)[0]["Plan"])
    # Each receipt table is searched for all the wave's sids at once (by its sid index, or,
    # while it is small, read whole), never once for each outcome's sid (`o.sid`).
    assert lookups, plan
    assert not [cond for cond in lookups if "o.sid" in cond], lookups


async def test_statistics_older_than_the_sends_never_make_a_sid_lookup_read_every_sent_row(
    own_pool: asyncpg.Pool,
) -> None:
    """Validation samples a batch's ledger columns before any row has a sid; until autovacuum
    samples them again, the planner thinks no row has one. The index of sent rows by number
    (messages_sent_to) then looked free for every lookup by sid, whose condition implied its
    predicate, and each such lookup read every sent row of the ledger instead."""
    pool = own_pool
    batch_id = await _sent_batch(pool, ROWS)
    sids = [_sid(seq) for seq in range(SLICE)]
    await pool.execute(
        "INSERT INTO receipt_queue (carrier_sid, status) SELECT unnest($1::text[]), 'delivered'",
        sids,
    )
    intake, worker = _Statement(), _Statement()
    await receipts.take_receipts(
        cast(asyncpg.Connection, intake), [receipts.Receipt(s, "delivered", None) for s in sids]
    )
    await messages.apply_kept_receipts(cast(asyncpg.Pool, worker), batch_id, sids)
    applier_move = receipts.move_ledger(receipts.CLAIMED_FIRST, "l.carrier_sid = ANY($1::text[])")
    statements = [
        (receipts.CLAIM, (1000,)),
        (intake.sql, intake.args),
        (worker.sql, worker.args),
        (applier_move, (sids, ["delivered"] * SLICE, [None] * SLICE)),
    ]

    for sql, args in statements:
        for mode in ("force_custom_plan", "force_generic_plan"):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
            found = [
                i for i in _ledger_indexes(json.loads(plan)[0]["Plan"]) if i != "messages_pkey"
            ]
            # By the sids' index, searched for the sids (not read whole).
            assert found == ["messages_carrier_sid"], (mode, plan)
            assert '"Index Cond": "(carrier_sid = ' in plan, (mode, plan)


async def test_the_intake_probes_the_queue_by_sid_whatever_plan_it_made_while_it_was_empty(
    own_database: str,
) -> None:
    """The intake's statement probes the queue for each receipt whose message holds its sid.
    The intake keeps one plan of it (receipts.INTAKE_PLANS); made while the queue was empty,
    a plan free to scan read the whole queue for each probe once it had filled."""
    async with (
        await create_pool(own_database, min_size=1, max_size=1) as pool,
        await create_pool(own_database, min_size=1, max_size=1) as other,
    ):
        await _sent_batch(pool, 2_000)
        await pool.execute("VACUUM ANALYZE receipt_queue")
        intake = ReceiptIntake(pool)
        try:
            # One statement each while the queue is empty: every message holds its sid.
            for seq in range(10):
                await intake.put(receipts.Receipt(_sid(seq), "delivered", None))
            # Then the queue fills, most of its rows taken off already (dead until a vacuum).
            await other.execute(
                "INSERT INTO receipt_queue (carrier_sid, status)"
                " SELECT 'SX' || g, 'delivered' FROM generate_series(1, 30000) AS g"
            )
            await other.execute("DELETE FROM receipt_queue WHERE carrier_sid < 'SX3'")
            before = await _counted(other, QUEUE_ROWS_SCANNED)

            await asyncio.gather(
                *(
                    intake.put(receipts.Receipt(_sid(seq), "delivered", None))
                    for seq in range(10, 40)
                )
            )
        finally:
            await intake.close()

        async with pool.acquire() as conn:
            scanned = await _counted(conn, QUEUE_ROWS_SCANNED) - before
            delivered = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE status = 'delivered'"
            )
            given_back = [
                await conn.fetchval("SHOW plan_cache_mode"),
                await conn.fetchval("SHOW enable_seqscan"),
            ]
    assert delivered == 40
    # The pool keeps sessions as they are: the intake resets what it set.
    assert given_back == ["auto", "on"]
    # By the sid index: no row of the queue read by a scan of it (the kept plan read its
    # live rows once for each of the 30 receipts).
    assert scanned == 0, scanned


async def test_the_claim_reads_a_few_blocks_a_receipt_while_statistics_count_the_queue_as_one(
    own_pool: asyncpg.Pool,
) -> None:
    """Autovacuum samples the queue when it is all but empty, then thousands of receipts
    come: the planner counts them as one row. A claim planned on that count joined its rows
    to the queue row by row (a minute for 1,000 receipts here)."""
    pool = own_pool
    # Statistics of 250 pages holding one row; then 2,000 receipts, for 1,900 sids.
    await pool.execute(
        "INSERT INTO receipt_queue (carrier_sid, status)"
        " SELECT 'SX' || g, 'delivered' FROM generate_series(1, 30000) AS g"
    )
    await pool.execute("DELETE FROM receipt_queue WHERE id < (SELECT max(id) FROM receipt_queue)")
    await pool.execute("VACUUM ANALYZE receipt_queue")
    await pool.execute(
        "INSERT INTO receipt_queue (carrier_sid, status)"
        " SELECT 'SY' || g % 1900, 'delivered' FROM generate_series(1, 2000) AS g"
    )
    counted = await pool.fetchval(
        "SELECT reltuples FROM pg_class WHERE oid = 'receipt_queue'::regclass"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(receipts.PLAN_EACH_CALL_IN_TRANSACTION)
        # A guard only: the old claim ran for over a minute.
        await conn.execute("SET LOCAL statement_timeout = '30s'")
        plan = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {receipts.CLAIM}", 1000
        )
        await conn.execute("ROLLBACK AND CHAIN")

    top = json.loads(plan)[0]["Plan"]
    assert counted <= 1
    # The oldest 1,000, none behind an earlier receipt of its sid (100 of their sids have a
    # later one), are all taken, at a few blocks each.
    assert top["Actual Rows"] == 1000, plan
    assert top["Shared Hit Blocks"] + top.get("Shared Read Blocks", 0) < 20 * 1000, plan


async def test_a_waves_outcomes_search_the_receipt_indexes_for_the_wave_not_for_each_outcome(
    own_pool: asyncpg.Pool,
) -> None:
    """The worker's connection keeps a generic plan of the outcomes' statement (forced here).
    Counting ten outcomes and one ledger row of them, such a plan joined the outcomes to the
    receipt lookup by a nested loop that ran it again for each outcome, each time searching
    the sid indexes for all the wave's sids."""
    pool = own_pool
    batch_id = await _validated_batch(pool, ROWS)
    # The ledger's other rows sent and final, receipts of sids no row holds kept and waiting
    # in the queue, as in a long run; sampled.
    await pool.execute(
        "UPDATE messages SET status = 'delivered', carrier_sid = 'SD' || seq"
        " WHERE batch_id = $1 AND seq >= $2",
        batch_id,
        SLICE,
    )
    await pool.execute(
        "INSERT INTO receipt_queue (carrier_sid, status)"
        " SELECT 'SX' || g, 'delivered' FROM generate_series(1, 3000) AS g"
    )
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status)"
        " SELECT 'SK' || g, 'delivered' FROM generate_series(1, 3000) AS g"
    )
    await pool.execute("ANALYZE")
    seqs = list(range(SLICE))
    async with pool.acquire() as conn:
        await messages.write_outcomes(cast(asyncpg.Pool, conn), batch_id, [], mark=seqs)
        # A fifth of the wave's receipts came before their sids: they wait in the queue.
        await receipts.queue_receipts(
            conn, [receipts.Receipt(_sid(seq), "delivered", None) for seq in seqs[::5]]
        )
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        before = await _counted(conn, RECEIPT_SEARCHES)
        written = await messages.write_outcomes(
            cast(asyncpg.Pool, conn),
            batch_id,
            [messages.Outcome(seq, LedgerStatus.SENT, _sid(seq)) for seq in seqs],
        )
        searches = await _counted(conn, RECEIPT_SEARCHES) - before
        await conn.execute("RESET plan_cache_mode")

    assert len(written.unsettled) == SLICE - SLICE // 5
    # A few searches for the whole wave, whatever its plan (PostgreSQL counts one for each
    # stretch of an index a search of many sids reads): the nested loop made 105 here.
    assert searches < SLICE // 10, searches


async def test_the_applier_commits_without_waiting_for_its_wal_to_be_flushed(
    own_database: str, own_pool: asyncpg.Pool
) -> None:
    """A commit that waits for its WAL writes (and flushes) it itself; the applier's leaves it
    to the WAL writer: what it commits is redone from the queue if a crash loses it. Here as
    the local stack's cluster commits (this one does not wait by default)."""
    async with await create_pool(own_database, min_size=1, max_size=1) as applier:
        # The pool keeps a session's settings (store.db._keep_session).
        await applier.execute("SET synchronous_commit = on")
        start = await backend_wal_writes(applier, own_pool)
        # Receipts of sids no ledger row holds (their sends' outcomes not written yet): kept.
        sids = [f"SW{n}" for n in range(50)]
        await receipts.queue_receipts(
            applier, [receipts.Receipt(sid, "delivered", None) for sid in sids]
        )
        queued = await backend_wal_writes(applier, own_pool)
        taken = await receipts.apply_queued(applier, 1000)
        applied = await backend_wal_writes(applier, own_pool)
    kept = await own_pool.fetchval(
        "SELECT count(*) FROM carrier_receipts WHERE carrier_sid = ANY($1::text[])", sids
    )

    assert (len(taken), kept) == (50, 50)
    # The queueing's commit waited and wrote its WAL; the applier's did not.
    assert queued > start
    assert applied == queued


async def test_whether_a_batch_has_uncertain_rows_is_answered_without_reading_the_ledger(
    own_pool: asyncpg.Pool,
) -> None:
    """Every batch asks, as it ends, whether reconciliation has work. Asked of the ledger,
    the question read the batch's rows at best (80 here), and in `make bench`'s sweep the
    whole ledger, every batch's rows (36,000 blocks and 81 ms at 600,000 rows). The batch's
    kept counts (migration 211) answer it without reading the ledger."""
    pool = own_pool
    await _sent_batch(pool, ROWS)
    small = await _sent_batch(pool, 10)
    before = await _counted(pool, LEDGER_READS)

    # From the sixth call on, a pool's connection may run a generic plan of it.
    found = [await messages.rows_to_settle(pool, small, stopped=False) for _ in range(8)]
    await pool.execute(
        "UPDATE messages SET status = 'uncertain' WHERE batch_id = $1 AND seq = 3", small
    )
    found.append(await messages.rows_to_settle(pool, small, stopped=False))

    assert found == [False] * 8 + [True]
    # The UPDATE's own read, by key: one row. No other read of the ledger.
    assert await _counted(pool, LEDGER_READS) - before == 1


@pytest.mark.parametrize("pending_as", [None, LedgerStatus.CANCELLED])
async def test_closing_a_ledger_with_no_row_left_to_close_reads_none_of_it(
    own_pool: asyncpg.Pool, pending_as: LedgerStatus | None
) -> None:
    """Every batch closes its ledger as it ends: rows still `sending` become `uncertain`,
    and a cancelled batch's `pending` rows its final status. Most batches end with none of
    either, and the kept counts say so: its ledger, a whole batch's rows (or more, by a
    sequential scan), is then not read. A batch with such rows has them closed."""
    pool = own_pool
    await _sent_batch(pool, ROWS)
    done, left = await _sent_batch(pool, 10), await _sent_batch(pool, 10)
    await pool.execute(
        "UPDATE messages SET status = CASE WHEN seq = 1 THEN 'sending' ELSE 'pending' END"
        " WHERE batch_id = $1 AND seq IN (1, 2)",
        left,
    )
    before = await _counted(pool, LEDGER_READS)

    for _ in range(8):
        await messages.close_ledger(pool, done, pending_as=pending_as)
    read = await _counted(pool, LEDGER_READS) - before
    await messages.close_ledger(pool, left, pending_as=pending_as)

    assert read == 0
    assert await messages.count_by_status(pool, done) == {"sent": 10}
    assert await messages.count_by_status(pool, left) == {
        "sent": 8,
        "uncertain": 1,
        pending_as or "pending": 1,
    }


async def test_a_replys_last_batch_message_is_read_by_number_and_account_newest_first(
    pool: asyncpg.Pool, account: Account
) -> None:
    """Each inbound message looks up its user's last batch message from its sender: by the
    index of sent rows by number alone, every sent row to the number, every account's, was
    read and sorted. By number, account and time, newest first, no sort: the read stops at
    the first row from the sender."""
    async with pool.acquire() as conn, conn.transaction():
        # As on a ledger of millions of rows, where reading it all is never the cheaper way.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {messages.LAST_SENT_TO}",
            account.account_id,
            account.agent_number,
            "+12015550123",
        )

    tree = json.loads(plan)[0]["Plan"]
    assert _ledger_indexes(tree) == ["messages_sent_to_account"], plan
    assert '"Sort"' not in plan, plan


async def test_a_users_conversations_are_read_by_their_own_index_newest_first(
    pool: asyncpg.Pool, account: Account
) -> None:
    """`GET /v1/sms/conversations?user_number=`: its statement held every filter as
    `($3 IS NULL OR user_number = $3)`, which the generic plan a pooled connection settles on
    cannot serve by an index: all of the account's conversations were read until a page was
    full. Only the filters given are in it, and the user's are read by their index, in order."""
    recording = _Recording(pool)
    await conversations.list_conversations(
        cast(asyncpg.Pool, recording),
        account.account_id,
        agent_number=None,
        user_number="+12015550123",
        state=None,
        limit=10,
        after=None,
    )
    [(sql, args)] = recording.statements
    plan = await _generic_plan(pool, sql, args)

    assert '"Index Name": "conversations_account_user"' in plan, plan
    assert '"Sort"' not in plan, plan


async def _generic_plan(pool: asyncpg.Pool, sql: str, args: tuple[Any, ...]) -> str:
    """The plan of `sql` prepared, as a pooled connection runs it after five calls: generic,
    its parameters unknown (EXPLAIN of the statement with its values bound plans it for them),
    a read of the whole table the last resort."""
    async with pool.acquire() as conn, conn.transaction():
        types = [t.name for t in (await conn.prepare(sql)).get_parameters()]
        await conn.execute(f"PREPARE planned ({', '.join(types)}) AS {sql}")
        try:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute("SET LOCAL enable_seqscan = off")
            values = [
                await conn.fetchval(
                    "SELECT quote_nullable($1::text)", None if arg is None else str(arg)
                )
                for arg in args
            ]
            plan: str = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE planned({', '.join(values)})"
            )
        finally:
            await conn.execute("DEALLOCATE planned")
    return plan


async def test_a_page_read_backwards_bounds_the_ledger_read_by_its_cursor(
    pool: asyncpg.Pool, account: Account
) -> None:
    """A Postman page before a cursor (`before`): `($6 IS NULL OR seq < $6)` bounded no index
    read in the generic plan, which read the batch's ledger down from its last row to the
    cursor. The bound is the index's."""
    recording = _Recording(pool)
    await messages.list_messages(
        cast(asyncpg.Pool, recording),
        account.account_id,
        uuid.uuid4(),
        status=None,
        limit=100,
        after_seq=-1,
        before_seq=500,
    )
    [(sql, args)] = recording.statements
    plan = await _generic_plan(pool, sql, args)

    [read] = [
        node
        for node in databases.plan_nodes(json.loads(plan)[0]["Plan"])
        if node.get("Relation Name") == "messages"
    ]
    assert "seq < " in read.get("Index Cond", ""), plan
