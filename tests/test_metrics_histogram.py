"""The worker's lean histograms expose exactly what prometheus_client's `Histogram` does."""

import re

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from metrics import LATENCY_BUCKETS, PACING_BUCKETS, LeanHistogram

# Bucket bounds, values between, on them, below and above them all.
OBSERVED = [0.0, 0.0004, 0.001, 0.003, 0.005, 0.0051, 0.05, 0.7, 1.0, 29.9, 30.0, 31.0, 900.0]
CREATED = re.compile(rb"(_created(?:\{[^}]*\})?) \S+")


def exposition(registry: CollectorRegistry) -> bytes:
    # `_created` is the time each series was made: the same lines, the values set aside.
    return CREATED.sub(rb"\1 T", generate_latest(registry))


def test_the_exposition_is_prometheus_clients() -> None:
    lean_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    lean = LeanHistogram(
        "x_seconds", "Doc.", ["outcome"], buckets=LATENCY_BUCKETS, registry=lean_registry
    )
    lean_bare = LeanHistogram("y_seconds", "Doc 2.", buckets=PACING_BUCKETS, registry=lean_registry)
    reference = Histogram(
        "x_seconds", "Doc.", ["outcome"], buckets=LATENCY_BUCKETS, registry=reference_registry
    )
    reference_bare = Histogram(
        "y_seconds", "Doc 2.", buckets=PACING_BUCKETS, registry=reference_registry
    )
    assert exposition(lean_registry) == exposition(reference_registry)
    for n, amount in enumerate(OBSERVED):
        outcome = ("sent", "retry", "failed")[n % 3]
        lean.labels(outcome).observe(amount)
        reference.labels(outcome).observe(amount)
        lean_bare.observe(amount)
        reference_bare.observe(amount)
    assert b'x_seconds_bucket{le="0.005",outcome="sent"}' in exposition(lean_registry)
    assert exposition(lean_registry) == exposition(reference_registry)
