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


async def test_a_request_span_holds_its_route_not_the_numbers_or_codes_it_was_asked_with(
    settings: Settings, account: Account
) -> None:
    """A path holds phone numbers (an opt-out's) and short-link codes, a query a conversation
    filter's number: a span kept them as asked (`http.target`, `http.url`), and they left
    for the collector."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    number, code = unique_numbers(1)[0], "Zq7Xk2Pw9"
    async with api_client(settings, Tracing(provider)) as api:
        added = await api.post("/v1/opt-outs", headers=account.headers, json={"number": number})
        removed = await api.delete(f"/v1/opt-outs/{number}", headers=account.headers)
        found = await api.get(
            "/v1/sms/conversations", headers=account.headers, params={"user_number": number}
        )
        clicked = await api.get(f"/s/{code}")
    assert [r.status_code for r in (added, removed, found, clicked)] == [201, 200, 200, 404]

    server = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    leaked = [
        (s.name, key, value)
        for s in server
        for key, value in (s.attributes or {}).items()
        if number.removeprefix("+") in str(value) or code in str(value)
    ]
    assert leaked == []
    routes = {(s.attributes or {}).get("http.route") for s in server}
    assert {"/v1/opt-outs/{number}", "/v1/sms/conversations", "/s/{code}"} <= routes, routes
