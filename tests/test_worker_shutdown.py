"""A worker told to stop (SIGTERM, as Kubernetes and compose do) finishes its send slice within
HERALD_WORKER_SHUTDOWN_GRACE_SECONDS before it exits."""

import asyncio
import os
import signal
from pathlib import Path
from typing import cast

import asyncpg
from temporalio.worker import Worker

from settings import Settings
from store import numbers
from store.accounts import create_account, create_api_key
from tests.support.batches import start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.delivery import received, wait_until_received
from tests.support.stack import Account, WebhookReceiver, api_client
from tests.support.workers import crash_settings, worker_process
from worker import Workers

ROWS = 40
SENDER_MPS = 10.0


async def test_a_stopping_worker_finishes_its_send_slice_before_exiting(
    settings: Settings,
    pool: asyncpg.Pool,
    webhooks: WebhookReceiver,
    emulator_url: str,
    tmp_path: Path,
) -> None:
    # One slice of 40 at 10 messages a second: 4 s of sending, one request on the wire at a
    # time; a worker cancelling it at SIGTERM would leave most of it unsent.
    sender = unique_numbers(1)[0]
    account_id = await create_account(pool, "shutdown test")
    key = await create_api_key(pool, account_id)
    await numbers.add_number(pool, account_id, sender, "sms", SENDER_MPS)
    account = Account(account_id=account_id, key=key.key, agent_number=sender)
    own = crash_settings(settings)
    worker = worker_process(own, tmp_path / "worker.log")
    assert worker.env is not None and worker.process is None
    worker.env["HERALD_WORKER_SHUTDOWN_GRACE_SECONDS"] = "30"
    worker.start()
    assert worker.process is not None
    try:
        async with api_client(own) as api:
            _, marker = await start_marked_batch(api, account, webhooks, unique_numbers(ROWS))
            await wait_until_received(emulator_url, marker, 5)
            os.killpg(worker.pid, signal.SIGTERM)
            exit_code = await asyncio.to_thread(worker.process.wait, 60)
            at_exit = len(await received(emulator_url, marker))
    finally:
        worker.stop()

    assert exit_code == 0, worker.log_tail()
    assert at_exit == ROWS


class _Draining:
    """As a Temporal worker's shutdown: it stops polling at once, then drains for a while."""

    def __init__(self, name: str, seconds: float, log: list[str]) -> None:
        self.name, self.seconds, self.log = name, seconds, log
        self._done = asyncio.Event()
        self._started = False

    async def __aenter__(self) -> "_Draining":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        if self._started:
            await self._done.wait()
            return
        self._started = True
        self.log.append(f"{self.name} stops polling")
        await asyncio.sleep(self.seconds)
        self.log.append(f"{self.name} drained")
        self._done.set()


async def test_a_process_of_both_roles_stops_polling_both_queues_at_once() -> None:
    """Its control worker must not take new work (a validation, a single send) while its send
    worker drains: both stop polling first, then both drain."""
    log: list[str] = []
    control, send = _Draining("control", 0.2, log), _Draining("send", 0.1, log)

    async with Workers(cast(list[Worker], [control, send])):
        pass

    assert set(log[:2]) == {"control stops polling", "send stops polling"}, log
    assert set(log[2:]) == {"control drained", "send drained"}, log
