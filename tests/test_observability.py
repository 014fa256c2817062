"""Metrics and logs of real processes: a worker and an API started as `make run` starts them
(on the session's PostgreSQL, Temporal and emulator, with a task queue of their own), a batch
through them, then their metrics endpoints scraped and their output read."""

import asyncio
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import asyncpg
import httpx
import pytest
import structlog
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from temporalio.testing import ActivityEnvironment

from activities.providers.in_flight import INITIAL
from activities.providers.twilio import TwilioCarrier
from activities.status_events import StatusEventActivities
from api.app import create_app
from deploy.local.processes import ManagedProcess, free_port, http_ok
from metrics import STALL_SECONDS, MetricsServer, WorkerMetrics
from settings import DEV_ACCOUNT_SID, Settings
from tests.support.batches import recorded_batch, run_batch
from tests.support.builders import unique_numbers
from tests.support.databases import blocked_behind
from tests.support.delivery import answer_when_statement_fails
from tests.support.sending import eventually, received_by, send_ok
from tests.support.stack import AUTH_TOKEN, Account, WebhookReceiver, error_code
from workflows.contracts import StatusUpdate
from workflows.statuses import BatchStatus

ROWS = 7
DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "herald-dashboard.json"
SERIES = re.compile(r"\b(?:herald|temporal)_[a-z_]+")
READY_SECONDS = 60


@dataclass
class Processes:
    api_url: str
    worker_metrics_url: str
    temporal_metrics_url: str
    worker: ManagedProcess
    api: ManagedProcess


@pytest.fixture(scope="module")
def processes(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    logs = tmp_path_factory.mktemp("observed")
    api_port, worker_port, sdk_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
        "HERALD_HOME": str(logs),
        "HERALD_DATABASE_URL": settings.dsn,
        "HERALD_TEMPORAL_ADDRESS": settings.temporal_target,
        "HERALD_TWILIO_API_URL": settings.carrier_url,
        "HERALD_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "HERALD_API_PORT": str(api_port),
        "HERALD_TASK_QUEUE": f"herald-observed-{uuid.uuid4().hex[:8]}",
        "HERALD_ALLOW_LOOPBACK_WEBHOOKS": "true",
        "HERALD_WORKER_METRICS_PORT": str(worker_port),
        "HERALD_TEMPORAL_METRICS_PORT": str(sdk_port),
    }
    worker = ManagedProcess("worker", [sys.executable, "-m", "worker"], logs / "worker.log", env)
    api = ManagedProcess(
        "api",
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "api.app:app_from_env"),
            *("--host", "127.0.0.1", "--port", str(api_port), "--no-access-log"),
        ],
        logs / "api.log",
        env,
    )
    observed = Processes(
        api_url=f"http://127.0.0.1:{api_port}",
        worker_metrics_url=f"http://127.0.0.1:{worker_port}/metrics",
        temporal_metrics_url=f"http://127.0.0.1:{sdk_port}/metrics",
        worker=worker,
        api=api,
    )
    try:
        worker.start()
        api.start()
        worker.wait_until(lambda: http_ok(f"http://127.0.0.1:{worker_port}/healthz"), READY_SECONDS)
        api.wait_until(lambda: http_ok(f"{observed.api_url}/readyz"), READY_SECONDS)
        yield observed
    finally:
        api.stop()
        worker.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= ls)


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return samples(response.text)


