"""Just enough HTTP/1.1 server for the carrier emulator: requests parsed by httptools, routed
by method and path to async handlers that answer JSON.

The emulator answers every message of a benchmark on the same cores as Herald, and stands in
for a remote carrier, so its cost should stay small: a web framework's per-request machinery
(aiohttp's, or uvicorn's ASGI) would cost a large share of Herald's own work on a message.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import httptools


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    # Header names in lower case; a repeated header keeps its first value.
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    # What the route's pattern captured, by group name.
    params: Mapping[str, str]

    def form(self) -> dict[str, str]:
        """The urlencoded body; a repeated field keeps its first value."""
        fields: dict[str, str] = {}
        for name, value in parse_qsl(self.body.decode(), keep_blank_values=True):
            fields.setdefault(name, value)
        return fields

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    payload: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # A body sent as it is instead of the payload as JSON: for answers a client cannot read.
    raw: bytes | None = None
    content_type: str = "application/json; charset=utf-8"

    def encode(self, keep_alive: bool) -> bytes:
        body = json.dumps(self.payload).encode() if self.raw is None else self.raw
        head = [
            f"HTTP/1.1 {self.status} {_reason(self.status)}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        if not keep_alive:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


Handler = Callable[[Request], Awaitable[Reply]]


class Router:
    """Each request goes to the first route whose path pattern and method match."""

    def __init__(self, routes: list[tuple[str, str, Handler]]) -> None:
        self._routes = [(method, re.compile(path), handler) for method, path, handler in routes]
        # The connections open now, for `serving` to close.
        self.open: set[_Connection] = set()

    async def handle(
        self, method: str, path: str, headers: dict[str, str], query: str, body: bytes
    ) -> Reply:
        allowed = False
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if route_method == method:
                request = Request(
                    method,
                    path,
                    headers,
                    dict(parse_qsl(query, keep_blank_values=True)),
                    body,
                    match.groupdict(),
                )
                return await handler(request)
        if allowed:
            return Reply({"error": "method not allowed"}, 405)
        return Reply({"error": "not found"}, 404)


class _Connection(asyncio.Protocol):
    """One client connection; its requests are answered in order, one at a time."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: list[tuple[str, str, dict[str, str], str, bytes, bool]] = []
        self._busy = False
        self._task: asyncio.Task[Reply] | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)
        self._router.open.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(Reply({"error": "malformed request"}, 400).encode(keep_alive=False))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._router.open.discard(self)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        self._pending.append(
            (
                self._parser.get_method().decode("ascii"),
                unquote(url.path.decode("latin-1")),
                self._headers,
                (url.query or b"").decode("latin-1"),
                b"".join(self._body),
                self._parser.should_keep_alive(),
            )
        )
        self._reset()
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._pending or self._transport is None:
            self._busy = False
            return
        self._busy = True
        method, path, headers, query, body, keep_alive = self._pending.pop(0)
        self._task = asyncio.get_running_loop().create_task(
            self._router.handle(method, path, headers, query, body)
        )
        self._task.add_done_callback(lambda done: self._answer(done, keep_alive))

    def _answer(self, done: asyncio.Task[Reply], keep_alive: bool) -> None:
        if done.cancelled():
            self._close()
            return
        error = done.exception()
        reply = done.result() if error is None else Reply({"error": repr(error)}, 500)
        self._write(reply.encode(keep_alive))
        if keep_alive:
            self._next()
        else:
            self._close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def start(router: Router, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(router), host, port, backlog=2048)


@asynccontextmanager
async def serving(router: Router, host: str, port: int) -> AsyncIterator[None]:
    """`router` served in this event loop for the block."""
    server = await start(router, host, port)
    try:
        yield
    finally:
        server.close()
        for connection in list(router.open):
            connection.close()
        await server.wait_closed()
