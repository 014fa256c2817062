"""The receipts listener: the carrier's status callbacks on a port of their own
(`RECEIPTS_PORT`), answered by a minimal HTTP/1.1 server in the API process.

At full send rate the carrier posts two or three callbacks per message sent. Through uvicorn,
even with its C parser and no access log, half of a callback's CPU in the API went to the HTTP
and ASGI machinery around the receipt lane (api/receipt_lane.py). This server does a
callback's own work and nothing else: httptools parses the request; the body is read as the
route reads it; `X-Twilio-Signature` is checked against the URL the carrier called (the
StatusCallback URL Herald gives it, `Settings.status_callback_url`, with a batch message's
ledger key in its query: store/receipts.py keyed_url); a non-final status is answered 204 at
once (it moves nothing); a final one is answered 204 only once it is committed (applied to
its message, or in `receipt_queue`), in one statement with those of the other callbacks of
the moment (api/services/receipts.py ReceiptIntake), and 503
`RECEIPT_NOT_QUEUED` when it could not be stored. Connections are kept alive, and pipelined
requests are answered in order. Only `POST` to the status path is served; every refusal is in
Herald's envelope, with the code the API's route gives it. Answers are counted in `/metrics`
under the route's template.
"""

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import asyncpg
import httptools
from starlette.exceptions import HTTPException
from starlette.responses import Response

from api.carrier_signature import URLENCODED, UrlSignatures, storable_params, verified
from api.errors import (
    HeraldError,
    InvalidRequest,
    error_reply,
    herald_error_response,
    http_error_response,
)
from api.limits import PayloadTooLarge
from api.services import receipts as service
from api.services.receipts import ReceiptIntake
from metrics import ApiMetrics
from settings import STATUS_CALLBACK_PATH, Settings
from store import receipts
from store.receipts import Receipt

PATH = STATUS_CALLBACK_PATH.encode()
FORM = URLENCODED.encode()
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
# Answers one connection may owe at once (pipelined requests): it is not read beyond them.
MAX_OWED = 64
# A request's target and headers together: a carrier's callback has a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
# A connection that owes no answer and has sent nothing for this long is closed (a kept-alive
# carrier connection reconnects), and one whose request has not come whole this long after it
# began (a client sending a byte now and then, holding a descriptor each): looked for every
# SWEEP_SECONDS.
IDLE_SECONDS = 60.0
REQUEST_SECONDS = 30.0
SWEEP_SECONDS = 5.0


@dataclass(slots=True)
class _Owed:
    """An answer a connection owes, in the order of its requests."""

    started: float
    keep_alive: bool
    status: int = 204
    reply: bytes | None = None
    # Until it is done: the receipt's statement (None when taken), or the slower check's task.
    pending: asyncio.Future[Any] | None = None