async def test_a_batch_shows_in_both_processes_metrics_and_json_logs(
    processes: Processes, account: Account, webhooks: WebhookReceiver
) -> None:
    async with httpx.AsyncClient(base_url=processes.api_url) as api:
        _, events = await run_batch(api, account, webhooks, unique_numbers(ROWS))
    assert events[-1]["status"] == "completed", events
    batch_id = str(events[-1]["batch_id"])

    worker = await scrape(processes.worker_metrics_url)
    sender = account.agent_number
    assert value(worker, "herald_messages_total", outcome="sent", sender=sender) == ROWS
    assert value(worker, "herald_messages_total", sender=sender) == ROWS
    assert value(worker, "herald_carrier_request_seconds_count", outcome="sent") == ROWS
    assert value(worker, "herald_pacing_delay_seconds_count") == ROWS
    assert value(worker, "herald_validation_rows_total", result="accepted") == ROWS
    assert value(worker, "herald_batches_total", status="completed") == 1
    assert value(worker, "herald_webhook_deliveries_total", result="delivered") >= 2
    # The service's carrier account: a few requests at once, under the limit it starts with.
    service = frozenset({("account", DEV_ACCOUNT_SID)})
    assert worker[("herald_carrier_in_flight_limit", service)] == INITIAL
    assert worker[("herald_carrier_in_flight", service)] == 0

    api_series = await scrape(f"{processes.api_url}/metrics")
    batch_posts = value(
        api_series, "herald_api_requests_total", method="POST", route="/v1/sms/batch", status="200"
    )
    assert batch_posts == 1

    # The run completes once its webhook pump has recorded the final event's delivery: a
    # workflow task after the post the test waited for.
    sdk = await eventually(
        lambda: scrape(processes.temporal_metrics_url),
        lambda scraped: (
            value(scraped, "temporal_workflow_completed_total", workflow_type="BatchWorkflow") >= 1
        ),
    )
    assert value(sdk, "temporal_activity_execution_latency_count", activity_type="send_slice") >= 1
    assert value(sdk, "temporal_workflow_completed_total", workflow_type="BatchWorkflow") == 1

    # Every series the Grafana dashboard queries is one these processes serve.
    served = {name for scraped in (worker, api_series, sdk) for name, _ in scraped}
    assert dashboard_series() - served == set()

    worker_lines = _json_lines(processes.worker.log_path)
    api_lines = _json_lines(processes.api.log_path)
    # `activity` and `workflow_id` come from the worker's interceptor, not the log call.
    status_lines = [
        line
        for line in worker_lines
        if line.get("activity") == "record_status" and line.get("batch_id") == batch_id
    ]
    assert status_lines, worker_lines
    assert all(line.get("workflow_id") for line in status_lines), status_lines
    # No request line of the HTTP client: it wrote each webhook's URL, credentials and query
    # included, at INFO.
    client_lines = [line for line in worker_lines if line.get("logger") in ("httpx", "httpcore")]
    assert client_lines == []
    # uvicorn's own lines, through the standard library; with `--no-access-log`, as the image
    # and `make run` start it, no line per request (a path holds phone numbers and short-link
    # codes).
    assert any(line.get("logger") == "uvicorn.error" for line in api_lines), api_lines
    assert [line for line in api_lines if line.get("logger") == "uvicorn.access"] == []


def dashboard_series() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = {name for query in queries for name in SERIES.findall(query)}
    assert len(names) > 5, names
    return names


def _json_lines(path: Path) -> list[dict[str, object]]:
    """Every line of a process's output (stdout and stderr), parsed; fails on one that is
    not JSON."""
    lines = path.read_text().splitlines()
    assert lines
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not JSON in {path.name}: {line!r}")
    return parsed


async def test_the_worker_metrics_port_fails_its_probe_while_the_event_loop_is_stuck() -> None:
    server = MetricsServer(WorkerMetrics().registry, "127.0.0.1", free_port())
    url = f"http://127.0.0.1:{server.port}"
    async with server.serving():
        server.last_tick -= STALL_SECONDS + 1
        stuck = _get_blocking(f"{url}/healthz")
        await asyncio.sleep(1.5)
        turning = _get_blocking(f"{url}/healthz")
        series = _get_blocking(f"{url}/metrics")

    assert stuck.status_code == 503
    assert turning.status_code == 200
    assert "herald_messages_total" in series.text


def _get_blocking(url: str) -> httpx.Response:
    """Blocks the calling event loop on purpose: it plays the stuck worker's loop, which the
    metrics server, in its own thread, must answer for."""
    return httpx.get(url)


def status_recorder(
    settings: Settings, pool: asyncpg.Pool, http: httpx.AsyncClient, metrics: WorkerMetrics
) -> StatusEventActivities:
    # Recording an event reaches no carrier.
    no_carrier = cast(TwilioCarrier, None)
    return StatusEventActivities(
        pool=pool, carrier=no_carrier, http=http, settings=settings, metrics=metrics
    )


