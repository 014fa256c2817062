"""Crashes mid-batch, with real processes: a worker SIGKILLed and started again, a crash between
the carrier's acceptance and the ledger write, and Temporal and PostgreSQL restarted under a
running batch. Each batch completes; no number is sent twice; every row ends in one terminal
state, and a row whose send may have reached the carrier is `uncertain`, never sent again
unless asked."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr
from temporalio.client import Client

from deploy.local.postgres import dsn, postgres_process, postgres_ready
from deploy.local.processes import ManagedProcess, free_port
from deploy.local.temporal import temporal_process, temporal_ready
from settings import Settings
from store import numbers
from store.accounts import create_account, create_api_key
from store.db import create_pool
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.delivery import (
    assert_each_row_once,
    ledger_rows,
    own_worker,
    received,
    wait_until_received,
)
from tests.support.stack import Account, Configure, WebhookReceiver, api_client
from tests.support.workers import crash_settings, worker_process


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


async def test_a_worker_killed_mid_batch_is_replaced_and_no_number_is_sent_twice(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    rows_total = 1500
    await carrier(latency_ms=500)
    own = crash_settings(settings)
    async with two_workers(own, tmp_path) as (first, second), api_client(own) as api:
        file_id, marker = await start_marked_batch(
            api, account, webhooks, unique_numbers(rows_total)
        )
        await wait_until_received(emulator_url, marker, 300)
        crash(first)
        at_crash = {r["to_number"]: r["status"] for r in await ledger_rows(api, account, file_id)}
        second.start()
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        rows = await ledger_rows(api, account, file_id)
        counts = await batch_counts(api, account, file_id)

    statuses = assert_each_row_once(rows, await received(emulator_url, marker), rows_total)
    # What the killed worker had on the wire is `uncertain`; the second sent the rest.
    expected = {"pending": "sent", "sending": "uncertain", "sent": "sent"}
    assert {r["to_number"]: r["status"] for r in rows} == {
        number: expected[status] for number, status in at_crash.items()
    }
    assert set(statuses) == {"sent", "uncertain"}
    assert final["status"] == "completed_partial"
    assert (final["messages_successful"], final["messages_uncertain"]) == (
        statuses["sent"],
        statuses["uncertain"],
    )
    assert counts == {**statuses, "rejected": 0}
    assert all(r["attempts"] == 1 for r in rows)


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
        second.start()
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        rows = await ledger_rows(api, account, file_id)

    statuses = assert_each_row_once(rows, await received(emulator_url, marker), rows_total)
    assert set(statuses) == {"sent", "uncertain"}
    # The rows marked `sending` are those about to go on the wire: a wave of `lanes` rows
    # while the one before it is still in flight, never the whole slice.
    assert statuses["uncertain"] <= 2 * lanes
    assert final["messages_uncertain"] == statuses["uncertain"]
    assert all(r["attempts"] == 1 for r in rows)


async def test_a_crash_after_the_carrier_accepted_leaves_rows_uncertain_not_sent_twice(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    # One slice of 40, all on the wire at once; answers come over 3 s, and the slice writes
    # its outcomes only when the last is in. The worker dies once the carrier took a few.
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
        before_retry = await received(emulator_url, marker)
        await carrier(latency_ms=0, latency_jitter_ms=0)
        retry = await api.post(
            f"/v1/sms/batch/{file_id}/retry",
            headers=account.headers,
            json={"statuses": ["uncertain"]},
        )
        retried = (await webhooks.wait_for(marker, *FINAL, times=2))[-1]
        after_retry = await ledger_rows(api, account, file_id)

    assert {r["status"] for r in ledger_at_crash} == {"sending"}
    assert 5 <= len(accepted_before_crash) < 40
    statuses = assert_each_row_once(rows, before_retry, 40)
    assert statuses == {"uncertain": 40}
    uncertain = {r["to_number"] for r in rows if r["status"] == "uncertain"}
    assert accepted_before_crash <= uncertain
    assert (final["status"], final["messages_uncertain"]) == ("completed_partial", 40)
    # Sent again only on request, and then to every one of them.
    assert retry.json()["data"]["rows"] == 40
    assert retried["messages_successful"] == 40
    assert {r["status"] for r in after_retry} == {"sent"}
    again = await received(emulator_url, marker)
    assert sorted(m["to"] for m in again) == sorted(numbers * 2)


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
    temporal_port = free_port()
    # A Temporal of its own too, for the same reasons.
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
