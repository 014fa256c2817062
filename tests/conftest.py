"""One real stack per test session: embedded PostgreSQL, the Temporal dev server, the carrier
emulator (all real processes) and an in-process worker. Tests isolate themselves by account,
ids and phone numbers, never by restarting anything."""

import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from deploy.local.emulator import Faults
from deploy.local.postgres import dsn, postgres_process, postgres_ready
from deploy.local.processes import ManagedProcess, free_port, http_ok
from deploy.local.temporal import temporal_process, temporal_ready
from deploy.search_attributes import add_request
from settings import Settings
from store.db import create_pool, migrate
from tests.support.stack import (
    AUTH_TOKEN,
    Account,
    Configure,
    WebhookPost,
    WebhookReceiver,
    api_client,
    new_account,
)
from tests.support.web import served
from tests.support.workflows import TEST_SERVER_BIN
from worker import herald_worker
from workflows.contracts import SEARCH_ATTRIBUTES

# Fixtures that start a process of the stack: a test that needs one is a `stack` test.
STACK_FIXTURES = {"postgres_dsn", "temporal_address", "emulator_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def postgres_dsn(stack_dir: Path) -> Iterator[str]:
    port = free_port()
    pg = postgres_process(stack_dir / "pg", port, stack_dir / "pg.log", ephemeral=True).start()
    try:
        pg.wait_until(lambda: postgres_ready(port), 60)
        yield dsn(port)
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def temporal_address(stack_dir: Path) -> Iterator[str]:
    port = free_port()
    server = temporal_process(port=port, ui_port=None, db_file=None, log_path=stack_dir / "t.log")
    server.start()
    try:
        server.wait_until(lambda: temporal_ready(port), 60)
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def emulator_url(stack_dir: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = ManagedProcess(
        "emulator",
        [
            sys.executable,
            "-m",
            "deploy.local.emulator",
            "--port",
            str(port),
            "--auth-token",
            AUTH_TOKEN,
            # The session's API is in-process: no callback could reach it.
            "--no-status-callbacks",
        ],
        stack_dir / "emulator.log",
    ).start()
    try:
        emulator.wait_until(lambda: http_ok(f"{url}/_emulator/health"), 30)
        yield url
    finally:
        emulator.stop()


@pytest.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server, for the fast tier: timers fire at once. One a
    test (it starts in a tenth of a second): the server keeps time from skipping while an
    activity its workflow has closed on is running, and for good once that activity ends
    (its completion refused), so such a test would stop every later test's timers."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER_BIN)
    )
    # The test server starts with none and cannot list them: add them all.
    await env.client.operator_service.add_search_attributes(
        add_request(env.client.namespace, SEARCH_ATTRIBUTES)
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def settings(
    postgres_dsn: str, temporal_address: str, emulator_url: str, stack_dir: Path
) -> Settings:
    return Settings(
        home=stack_dir,
        database_url=postgres_dsn,
        temporal_address=temporal_address,
        twilio_api_url=emulator_url,
        twilio_auth_token=AUTH_TOKEN,
        # The API runs in-process, unreachable over TCP: StatusCallback URLs name a port
        # nothing listens on, not the default one another stack on this machine may use.
        api_port=free_port(),
        task_queue=f"herald-test-{uuid.uuid4().hex[:8]}",
        chunk_size=1000,
        slice_size=250,
        # Batches of several slices run child ChunkWorkflows, the path the tests were written
        # for; those of `batch-slices-inline` (up to 100 slices by default) raise it themselves.
        inline_slices=1,
        # Hours of retries in production; a couple of seconds here.
        webhook_retry_schedule_seconds=[0.2, 0.5, 1.0],
        # The webhook receiver and the emulator listen on 127.0.0.1.
        allow_loopback_webhooks=True,
        # Tests poll and fuzz one key hard; test_limits checks the limiter with its own app.
        rate_limit_per_second=10_000,
        rate_limit_burst=10_000,
        # Seconds each reconciliation waits beyond the carrier timeout: the tests' requests
        # land within milliseconds of it.
        reconcile_margin_seconds=0.5,
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.dsn)
    await migrate(pool)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def temporal(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_target)


@pytest.fixture(scope="session")
async def worker(settings: Settings, temporal: Client) -> AsyncIterator[None]:
    """One in-process worker for the whole session, started by the first test that needs it."""
    async with herald_worker(temporal, settings) as running, running:
        yield


@pytest.fixture(scope="session")
async def api(settings: Settings, worker: None) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as client:
        yield client


@pytest.fixture
async def account(pool: asyncpg.Pool, worker: None) -> Account:
    return await new_account(pool)


@pytest.fixture
async def other_account(pool: asyncpg.Pool, worker: None) -> Account:
    """A second tenant, for what one account must not see of another's."""
    return await new_account(pool)


@pytest.fixture
async def carrier(emulator_url: str) -> AsyncIterator[Configure]:
    """Sets the emulator's faults for one test, and puts the defaults back after it."""

    async def configure(**faults: Any) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{emulator_url}/_emulator/config", json=faults)
            response.raise_for_status()

    yield configure
    await configure(**vars(Faults()))


@pytest.fixture(scope="session")
async def webhooks() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(base_url="")

    async def collect(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        queued = receiver.answers[name]
        status = queued.pop(0) if queued else 204
        async with receiver.changed:
            receiver.received[name].append(json.loads(body))
            receiver.posts[name].append(WebhookPost(dict(request.headers), body, status))
            receiver.changed.notify_all()
        headers = {"location": receiver.url("redirected")} if 300 <= status < 400 else {}
        if status in (429, 503) and name in receiver.retry_after:
            headers["retry-after"] = receiver.retry_after[name]
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/{name}", collect)
    async with served(app) as url:
        receiver.base_url = url
        yield receiver
