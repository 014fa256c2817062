"""Crashes mid-batch, with real processes: a worker SIGKILLed and started again, a crash between
the carrier's acceptance and the ledger write, and Temporal and PostgreSQL restarted under a
running batch. Each batch completes; no number is sent twice; every row ends in one terminal
state. A row whose send may have reached the carrier is `uncertain` until the batch ends; then
reconciliation asks the carrier, and the row is `sent` with the carrier's sid, or sent by the
batch if the carrier never got it."""

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import SecretStr

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
    received,
    wait_until_received,
)
from tests.support.stack import Account, Configure, WebhookReceiver, api_client
from tests.support.workers import crash_settings, worker_process


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
    assert all("sending" in seen for seen in at_crash), at_crash
    left = [r for r in rows if r["status"] != "sent"]
    assert statuses == {"sent": rows_total}, left[:5]
    assert len(on_carrier) == rows_total
    assert {r["to_number"]: r["carrier_sid"] for r in rows} == {
        m["to"]: m["sid"] for m in on_carrier
    }
    assert final["status"] == "completed"
    assert (final["messages_successful"], final["messages_uncertain"]) == (rows_total, 0)
    assert counts == {"sent": rows_total, "rejected": 0}


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
    first = worker_process(own, tmp_path / "worker-1.log").start()
    second = worker_process(own, tmp_path / "worker-2.log")
    try:
        async with api_client(own) as api:
            file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
            await wait_until_received(emulator_url, marker, 5)
            crash(first)
            accepted_before_crash = {m["to"] for m in await received(emulator_url, marker)}
            ledger_at_crash = await ledger_rows(api, account, file_id)
            second.start()
            final = (await webhooks.wait_for(marker, *FINAL))[-1]
            rows = await ledger_rows(api, account, file_id)
            on_carrier = await received(emulator_url, marker)
    finally:
        second.stop()
        first.stop()

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


async def new_account(settings: Settings) -> Account:
    pool = await create_pool(settings.dsn)
    try:
        account_id = await create_account(pool, "crash test")
        key = await create_api_key(pool, account_id)
        sender = unique_numbers(1)[0]
        await numbers.add_number(pool, account_id, sender, "sms", None)
    finally:
        await pool.close()
    return Account(account_id=account_id, key=key.key, agent_number=sender)


async def test_temporal_and_postgres_restarted_mid_batch_and_the_batch_completes(
    settings: Settings,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    tmp_path: Path,
) -> None:
    rows_total = 2000
    # Outside the ephemeral range (free_port): no connection takes them while the servers
    # are down, so the restarts below bind them again.
    pg_port, temporal_port = free_port(), free_port()
    # A stack of its own, so that the session's PostgreSQL and Temporal are never restarted;
    # durable, unlike the session's: a crash must not lose committed transactions.
    pg = postgres_process(tmp_path / "pg", pg_port, tmp_path / "pg.log")
    server = temporal_process(
        port=temporal_port,
        ui_port=None,
        db_file=tmp_path / "temporal.sqlite",
        log_path=tmp_path / "temporal.log",
    )
    own = crash_settings(
        settings,
        database_url=SecretStr(dsn(pg_port)),
        temporal_address=f"127.0.0.1:{temporal_port}",
    )
    worker = worker_process(own, tmp_path / "worker.log")
    try:
        pg.start()
        server.start()
        await asyncio.to_thread(pg.wait_until, lambda: postgres_ready(pg_port), 60)
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
        pg.stop()

    statuses = assert_each_row_once(rows, await received(emulator_url, marker), rows_total)
    assert at_postgres_crash < rows_total - 500
    assert set(statuses) <= {"sent", "uncertain"}
    assert final["status"] in ("completed", "completed_partial")
    assert (final["messages_successful"], final["messages_uncertain"]) == (
        statuses["sent"],
        statuses["uncertain"],
    )
    assert counts == {**statuses, "rejected": 0}