async def test_batch_status_changes_count_each_phase_once(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    # A progress report repeats its phase (about once a second while a batch sends), and a
    # local activity run again after a lost workflow task records its event again: neither
    # is a change of status.
    batch_id = await recorded_batch(pool, account)
    metrics = WorkerMetrics()
    async with httpx.AsyncClient() as http:
        recorder = status_recorder(settings, pool, http, metrics)
        for seq, status, progress in [
            (1, BatchStatus.VALIDATING, False),
            (2, BatchStatus.IN_PROGRESS, False),
            (3, BatchStatus.IN_PROGRESS, True),
            (3, BatchStatus.IN_PROGRESS, True),
            (4, BatchStatus.COMPLETED, False),
            (4, BatchStatus.COMPLETED, False),
        ]:
            update = StatusUpdate(
                batch_id=str(batch_id),
                workflow_id=f"recorded-{batch_id}",
                event_seq=seq,
                status=status,
                progress=progress,
            )
            await ActivityEnvironment().run(recorder.record_status, update)

    scraped = samples(generate_latest(metrics.registry).decode())
    assert {
        status: value(scraped, "herald_batches_total", status=status)
        for status in ("validating", "in_progress", "completed")
    } == {"validating": 1, "in_progress": 1, "completed": 1}


async def test_a_batchs_status_is_seen_with_its_event_never_before_it(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    # A client that polls the batch until it is final, then reads its log, finds the final
    # event there: the status and its event are one transaction. The event's insert is held
    # here (an uncommitted row of its key) while the status is read.
    batch_id = await recorded_batch(pool, account)
    update = StatusUpdate(
        batch_id=str(batch_id),
        workflow_id=f"recorded-{batch_id}",
        event_seq=1,
        status=BatchStatus.COMPLETED,
    )
    async with httpx.AsyncClient() as http, pool.acquire() as holder:
        recorder = status_recorder(settings, pool, http, WorkerMetrics())
        holding = holder.transaction()
        await holding.start()
        await holder.execute(
            "INSERT INTO batch_events (batch_id, seq, account_id, status, payload)"
            " VALUES ($1, 1, $2, 'validating', '{}')",
            batch_id,
            account.account_id,
        )
        recording = asyncio.create_task(ActivityEnvironment().run(recorder.record_status, update))
        await blocked_behind(pool, holder)
        seen = await pool.fetchval("SELECT status FROM batches WHERE id = $1", batch_id)
        await holding.rollback()
        await recording

    assert seen == "queued"
    assert await pool.fetchval("SELECT status FROM batches WHERE id = $1", batch_id) == (
        "completed"
    )
    assert await pool.fetchval(
        "SELECT status FROM batch_events WHERE batch_id = $1 AND seq = 1", batch_id
    ) == ("completed")


async def test_an_unexpected_error_is_a_500_with_the_requests_id_in_its_reply_and_log(
    settings: Settings,
) -> None:
    # An error no handler expects reached Starlette's outermost layer, past the one that
    # binds and echoes the request's id: the reply had no `x-request-id`, the traceback's
    # log line no `request_id`, and the request no latency sample.
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/broken", broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as api:
            with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                response = await api.get("/v1/broken", headers={"x-request-id": "req-42"})
            scraped = samples((await api.get("/metrics")).text)

    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-42"
    assert error_code(response) == "INTERNAL_ERROR"
    logged = [line for line in logs if line["event"] == "unhandled error"]
    assert [(line["request_id"], line["path"]) for line in logged] == [("req-42", "/v1/broken")]
    assert value(scraped, "herald_api_request_seconds_count", route="/v1/broken") == 1


async def test_a_single_send_is_counted_and_its_log_lines_keep_only_the_users_last_digits(
    processes: Processes, account: Account, emulator_url: str
) -> None:
    """A single send's message is counted in the message and carrier-request series, as a
    batch's are (it was in neither). A conversation's workflow id names the user's number,
    and every line of its activities carries it (`workflow_id`), as temporalio's own lines do
    in their text: a user's number is kept out of the logs (its last four digits stay, to
    tell users apart)."""
    user = unique_numbers(1)[0]
    sender = account.agent_number
    before = await scrape(processes.worker_metrics_url)
    async with httpx.AsyncClient(base_url=processes.api_url) as api:
        await send_ok(api, account, user, agent_message="Your table is ready")
    await received_by(emulator_url, user, 1)
    after = await eventually(
        lambda: scrape(processes.worker_metrics_url),
        lambda scraped: value(scraped, "herald_messages_total", sender=sender) > 0,
    )
    digits = user.removeprefix("+")

    async def conversation_lines() -> list[dict[str, object]]:
        return [
            line
            for line in _json_lines(processes.worker.log_path)
            if str(line.get("workflow_id", "")).endswith(digits[-4:])
            and str(line["workflow_id"]).startswith("sms-conversation-")
        ]

    assert value(after, "herald_messages_total", outcome="sent", sender=sender) == 1
    requests = [
        value(scraped, "herald_carrier_request_seconds_count", outcome="sent")
        for scraped in (before, after)
    ]
    assert requests[1] - requests[0] == 1
    lines = await eventually(conversation_lines, bool)
    logged = processes.worker.log_path.read_text() + processes.api.log_path.read_text()
    assert digits not in logged
    assert all(
        str(line["workflow_id"]).endswith("*" * (len(digits) - 4) + digits[-4:]) for line in lines
    ), lines


async def test_a_request_whose_database_goes_away_is_503_to_send_again(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    """PostgreSQL cut the request's connection mid-statement (restarting, failing over): a
    500 `INTERNAL_ERROR` with a traceback, as for a bug; it is a 503 the client can send
    again, in the envelope of the API it came by."""
    batch_id = await recorded_batch(pool, account)

    async def read(path: str, headers: dict[str, str]) -> httpx.Response:
        return await answer_when_statement_fails(
            pool,
            functools.partial(api.get, path, headers=headers),
            table="batches",
            statement="SELECT%FROM batches%",
        )

    herald = await read("/v1/sms/batches", account.headers)
    mobivate = await read(f"/send/batch/{batch_id}", {"Authorization": f"Bearer {account.key}"})

    assert (herald.status_code, error_code(herald)) == (503, "DATABASE_UNAVAILABLE")
    assert herald.headers["retry-after"] == "5" and herald.headers["x-request-id"]
    assert (mobivate.status_code, mobivate.json()["success"]) == (503, False)
    assert error_code(mobivate) == "DATABASE_UNAVAILABLE"
