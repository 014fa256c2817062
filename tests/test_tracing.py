"""One trace from the HTTP request that starts a batch, through its workflows, to a send
activity: an API and a worker on the session's stack, traced to an in-memory exporter."""

import uuid

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from settings import Settings
from temporal_client import connect_temporal
from tests.support.batches import run_batch
from tests.support.builders import unique_numbers
from tests.support.stack import Account, WebhookReceiver, api_client
from tracing import Tracing
from worker import herald_worker


async def test_a_batch_is_one_trace_from_its_request_to_its_sends(
    settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    # A task queue of its own: the session's untraced worker must not take this batch.
    traced = settings.model_copy(update={"task_queue": f"herald-traced-{uuid.uuid4().hex[:8]}"})
    client = await connect_temporal(traced, interceptors=tracing.interceptors())
    async with herald_worker(client, traced) as worker, worker, api_client(traced, tracing) as api:
        _, events = await run_batch(api, account, webhooks, unique_numbers(3))
    assert events[-1]["status"] == "completed", events

    spans = exporter.get_finished_spans()
    request = _one(
        [s for s in spans if s.kind is SpanKind.SERVER and s.name == "POST /v1/sms/batch"]
    )
    trace_id = request.context.trace_id
    in_trace = {s.name for s in spans if s.context.trace_id == trace_id}
    assert "StartWorkflow:BatchWorkflow" in in_trace, in_trace
    assert "RunWorkflow:BatchWorkflow" in in_trace, in_trace
    assert "RunActivity:send_slice" in in_trace, in_trace


def _one(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]
