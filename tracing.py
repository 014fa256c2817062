"""OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: the API's requests
(FastAPI's instrumentation) and, through Temporal's TracingInterceptor on the client, the
workflows they start and those workflows' activities, in one trace. The exporter reads the
standard OTEL_* variables (endpoint, headers, service name).

The OpenTelemetry SDK, its exporter and instrumentations load only when tracing is on: a
process that traces nothing does not carry them (nor temporalio's worker, which Temporal's
TracingInterceptor imports)."""

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from temporalio.client import Interceptor

if TYPE_CHECKING:
    # Types only: the worker imports this module, and FastAPI costs a process 12 MB.
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"


@dataclass(frozen=True)
class Tracing:
    """Where a process's spans go; `None` for a process that traces nothing."""

    provider: "TracerProvider"

    @classmethod
    def from_env(cls, service: str) -> "Tracing | None":
        if not os.environ.get(ENDPOINT_VARIABLE):
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Attributes given here would win over OTEL_SERVICE_NAME: it is read first.
        name = os.environ.get("OTEL_SERVICE_NAME") or service
        resource = Resource.create({SERVICE_NAME: name})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def interceptors(self) -> list[Interceptor]:
        """For the Temporal client; a worker built on that client takes them too."""
        from temporalio.contrib.opentelemetry import TracingInterceptor

        return [TracingInterceptor(self.provider.get_tracer("herald"))]

    def instrument(self, app: "FastAPI") -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, server_request_hook=_route_only
        )


# A request span's attributes that hold the path or the URL it was asked with, and its query.
_PATH_ATTRIBUTES = ("http.target", "url.path", "http.url", "url.full")
_QUERY_ATTRIBUTES = ("url.query",)


def _route_only(span: "Span", _scope: dict[str, Any]) -> None:
    """A request's span keeps its route's template (`http.route`) for the path and URL it was
    asked with, and no query: a path holds phone numbers (an opt-out's, a list's contact's)
    and short-link codes, a query a conversation filter's numbers, none of which leaves for
    the collector (docs/SECURITY.md)."""
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    route = str(attributes.get("http.route", ""))
    for key in _PATH_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, route)
    for key in _QUERY_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, "")


def client_interceptors(tracing: "Tracing | None") -> list[Interceptor]:
    return [] if tracing is None else tracing.interceptors()
