"""Herald's own Prometheus series (the Temporal SDK's come from its runtime, see
`temporal_client.temporal_runtime`).

Each process, and each worker or app a test starts in one process, has its own registry:
counts never mix between two of them.
"""

import asyncio
import threading
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

# Carrier round trips: tens of milliseconds against the emulator, up to the 30 s timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Pacing waits: none for an unlimited sender, up to seconds for one at 1 message a second.
PACING_BUCKETS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
# A worker whose event loop has not turned this long is stuck: its probe fails.
STALL_SECONDS = 15.0


class HistogramSeries:
    """One series of a `LeanHistogram`: its buckets' counts (not cumulative), sum and time
    of creation."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """As prometheus_client's `Histogram.observe`: `amount` counts in the first bucket
        whose upper bound is at least it. One bisect and two additions, without the two
        locked value updates and the walk of the buckets that one costs: a worker observes
        twice a message. Observed from the event loop's thread only; a scrape from the
        metrics thread reads what is there."""
        self.sum += amount
        self.counts[bisect_left(self._bounds, amount)] += 1


class LeanHistogram(Collector):
    """A histogram exposed exactly as prometheus_client's `Histogram` of the same name,
    labels and buckets exposes it (same samples, `_created` included), for series observed
    on the send path, once or twice per message. Observations from one thread only (see
    `HistogramSeries.observe`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("buckets not in order")
        if bounds[-1] != INF:
            bounds.append(INF)
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(bounds)
        self._le = [floatToGoString(b) for b in bounds]
        self._series: dict[tuple[str, ...], HistogramSeries] = {}
        if not self._labelnames:
            # A series without labels exists from the start, as prometheus_client's does.
            self._series[()] = HistogramSeries(self._bounds)
        registry.register(self)

    def labels(self, *values: str) -> HistogramSeries:
        """The series of these label values, made on first use."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = HistogramSeries(self._bounds)
        return series

    def observe(self, amount: float) -> None:
        """Observe on the series of a histogram without labels."""
        self._series[()].observe(amount)

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, "histogram")]

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._documentation, "histogram")
        for key, series in list(self._series.items()):
            labels = dict(zip(self._labelnames, key, strict=True))
            counts = list(series.counts)
            total = series.sum
            cumulative = 0
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                metric.add_sample(f"{self._name}_bucket", {**labels, "le": le}, cumulative)
            metric.add_sample(f"{self._name}_count", labels, cumulative)
            metric.add_sample(f"{self._name}_sum", labels, total)
            metric.add_sample(f"{self._name}_created", labels, series.created)
        yield metric


class InFlightGauges(Collector):
    """Each carrier account's requests in flight from this worker, and the limit it has
    learned for them (activities/providers/in_flight.py), read when scraped: nothing is
    added to the send path. `in_flight` gives (limit, in flight) by account SID."""

    def __init__(
        self, in_flight: Callable[[], Mapping[str, tuple[int, int]]], registry: CollectorRegistry
    ) -> None:
        self._in_flight = in_flight
        registry.register(self)

    def describe(self) -> list[Metric]:
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._in_flight()))

    def _families(self, accounts: Mapping[str, tuple[int, int]]) -> tuple[Metric, Metric]:
        limit = GaugeMetricFamily(
            "herald_carrier_in_flight_limit",
            "Requests of a carrier account the worker lets be in flight at once: from 48,"
            " doubled each round while at least half is in use, up to all its lanes; lowered"
            " when the carrier throttles the account (Twilio 20429).",
            labels=["account"],
        )
        in_flight = GaugeMetricFamily(
            "herald_carrier_in_flight",
            "Requests of a carrier account in flight from the worker.",
            labels=["account"],
        )
        for account, (allowed, used) in accounts.items():
            limit.add_metric([account], allowed)
            in_flight.add_metric([account], used)
        return limit, in_flight


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.messages = Counter(
            "herald_messages",
            "Messages a send activity (a batch's slice, a single send or a conversation's"
            " message) finished with, by outcome (the ledger's verdict), the carrier's error"
            " code (empty when none) and sender number.",
            ["outcome", "error_code", "sender"],
            registry=self.registry,
        )
        self.carrier_latency = LeanHistogram(
            "herald_carrier_request_seconds",
            "Duration of one carrier request (send a message, a batch's or a single send's),"
            " by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pacing_delay = LeanHistogram(
            "herald_pacing_delay_seconds",
            "How long a message waited for its sender's rate limit before its request.",
            buckets=PACING_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "herald_webhook_deliveries",
            "Status webhook posts, by result: delivered (2xx), gone (410), failed (anything"
            " else, retried unless it was the last attempt).",
            ["result"],
            registry=self.registry,
        )
        self.batches = Counter(
            "herald_batches",
            "Batch status changes recorded, by the status entered.",
            ["status"],
            registry=self.registry,
        )
        self.validation_rows = Counter(
            "herald_validation_rows",
            "Recipient rows validated, by result: accepted (to be sent), skipped (an opt-out,"
            " a duplicate) or rejected;"
            " rate() is the validation's rows per second.",
            ["result"],
            registry=self.registry,
        )


@dataclass
class ApiMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "herald_api_requests",
            "HTTP requests answered, by method, route (its template) and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        # Lean: observed for each of the carrier's status callbacks, two or three a message
        # (api/receipt_listener.py), from the event loop's thread, as every API request is.
        self.latency = LeanHistogram(
            "herald_api_request_seconds",
            "Time to the start of the reply, by method and route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a line each (nor a non-JSON one)."""


@dataclass
class MetricsServer:
    """The worker's metrics endpoint, in a thread: `/healthz` answers 200 while the worker's
    event loop turns (503 once it has not for STALL_SECONDS), any other path the registry's
    series."""

    registry: CollectorRegistry
    host: str
    port: int
    last_tick: float = field(default_factory=time.monotonic)
    _series: Callable[..., list[bytes]] = field(init=False)

    def __post_init__(self) -> None:
        self._series = make_wsgi_app(self.registry)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            stalled = time.monotonic() - self.last_tick > STALL_SECONDS
            start_response("503 Service Unavailable" if stalled else "200 OK", [])
            return [b"stalled\n" if stalled else b"ok\n"]
        return self._series(environ, start_response)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        server = make_server(
            self.host, self.port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        ticking = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticking.cancel()
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    async def _tick(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(1)
