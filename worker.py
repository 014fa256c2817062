"""The Temporal worker: registers Herald's workflows and activities and runs them."""

import asyncio
import gc
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any

import httpx
import uvloop
from temporalio.client import Client
from temporalio.worker import Worker

from activities.conversations import ConversationActivities
from activities.ledger import LedgerActivities
from activities.log_context import LogContext
from activities.providers.twilio import TwilioCarrier
from activities.recipients.phone_columns import prepare as prepare_validation
from activities.reconciliation import ReconciliationActivities
from activities.resources import WorkerResources
from activities.sending import SendingActivities
from activities.status_events import StatusEventActivities
from activities.validation import ValidationActivities
from activities.validation import warm_up as warm_up_validation
from deploy.healthcheck import touch_while_running
from egress import PinnedTransport
from logs import configure_logging
from metrics import InFlightGauges, MetricsServer, WorkerMetrics
from settings import Settings, get_settings
from store.db import SchemaBehind, create_pool, ready_schema
from temporal_client import connect_temporal, temporal_runtime
from tracing import Tracing, client_interceptors
from workflows import WORKFLOWS


class Workers:
    """The Temporal workers of one process (`worker_role`), run and stopped together."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> "Workers":
        await self._stack.__aenter__()
        for worker in self.workers:
            await self._stack.enter_async_context(worker)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        # Every worker stops polling at once, then each drains: one after the other, the
        # control worker took new work (validations, webhooks, single sends) while the send
        # worker drained, and its own grace came after, past the process's.
        await asyncio.gather(*(worker.shutdown() for worker in self.workers))
        return await self._stack.__aexit__(kind, error, trace)


@asynccontextmanager
async def herald_worker(
    client: Client,
    settings: Settings,
    workflows: Sequence[type] = WORKFLOWS,
    metrics: WorkerMetrics | None = None,
) -> AsyncIterator[Workers]:
    """Ready workers with their pool, carrier and HTTP client; all closed on exit. By
    `settings.worker_role`: one on the task queue (workflows and every activity, the sends of
    chunks that name no send queue included), one on the send queue (send activities only),
    or both. `workflows` other than Herald's own: the upgrade test runs an earlier release's
    workflow code. Its series go to `metrics` (a registry of their own unless given)."""
    metrics = metrics or WorkerMetrics()
    role = settings.worker_role
    queues = 2 if role == "all" else 1
    validating = settings.validations_at_once if role != "send" else 0
    pool = await create_pool(
        settings.dsn,
        max_size=max(10, queues * settings.max_concurrent_activities + validating + 4),
    )
    await ready_schema(pool, migrate_now=settings.migrate_on_start)
    carrier = TwilioCarrier(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        api_url=settings.carrier_url,
        timeout=settings.carrier_timeout_seconds,
        connections=settings.send_concurrency * settings.max_concurrent_activities,
    )
    InFlightGauges(carrier.in_flight_by_account, metrics.registry)
    # Webhook URLs come from callers: every connection goes to an address checked just before.
    http = httpx.AsyncClient(
        timeout=settings.webhook_timeout_seconds,
        follow_redirects=False,
        transport=PinnedTransport(allow_loopback=settings.allow_loopback_webhooks),
    )
    activity_classes: list[type[WorkerResources]] = [
        ValidationActivities,
        SendingActivities,
        StatusEventActivities,
        LedgerActivities,
        ReconciliationActivities,
        ConversationActivities,
    ]
    resources = {
        cls: cls(pool=pool, carrier=carrier, http=http, settings=settings, metrics=metrics)
        for cls in activity_classes
    }
    workers: list[Worker] = []
    if role in ("all", "control"):
        every = [m for r in resources.values() for m in r.registered()]
        workers.append(_worker(client, settings, settings.task_queue, every, workflows))
        # Large files' validations, a few at once per process: the others wait on the queue
        # for this worker or another, holding no slot of either's.
        validations = resources[ValidationActivities].registered()
        workers.append(
            _worker(
                client,
                settings,
                settings.validation_task_queue,
                validations,
                (),
                at_once=settings.validations_at_once,
            )
        )
    if role in ("all", "send"):
        sends = resources[SendingActivities].registered()
        workers.append(_worker(client, settings, settings.send_task_queue, sends, ()))
    try:
        yield Workers(workers)
    finally:
        await http.aclose()
        await carrier.close()
        await pool.close()


def _worker(
    client: Client,
    settings: Settings,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    workflows: Sequence[type],
    *,
    at_once: int | None = None,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=activities,
        max_concurrent_activities=at_once or settings.max_concurrent_activities,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout_seconds),
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
        # Cancellations reach an activity in a heartbeat's reply: let them through at once.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        interceptors=[LogContext()],
    )


# Allocations (less deallocations) of container objects between two collections of the
# youngest generation; Python's default is 700. The send path keeps a few thousand young
# objects alive at any moment (each request in flight: its coroutines, future, answer), and
# at 700 every collection walked them: about 500 collections of 0.5-0.7 ms each per worker
# over a 100,000-row batch, 6-8% of its CPU. At 20,000 there are a handful, and the garbage
# they find (objects in reference cycles; reference counting frees the rest at once) is a
# few MB at most.
GC_YOUNG_THRESHOLD = 20_000


def prepare_process(*, validates: bool = False) -> None:
    """Done once at start, before any activity (`bench.validation` does the same): read
    phonenumbers' metadata into the validation's plans and patterns, so the first batch does
    not wait for it; in a process that `validates` files, validate a small one too
    (`activities.validation.warm_up`), for what the engine's first pass sets up; then move
    the long-lived objects (modules, that metadata, the patterns) out of the garbage
    collector's sight, so that the full collections during a large validation do not walk
    them all each time, and collect the youngest objects less often (GC_YOUNG_THRESHOLD)."""
    prepare_validation()
    if validates:
        warm_up_validation()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    prepare_process(validates=settings.worker_role in ("all", "control"))
    sdk_metrics = settings.temporal_metrics_port
    runtime = temporal_runtime(
        None if sdk_metrics is None else f"{settings.metrics_host}:{sdk_metrics}"
    )
    tracing = Tracing.from_env("herald-worker")
    client = await connect_temporal(
        settings, runtime=runtime, interceptors=client_interceptors(tracing)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    metrics = WorkerMetrics()
    async with AsyncExitStack() as stack:
        if settings.worker_metrics_port is not None:
            server = MetricsServer(
                metrics.registry, settings.metrics_host, settings.worker_metrics_port
            )
            await stack.enter_async_context(server.serving())
        worker = await stack.enter_async_context(herald_worker(client, settings, metrics=metrics))
        await stack.enter_async_context(worker)
        health = settings.health_file
        beating = None if health is None else asyncio.create_task(touch_while_running(health))
        await stop.wait()
        if beating is not None:
            beating.cancel()
    if tracing is not None:
        tracing.provider.shutdown()


if __name__ == "__main__":
    # uvloop: the send path is event-loop bound; it moves a slice's HTTP round trips faster.
    try:
        uvloop.run(main())
    except SchemaBehind as behind:
        sys.stderr.write(f"Herald refuses to start:\n{behind}\n")
        raise SystemExit(2) from None
