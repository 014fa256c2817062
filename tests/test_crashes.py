"""Crashes mid-batch, with real processes: a worker SIGKILLed and started again, a crash between
the carrier's acceptance and the ledger write, and Temporal and PostgreSQL restarted under a
running batch. Each batch completes; no number is sent twice; every row ends in one terminal
state. A row whose send may have reached the carrier is `uncertain` until the batch ends; then
reconciliation asks the carrier, and the row is `sent` with the carrier's sid, or sent by the
batch if the carrier never got it."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client

from deploy.local.emulator import NO_ANSWER
from deploy.local.postgres import dsn, postgres_process, postgres_ready
from deploy.local.processes import ManagedProcess, free_port
from deploy.local.temporal import temporal_process, temporal_ready
from settings import Settings
from store import numbers
from store.accounts import create_account, create_api_key
from store.db import create_pool
from tests.support.answer_lost import answer_lost
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.delivery import (
    assert_each_row_once,
    ledger_rows,
    own_worker,
    received,
    terminate_once_started,
    wait_until_received,
)
from tests.support.stack import Account, Configure, WebhookReceiver, api_client
from tests.support.workers import crash_settings, worker_process
from workflows.contracts import batch_workflow_id


@asynccontextmanager
async def two_workers(
    own: Settings, tmp_path: Path
) -> AsyncIterator[tuple[ManagedProcess, ManagedProcess]]:
    """A worker process started, and a second one to start once the first is crashed."""
    first = worker_process(own, tmp_path / "worker-1.log").start()
    second = worker_process(own, tmp_path / "worker-2.log")
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


def crash(process: ManagedProcess) -> None:
    """SIGKILL the process and its group at once: no shutdown code of theirs runs."""
    assert process.process is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.process.wait()


async def batch_counts(api: httpx.AsyncClient, account: Account, file_id: str) -> dict[str, int]:
    response = await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)
    return response.json()["data"]["counts"]


async def test_workers_killed_three_times_in_one_batch_leave_nothing_uncertain(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    rows_total = 2000
    await carrier(latency_ms=500)
    own = crash_settings(settings)
    workers = [worker_process(own, tmp_path / f"worker-{n}.log") for n in range(4)]
    workers[0].start()
    at_crash: list[set[str]] = []
    try:
        async with api_client(own) as api:
            file_id, marker = await start_marked_batch(
                api, account, webhooks, unique_numbers(rows_total)
            )
            for kill, at in enumerate((300, 800, 1300)):
                await wait_until_received(emulator_url, marker, at)
                crash(workers[kill])
                at_crash.append({r["status"] for r in await ledger_rows(api, account, file_id)})
                if kill == 2:
                    # The rest after the last kill need no slow answers.
                    await carrier(latency_ms=0)
                workers[kill + 1].start()
            final = (await webhooks.wait_for(marker, *FINAL))[-1]
            rows = await ledger_rows(api, account, file_id)
            counts = await batch_counts(api, account, file_id)
    finally:
        for worker in workers:
            worker.stop()

    on_carrier = await received(emulator_url, marker)
    statuses = assert_each_row_once(rows, on_carrier, rows_total)
    # Each killed worker had requests on the wire; they were `uncertain`, and reconciliation
    # found each on the carrier (or sent it, if the carrier never got it): every row `sent`,
    # once, with the carrier's sid.
    # Rows go `sending` in waves just before the wire: a kill may fall between two waves.
    assert any("sending" in seen for seen in at_crash), at_crash
    left = [r for r in rows if r["status"] != "sent"]
    assert statuses == {"sent": rows_total}, left[:5]
    assert len(on_carrier) == rows_total
    assert {r["to_number"]: r["carrier_sid"] for r in rows} == {
        m["to"]: m["sid"] for m in on_carrier
    }
    assert final["status"] == "completed"
    assert (final["messages_successful"], final["messages_uncertain"]) == (rows_total, 0)
    assert counts == {"sent": rows_total, "rejected": 0}


async def test_a_worker_killed_mid_slice_leaves_only_its_requests_in_flight_uncertain(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    # One slice of 250 rows on 5 lanes, each answer 300 ms away: the worker dies with about
    # 20 sent and 230 not yet sent.
    rows_total, lanes = 250, 5
    await carrier(latency_ms=300)
    own = crash_settings(settings, send_concurrency=lanes)
    async with two_workers(own, tmp_path) as (first, second), api_client(own) as api:
        file_id, marker = await start_marked_batch(
            api, account, webhooks, unique_numbers(rows_total)
        )
        await wait_until_received(emulator_url, marker, 20)
        crash(first)
        at_crash = {r["to_number"]: r["status"] for r in await ledger_rows(api, account, file_id)}
        # The rest need no slow answers: sent quickly, not in 15 s.
        await carrier(latency_ms=0)
        second.start()
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        rows = await ledger_rows(api, account, file_id)

    in_flight = [n for n, status in at_crash.items() if status == "sending"]
    # The rows marked `sending` are those about to go on the wire: a wave of `lanes` rows
    # while the one before it is still in flight, never the whole slice. Only they become
    # `uncertain` for the next attempt, and reconciliation settles them as the batch ends.
    assert 0 < len(in_flight) <= 2 * lanes
    assert assert_each_row_once(rows, await received(emulator_url, marker), rows_total) == {
        "sent": rows_total
    }
    assert (final["status"], final["messages_uncertain"]) == ("completed", 0)
    # One attempt a row; a row in flight that the carrier never got is sent once more.
    assert all(r["attempts"] == 1 for r in rows if at_crash[r["to_number"]] != "sending")
    assert all(r["attempts"] in (1, 2) for r in rows)


async def test_a_crash_after_the_carrier_accepted_is_reconciled_not_sent_twice(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    # One slice of 40, all on the wire at once; answers come over 3 s, and the slice writes
    # its outcomes only when the last is in. The worker dies once the carrier took a few:
    # the carrier has some of the 40, and the ledger knows none of their sids.
    await carrier(latency_ms=200, latency_jitter_ms=3000)
    own = crash_settings(settings)
    numbers = unique_numbers(40)
    async with two_workers(own, tmp_path) as (first, second), api_client(own) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await wait_until_received(emulator_url, marker, 5)
        crash(first)
        accepted_before_crash = {m["to"] for m in await received(emulator_url, marker)}
        ledger_at_crash = await ledger_rows(api, account, file_id)
        second.start()
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        rows = await ledger_rows(api, account, file_id)
        on_carrier = await received(emulator_url, marker)

    assert {r["status"] for r in ledger_at_crash} == {"sending"}
    assert 5 <= len(accepted_before_crash) < 40
    assert assert_each_row_once(rows, on_carrier, 40) == {"sent": 40}
    sids = {m["to"]: m["sid"] for m in on_carrier}
    assert {r["to_number"]: r["carrier_sid"] for r in rows} == sids
    assert (final["status"], final["messages_successful"], final["messages_uncertain"]) == (
        "completed",
        40,
        0,
    )


async def restart(process: ManagedProcess, ready: Callable[[], bool], down: float) -> None:
    """Crash `process`, leave it down `down` seconds, start it again on the same data and
    port."""
    crash(process)
    await asyncio.sleep(down)
    process.start()
    await asyncio.to_thread(process.wait_until, ready, 60)


async def new_account(settings: Settings, mps: float | None = None) -> Account:
    pool = await create_pool(settings.dsn)
    try:
        account_id = await create_account(pool, "crash test")
        key = await create_api_key(pool, account_id)
        sender = unique_numbers(1)[0]
        await numbers.add_number(pool, account_id, sender, "sms", mps)
    finally:
        await pool.close()
    return Account(account_id=account_id, key=key.key, agent_number=sender)


@asynccontextmanager
async def own_postgres(tmp_path: Path) -> AsyncIterator[tuple[ManagedProcess, int]]:
    """A PostgreSQL of the test's own and its port, so that the session's is never restarted;
    durable, unlike the session's: a crash must not lose committed transactions."""
    port = free_port()
    pg = postgres_process(tmp_path / "pg", port, tmp_path / "pg.log")
    try:
        pg.start()
        await asyncio.to_thread(pg.wait_until, lambda: postgres_ready(port), 60)
        yield pg, port
    finally:
        pg.stop()


