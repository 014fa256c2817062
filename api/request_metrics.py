"""Counts and times every request for `/metrics`, by route template (never the raw path, so
ids do not make a series each)."""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics import ApiMetrics

# A path no route matched (404s, scanners): one series for all of them.
UNMATCHED = "unmatched"


class RequestMetrics:
    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        timed = False

        def observe() -> None:
            nonlocal timed
            timed = True
            self._metrics.latency.labels(scope["method"], _route(scope)).observe(
                time.monotonic() - started
            )

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                observe()
            await send(message)

        try:
            await self._app(scope, receive, send_counted)
        finally:
            # An error that raised before any reply is answered 500 outside (RequestContext).
            if not timed:
                observe()
            self._metrics.requests.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    # FastAPI puts the matched route in the scope, which the app shares with its middleware.
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
