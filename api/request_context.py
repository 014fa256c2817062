"""A `request_id` on every log line a request causes: the caller's `x-request-id` when it is
a plain token, else a fresh one; echoed in the reply's `x-request-id`. An error no handler
expects is answered here (500 `INTERNAL_ERROR`; 503 `DATABASE_UNAVAILABLE` when the database
went away under it), with the id."""

import re
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import unavailable_response, unexpected_error_response
from store.db import UNAVAILABLE

# A proxy's or client's id is kept only if it cannot forge log structure or flood a line.
CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if CALLER_ID.fullmatch(given) else uuid.uuid4().hex

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self._app(scope, receive, send_with_id)
            except Exception as error:
                # Answered here, not by Starlette's outermost handler: inside, the reply
                # carries the id, and the traceback's log line too.
                if started:
                    raise
                reply = (
                    unavailable_response(scope["path"], error)
                    if isinstance(error, UNAVAILABLE)
                    else unexpected_error_response(scope["path"])
                )
                await reply(scope, receive, send_with_id)