async def restart_postgres(pg: ManagedProcess, port: int, down: float) -> None:
    """Stop PostgreSQL as a crash would, leave it down `down` seconds, start it again. Its
    immediate shutdown (SIGQUIT) ends every backend at once with no checkpoint; a SIGKILL of
    the postmaster alone would not (each backend leads a process group of its own), and the
    connections open would go on working for a while."""
    assert pg.process is not None
    pg.process.send_signal(signal.SIGQUIT)
    await asyncio.to_thread(pg.process.wait)
    await asyncio.sleep(down)
    pg.start()
    await asyncio.to_thread(pg.wait_until, lambda: postgres_ready(port), 60)


async def test_temporal_and_postgres_restarted_mid_batch_and_the_batch_completes(
    settings: Settings,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    rows_total = 2000
    # Outside the ephemeral range (free_port): no connection takes it while the server is
    # down, so the restart below binds it again. A Temporal of its own, as own_postgres.
    temporal_port = free_port()
    server = temporal_process(
        port=temporal_port,
        ui_port=None,
        db_file=tmp_path / "temporal.sqlite",
        log_path=tmp_path / "temporal.log",
    )
    async with own_postgres(tmp_path) as (pg, pg_port):
        own = crash_settings(
            settings,
            database_url=SecretStr(dsn(pg_port)),
            temporal_address=f"127.0.0.1:{temporal_port}",
        )
        worker = worker_process(own, tmp_path / "worker.log")
        try:
            server.start()
            await asyncio.to_thread(server.wait_until, lambda: temporal_ready(temporal_port), 60)
            worker.start()
            await carrier(latency_ms=1000)
            async with api_client(own) as api:
                account = await new_account(own)
                file_id, marker = await start_marked_batch(
                    api, account, webhooks, unique_numbers(rows_total)
                )
                await wait_until_received(emulator_url, marker, 200)
                await restart(server, lambda: temporal_ready(temporal_port), down=1)
                await wait_until_received(emulator_url, marker, 1000)
                at_postgres_crash = len(await received(emulator_url, marker))
                # Down long enough for some slices to end, and wait to record, meanwhile.
                await restart(pg, lambda: postgres_ready(pg_port), down=3)
                final = (await webhooks.wait_for(marker, *FINAL))[-1]
                rows = await ledger_rows(api, account, file_id)
                counts = await batch_counts(api, account, file_id)
        finally:
            worker.stop()
            server.stop()

    statuses = assert_each_row_once(rows, await received(emulator_url, marker), rows_total)
    assert at_postgres_crash < rows_total - 500
    assert set(statuses) <= {"sent", "uncertain"}
    assert final["status"] in ("completed", "completed_partial")
    assert (final["messages_successful"], final["messages_uncertain"]) == (
        statuses["sent"],
        statuses["uncertain"],
    )
    assert counts == {**statuses, "rejected": 0}


async def test_postgres_restarted_under_a_paced_slice_leaves_no_row_uncertain(
    temporal: Client,
    settings: Settings,
    webhooks: WebhookReceiver,
    emulator_url: str,
    tmp_path: Path,
) -> None:
    # A sender limited to 20 messages a second, sent on 4 lanes: its slice asks PostgreSQL
    # for send times every 0.2 s, so PostgreSQL going down mid-slice finds the pacer asking.
    rows_total = 80
    async with (
        own_postgres(tmp_path) as (pg, pg_port),
        own_worker(
            temporal, settings, database_url=SecretStr(dsn(pg_port)), send_concurrency=4
        ) as own,
        api_client(own) as api,
    ):
        account = await new_account(own, mps=20)
        file_id, marker = await start_marked_batch(
            api, account, webhooks, unique_numbers(rows_total)
        )
        await wait_until_received(emulator_url, marker, 10)
        await restart_postgres(pg, pg_port, down=2)
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        rows = await ledger_rows(api, account, file_id)

    statuses = assert_each_row_once(rows, await received(emulator_url, marker), rows_total)
    assert statuses == {"sent": rows_total}
    assert final["status"] == "completed"
    # The slice rode the outage out: no row was claimed by a second attempt.
    assert all(r["attempts"] == 1 for r in rows)


@pytest.mark.parametrize("nth", [1, 2])
async def test_a_waves_write_whose_answer_is_lost_still_sends_its_rows_once(
    temporal: Client, settings: Settings, webhooks: WebhookReceiver, emulator_url: str, nth: int
) -> None:
    """PostgreSQL commits a wave's write (the first, which marks a wave `sending`; the
    second, which also writes the outcomes of the first), then the connection closes before
    its answer comes back, as a restart can close it. The sender runs the write again
    (through_outages). That second run must know the marks its first run made as its own:
    before, it took the rows for another attempt's and never sent them, and they ended
    `uncertain`, or were sent again after reconciliation."""
    rows_total = 40
    address = urlsplit(settings.dsn)
    assert address.hostname is not None and address.port is not None
    async with answer_lost((address.hostname, address.port), b"marked AS (UPDATE", nth) as proxy:
        userinfo, _, _ = address.netloc.rpartition("@")
        query = "&".join(q for q in (address.query, "sslmode=disable") if q)
        proxied = address._replace(
            netloc=f"{userinfo}@127.0.0.1:{proxy.port}", query=query
        ).geturl()
        async with (
            own_worker(
                temporal, settings, database_url=SecretStr(proxied), send_concurrency=4
            ) as own,
            api_client(own) as api,
        ):
            account = await new_account(own)
            file_id, marker = await start_marked_batch(
                api, account, webhooks, unique_numbers(rows_total)
            )
            final = (await webhooks.wait_for(marker, *FINAL))[-1]
            rows = await ledger_rows(api, account, file_id)

    assert proxy.lost.is_set()
    statuses = assert_each_row_once(rows, await received(emulator_url, marker), rows_total)
    assert statuses == {"sent": rows_total}
    assert final["status"] == "completed"
    # Each row was sent by the attempt that marked it, the first: none went through
    # reconciliation to be sent again.
    assert all(r["attempts"] == 1 for r in rows)


async def test_a_chunk_terminated_through_temporal_leaves_no_row_behind(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # Chunk workflows of 10 rows, one at a time, a slice of 5 at a time; the second is
    # terminated (the web UI's Terminate) while it sends its first slice. The rows of its
    # second stayed `pending` for good, and the batch ended `completed` all the same.
    await carrier(latency_ms=200)
    numbers = unique_numbers(30)
    async with (
        own_worker(
            temporal,
            settings,
            inline_slices=1,
            chunk_size=10,
            slice_size=5,
            chunk_window=1,
            slices_in_flight=1,
        ) as own,
        api_client(own) as api,
    ):
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await wait_until_received(emulator_url, marker, 12)
        await temporal.get_workflow_handle(f"{batch_workflow_id(file_id)}/chunk-1").terminate()
        events = await webhooks.wait_for(marker, *FINAL)
        rows = await ledger_rows(api, account, file_id)
    statuses = assert_each_row_once(rows, await received(emulator_url, marker), len(numbers))

    assert statuses == {"sent": len(numbers)}
    assert events[-1]["status"] == "completed"


async def test_a_reconciled_chunk_terminated_through_temporal_still_ends_the_batch(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # One request is lost (no answer, nothing kept): reconciliation sends it again in the
    # `reconciled` chunk, which is terminated while that send is on the wire (1.5 s). The
    # batch failed with it, no final event, its ledger never closed.
    numbers = unique_numbers(4)
    await carrier(latency_ms=1500, scripted={numbers[0]: [NO_ANSWER]})
    async with (
        own_worker(temporal, settings, carrier_timeout_seconds=3.0) as own,
        api_client(own) as api,
    ):
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await terminate_once_started(temporal, f"{batch_workflow_id(file_id)}/reconciled")
        events = await webhooks.wait_for(marker, *FINAL)
        rows = await ledger_rows(api, account, file_id)
    statuses = assert_each_row_once(rows, await received(emulator_url, marker), len(numbers))

    assert statuses == {"sent": len(numbers)}
    assert events[-1]["status"] == "completed"