class ReceiptListener:
    """Serves the status path on its own port, with the API's pool, intake and metrics."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        intake: ReceiptIntake,
        metrics: ApiMetrics,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._intake = intake
        self._url = settings.status_callback_url
        # The signatures of callbacks to the StatusCallback URL Herald gives the carrier.
        self._signatures = UrlSignatures(settings.twilio_auth_token.get_secret_value(), self._url)
        self.max_body = settings.max_body_bytes
        self._requests = metrics.requests
        self._latency = metrics.latency.labels("POST", STATUS_CALLBACK_PATH)
        self._taken = metrics.requests.labels("POST", STATUS_CALLBACK_PATH, "204")
        self._server: asyncio.Server | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self.open: set[_Connection] = set()

    async def start(self, host: str, port: int) -> None:
        # Each API process (uvicorn --workers) listens on the port; the kernel spreads the
        # carrier's connections over them.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host, port, backlog=2048, reuse_port=True
        )
        self._sweeping = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close the connections idle, or slow to send their request, past their time."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for connection in list(self.open):
                if connection.overstayed(now):
                    connection.drop()

    async def close(self) -> None:
        """Stop listening, then close each connection once it owes no answer (an answer owed
        is a receipt whose statement is under way: it finishes first)."""
        if self._server is None:
            return
        if self._sweeping is not None:
            self._sweeping.cancel()
        self._server.close()
        for connection in list(self.open):
            connection.close_when_answered()
        await self._server.wait_closed()

    def answer(
        self,
        method: bytes,
        target: bytes,
        content_type: bytes | None,
        signature: bytes | None,
        body: bytes | None,
        owed: _Owed,
    ) -> None:
        """Fill in `owed` for a request: its reply now, or the future it waits for."""
        path, _, query = target.partition(b"?")
        if path != PATH or method != b"POST":
            # As the API answers an unknown path or method, in its envelope.
            status, detail = (404, "Not Found") if path != PATH else (405, "Method Not Allowed")
            refusal = http_error_response(STATUS_CALLBACK_PATH, HTTPException(status, detail))
            owed.status, owed.reply = status, encoded(refusal, owed.keep_alive)
            return
        try:
            if body is None:
                raise PayloadTooLarge(f"bodies are limited to {self.max_body} bytes")
            if content_type is None or not content_type.startswith(FORM):
                raise InvalidRequest(f"A status callback's body is {URLENCODED}")
            params = storable_params(body)
            text = signature.decode("latin-1") if signature is not None else None
            # A batch message's callback carries its ledger key in the query (keyed_url).
            query_text = query.decode("latin-1")
            key = receipts.message_key(query_text) if query else None
            if (
                (key is not None or not query)
                and text
                and text.isascii()
                and self._signatures.signed(params, text, query)
            ):
                self._take(service.receipt_of(params, key), owed)
            else:
                # Another query string, Twilio's other signings (the URL with or without its
                # port) and an account's own subaccount token: rare, and they may ask the
                # database.
                url = self._url + "?" + query_text if query else self._url
                owed.pending = asyncio.ensure_future(
                    self._verify_and_take(url, query_text, params, text)
                )
        except HeraldError as error:
            self._refuse(error, owed)

    def _take(self, receipt: Receipt, owed: _Owed) -> None:
        if service.is_final(receipt):
            owed.pending = self._intake.submit(receipt)
        else:
            owed.reply = NO_CONTENT if owed.keep_alive else NO_CONTENT_CLOSE

    async def _verify_and_take(
        self, url: str, query: str, params: dict[str, str], signature: str | None
    ) -> tuple[int, bytes]:
        owed = _Owed(started=0.0, keep_alive=True)
        try:
            form = await verified(self._settings, self._pool, url, params, signature, receipts=True)
            self._take(await service.signed_receipt(self._pool, form, query), owed)
            if owed.pending is not None:
                # Shared with the other receipts of its statement: never cancelled from here.
                await asyncio.shield(owed.pending)
        except HeraldError as error:
            self._refuse(error, owed)
        except service.DATABASE_ERRORS as error:
            self._refuse(service.not_queued(error), owed)
        return owed.status, NO_CONTENT if owed.reply is None else owed.reply

    def settle(self, owed: _Owed) -> None:
        """The reply of `owed` once its pending future is done."""
        pending, owed.pending = owed.pending, None
        assert pending is not None
        if pending.cancelled():
            self._refuse(service.not_queued(asyncio.CancelledError()), owed)
        elif (error := pending.exception()) is not None:
            self._refuse(service.not_queued(error), owed)
        elif isinstance(result := pending.result(), tuple):
            owed.status, owed.reply = result
            if owed.status != 204 or not owed.keep_alive:
                owed.reply = _with_close(owed.reply, owed.keep_alive)
        else:
            owed.reply = NO_CONTENT if owed.keep_alive else NO_CONTENT_CLOSE

    def answered(self, answers: list[_Owed]) -> None:
        """Count `answers`, written at once (one increment for their 204s)."""
        now = time.monotonic()
        taken = 0
        for owed in answers:
            self._latency.observe(now - owed.started)
            if owed.status == 204:
                taken += 1
            else:
                self._requests.labels("POST", STATUS_CALLBACK_PATH, str(owed.status)).inc()
        if taken:
            self._taken.inc(taken)

    def _refuse(self, error: HeraldError, owed: _Owed) -> None:
        owed.status = error.status_code
        owed.reply = encoded(herald_error_response(STATUS_CALLBACK_PATH, error), owed.keep_alive)

    def malformed(self, owed: _Owed) -> None:
        owed.status = 400
        owed.keep_alive = False
        problem = {"error": InvalidRequest.code, "message": "Malformed HTTP request"}
        owed.reply = encoded(error_reply(STATUS_CALLBACK_PATH, 400, [problem]), False)


def encoded(response: Response, keep_alive: bool) -> bytes:
    """`response` (a JSON error reply) as HTTP/1.1 bytes."""
    head = [f"HTTP/1.1 {response.status_code} {HTTPStatus(response.status_code).phrase}"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + bytes(response.body)


def _with_close(reply: bytes, keep_alive: bool) -> bytes:
    if keep_alive or b"\r\nConnection: close\r\n" in reply:
        return reply
    if reply == NO_CONTENT:
        return NO_CONTENT_CLOSE
    head, _, body = reply.partition(b"\r\n\r\n")
    return head + b"\r\nConnection: close\r\n\r\n" + body


class _Connection(asyncio.Protocol):
    """One carrier connection: its requests answered in order, as soon as each may be."""

    def __init__(self, listener: ReceiptListener) -> None:
        self._listener = listener
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._owed: deque[_Owed] = deque()
        self._paused = False
        self._closing = False
        self._reading = False
        # The future the connection last asked to be woken by.
        self._awaited: asyncio.Future[Any] | None = None
        # Bytes read since a request began while its head (target, headers) is unfinished;
        # requests begun on the connection.
        self._in_head = False
        self._head_bytes = 0
        self._begun = 0
        self._last_read = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self._target = b""
        self._content_type: bytes | None = None
        self._signature: bytes | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)
        self._listener.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Receipts whose statement is under way are still taken; their answers go nowhere.
        self._transport = None
        self._listener.open.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_read = time.monotonic()
        # The answers due for pipelined requests read together are written together.
        self._reading = True
        begun = self._begun
        try:
            self._parser.feed_data(data)
            if self._in_head and self._begun == begun:
                # httptools keeps the target and each header whole until they end. Counted
                # are reads wholly within one request's head: a read in which it began
                # (after other requests, pipelined) adds nothing, one read's worth at most.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise httptools.HttpParserError("the request's head is too large")
        except httptools.HttpParserError:
            owed = _Owed(started=time.monotonic(), keep_alive=False)
            self._listener.malformed(owed)
            self._owed.append(owed)
            self._closing = True
        finally:
            self._reading = False
        self._flush()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._started = time.monotonic()
        self._in_head = True
        self._head_bytes = 0
        self._begun += 1

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"x-twilio-signature":
            self._signature = value
        elif name == b"content-type":
            self._content_type = value

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self._listener.max_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        owed = _Owed(started=self._started, keep_alive=self._parser.should_keep_alive())
        body = b"".join(self._body) if self._size <= self._listener.max_body else None
        self._listener.answer(
            self._parser.get_method(), self._target, self._content_type, self._signature, body, owed
        )
        self._reset()
        self._owed.append(owed)
        if owed.pending is not None and owed.pending is not self._awaited:
            # The receipts of one statement share its future: one wake-up per connection.
            self._awaited = owed.pending
            owed.pending.add_done_callback(self._wake)
        if not owed.keep_alive:
            self._closing = True
        if not self._reading:
            self._flush()
        if len(self._owed) >= MAX_OWED and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _wake(self, _: asyncio.Future[Any]) -> None:
        self._flush()

    def _flush(self) -> None:
        """Write the answers now due, in order; close after the last one if asked."""
        answers: list[_Owed] = []
        while self._owed:
            owed = self._owed[0]
            if owed.pending is not None:
                if not owed.pending.done():
                    break
                self._listener.settle(owed)
            self._owed.popleft()
            answers.append(owed)
            if not owed.keep_alive:
                self._owed.clear()
        if answers:
            self._listener.answered(answers)
        if self._transport is None:
            return
        if answers:
            self._transport.write(b"".join(cast(bytes, owed.reply) for owed in answers))
        if self._closing and not self._owed:
            self._transport.close()
        elif self._paused and len(self._owed) < MAX_OWED // 2:
            self._paused = False
            self._transport.resume_reading()

    def close_when_answered(self) -> None:
        self._closing = True
        self._flush()

    def overstayed(self, now: float) -> bool:
        """Idle past IDLE_SECONDS owing nothing, or in a request begun REQUEST_SECONDS ago."""
        if self._started:
            return now - self._started > REQUEST_SECONDS
        return not self._owed and now - self._last_read > IDLE_SECONDS

    def drop(self) -> None:
        if self._transport is not None:
            self._transport.close()
