"""A lean HTTP/1.1 client for the carrier: keep-alive connections to one origin, responses
parsed by httptools (the C parser uvicorn uses).

The send path makes one request per message, and a general-purpose client (aiohttp) spends
more CPU on each than the rest of Herald's work on the message together. This one does only
what a carrier API needs: a request with a small body, a response read whole, TLS when the
URL says https. It also tells the two failures apart that decide whether a message may be
sent again: `ConnectFailed` (nothing was sent) and `NoAnswer` (the request may have arrived).
"""

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import urlencode, urlsplit

import httptools

# A connection idle this long is closed rather than reused: a server closes idle ones on its
# own schedule, and a request written as its close crosses the wire gets no answer, which
# for a message means `uncertain`.
IDLE_SECONDS = 10.0


class ConnectFailed(Exception):
    """No connection could be made: the request was never sent."""


class NoAnswer(Exception):
    """The request was written (or may have been) but no complete answer came back."""


class NotSent(Exception):
    """The caller's `ready` check, made once the request had its connection, said it is not
    to go (or failed: then raised from its error). Nothing was written."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    # Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@lru_cache(maxsize=64)
def split_url(url: str) -> tuple[Origin, str]:
    """The origin of `url` and the request target (path and query) to send to it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port), target


@lru_cache(maxsize=256)
def request_head(method: str, url: str, query: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """A request's head up to its `Content-Length`: made once for each method, URL, query
    and headers (a carrier's requests differ only by their bodies)."""
    origin, target = split_url(url)
    if query:
        target += ("&" if "?" in target else "?") + query
    head = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
    head += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(head) + "\r\n").encode("latin-1")


def _too_late(waiter: "asyncio.Future[Answer]") -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time. Made in its event loop,
    which it keeps: `asyncio.get_running_loop` is a `getpid` system call each time (it checks
    for a fork), three a request when the pool asked it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[Answer] | None = None
        self.keep_alive = False
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(NoAnswer(f"malformed response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(NoAnswer(f"connection closed before the answer was complete: {exc!r}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            answer = Answer(self.parser.get_status_code(), self.headers, b"".join(self.body))
            self.waiter.set_result(answer)

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.headers, self.body, self.keep_alive = {}, [], False
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Up to `connections` keep-alive connections per origin, reused most recent first."""

    def __init__(
        self, *, connections: int, timeout: float, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeout = timeout
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(connections)
        self._idle: dict[Origin, deque[_Connection]] = {}

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes = b"",
        params: Mapping[str, object] | None = None,
        time_limit: float | None = None,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> Answer:
        """Send one request and read its whole answer; connecting and answering each get
        `time_limit` seconds (the pool's timeout when None). With `ready`, awaited once the
        request has its connection, just before it is written: NotSent unless it is True."""
        limit = time_limit or self._timeout
        origin, _ = split_url(url)
        query = urlencode(params, doseq=True) if params else ""
        end = (
            b"Content-Length: %d\r\n\r\n" % len(body)
            if body or method in ("POST", "PUT", "PATCH")
            else b"\r\n"
        )
        request = b"".join((request_head(method, url, query, tuple(headers.items())), end, body))
        async with self._slots:
            connection = await self._connection(origin, limit)
            if ready is not None:
                await self._check(ready, connection, origin)
            timer: asyncio.TimerHandle | None = None
            try:
                waiter = connection.send(request)
                # A timer on the answer's future itself: lighter than `asyncio.timeout`, which
                # schedules the same timer but also tracks and cancels the calling task.
                timer = connection.loop.call_later(limit, _too_late, waiter)
                answer = await waiter
            except TimeoutError as error:
                connection.close()
                raise NoAnswer(f"no answer within {limit} s") from error
            except BaseException:
                connection.close()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            self._put_back(connection, origin)
            return answer

    async def _check(
        self, ready: Callable[[], Awaitable[bool]], connection: "_Connection", origin: Origin
    ) -> None:
        """NotSent unless `ready()`; the connection, unused, goes back to the idle ones."""
        try:
            go = await ready()
        except Exception as error:
            self._put_back(connection, origin)
            raise NotSent("the request's ready check failed") from error
        if not go:
            self._put_back(connection, origin)
            raise NotSent("the request is not to go")

    def _put_back(self, connection: "_Connection", origin: Origin) -> None:
        if connection.keep_alive and connection.usable:
            connection.idle_since = connection.loop.time()
            idle = self._idle.get(origin)
            if idle is None:
                idle = self._idle[origin] = deque()
            idle.append(connection)
        else:
            connection.close()

    async def _connection(self, origin: Origin, limit: float) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable and connection.loop.time() - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            # Made once: loading the system's CA certificates takes milliseconds.
            self._ssl = context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=context
                )
        except (OSError, TimeoutError) as error:
            raise ConnectFailed(
                f"cannot connect to {origin.host}:{origin.port}: {error!r}"
            ) from error
        return connection

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
