"""The carrier's status callbacks, answered ahead of the rest of the app.

At full send rate the carrier posts two or three callbacks per message sent. Through the
whole app, the middleware (request ids, metrics, size limit, input checks), the router and
FastAPI's request handling cost a callback more CPU than its own work: read the form, check
the signature, queue the receipt. This outermost ASGI layer does only that own work for
`POST` to the status path with an urlencoded body and no query but a message's ledger key
(what the carrier sends: store/receipts.py keyed_url),
with the same checks and replies as the route (api/routes/receipts.py), which still answers
anything else sent there. The request is counted in `/metrics` under the route's template.
"""

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from api.carrier_signature import URLENCODED, public_url, storable_params, verified
from api.errors import HeraldError, herald_error_response
from api.limits import PayloadTooLarge
from api.services import receipts as service
from metrics import ApiMetrics
from settings import STATUS_CALLBACK_PATH
from store import receipts

NO_CONTENT = {"type": "http.response.start", "status": 204, "headers": []}
EMPTY_BODY = {"type": "http.response.body", "body": b""}


class ReceiptLane:
    def __init__(self, app: ASGIApp, *, max_body: int, metrics: ApiMetrics) -> None:
        self._app = app
        self._max_body = max_body
        self._requests = metrics.requests
        self._latency = metrics.latency.labels("POST", STATUS_CALLBACK_PATH)
        self._taken = metrics.requests.labels("POST", STATUS_CALLBACK_PATH, "204")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != STATUS_CALLBACK_PATH
            or scope["method"] != "POST"
            or (
                scope["query_string"]
                and receipts.message_key(scope["query_string"].decode("latin-1")) is None
            )
        ):
            await self._app(scope, receive, send)
            return
        content_type = signature = length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"x-twilio-signature":
                signature = value
            elif name == b"content-length":
                length = value
        if content_type is None or not content_type.startswith(URLENCODED.encode()):
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        try:
            if not await self._take(scope, receive, length, signature):
                return
        except HeraldError as error:
            reply = herald_error_response(scope["path"], error)
            self._latency.observe(time.monotonic() - started)
            self._requests.labels("POST", STATUS_CALLBACK_PATH, str(reply.status_code)).inc()
            await reply(scope, receive, send)
            return
        self._latency.observe(time.monotonic() - started)
        self._taken.inc()
        await send(NO_CONTENT)
        await send(EMPTY_BODY)

    async def _take(
        self, scope: Scope, receive: Receive, length: bytes | None, signature: bytes | None
    ) -> bool:
        """Queue the callback's receipt; False if the carrier hung up before its body came."""
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise PayloadTooLarge(f"bodies are limited to {self._max_body} bytes")
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            body += message.get("body", b"")
            if len(body) > self._max_body:
                raise PayloadTooLarge(f"bodies are limited to {self._max_body} bytes")
            if not message.get("more_body", False):
                break
        params = storable_params(body)
        state = scope["app"].state
        query = scope["query_string"].decode("latin-1")
        url = public_url(state.settings, STATUS_CALLBACK_PATH, query)
        with service.stored_or_retried():
            form = await verified(
                state.settings,
                state.pool,
                url,
                params,
                signature.decode("latin-1") if signature is not None else None,
                receipts=True,
            )
        await service.take_receipt(state.pool, state.receipt_intake, form, query)
        return True
