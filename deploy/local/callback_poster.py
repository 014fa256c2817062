"""The emulator's status callbacks on the wire: one HTTP/1.1 POST per status change, as
Twilio posts them, on keep-alive connections.

The emulator posts two callbacks per message on the same cores as Herald, so each should
cost as little CPU as Python allows: a request is bytes written to a connection and a
function called with the answer's status, with no task, future, semaphore or timeout context
of its own (Herald's lean client, activities/providers/http1.py, awaits each request: for a
fixture's fire-and-forget posts that machinery cost about as much as the request itself).
The requests that come due in one turn of the event loop are written together: with
`pipeline`, up to PIPELINE_DEPTH of them back to back on one connection (HTTP/1.1
pipelining: each is still a request of its own, answered on its own and in order), which
saves a system call and a wake-up on each side per request; without, one request at a time
per connection, as Twilio posts. One timer sweeps the connections for answers overdue, as
each request's own timeout would.
"""

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from activities.providers.http1 import Origin

# What a request's answer is given to: its status, or None if none came (no connection,
# closed before the answer, or overdue).
Answered = Callable[[int | None], None]
SWEEP_SECONDS = 1.0
# Requests in flight on one pipelined connection at most.
PIPELINE_DEPTH = 16


class Route:
    """The requests to one origin and the connections that carry them. A poster's caller
    keeps the route it posts to (`CallbackPoster.route`): no per-request lookup of the
    origin (a dataclass, hashed in Python) in the poster's tables."""

    __slots__ = ("connecting", "flushing", "free", "open", "origin", "waiting")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.waiting: deque[tuple[bytes, Answered]] = deque()
        # Connections with room for more requests (none in flight, without `pipeline`).
        self.free: set[_Connection] = set()
        self.open: set[_Connection] = set()
        self.connecting = 0
        # Whether a flush of `waiting` is due at the end of this turn of the event loop.
        self.flushing = False


class _Connection(asyncio.Protocol):
    def __init__(self, poster: "CallbackPoster", route: Route) -> None:
        self._poster = poster
        self._route = route
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        # The requests written and not yet answered: when each was written, and its callback.
        self.in_flight: deque[tuple[float, Answered]] = deque()
        self._reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, requests: list[tuple[bytes, Answered]]) -> None:
        assert self.transport is not None
        now = self._poster.loop.time()
        self.in_flight.extend((now, answered) for _, answered in requests)
        self.transport.write(b"".join(request for request, _ in requests))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        if self._reusable and self.transport is not None and not self.transport.is_closing():
            self._poster.ready(self._route, self)

    def on_message_complete(self) -> None:
        if not self.in_flight:
            return
        _, answered = self.in_flight.popleft()
        if not self._parser.should_keep_alive():
            self._reusable = False
            self.close()
        answered(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._poster.lost(self._route, self)
        in_flight, self.in_flight = self.in_flight, deque()
        for _, answered in in_flight:
            answered(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class CallbackPoster:
    """Up to `connections` keep-alive connections per origin; requests beyond wait in order."""

    def __init__(self, *, connections: int, timeout: float, pipeline: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.pipeline = pipeline
        self._limit = connections
        self._timeout = timeout
        self._routes: dict[Origin, Route] = {}
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def _depth(self) -> int:
        return PIPELINE_DEPTH if self.pipeline else 1

    def route(self, origin: Origin) -> Route:
        """The route to post requests for `origin` to (one per origin)."""
        route = self._routes.get(origin)
        if route is None:
            route = self._routes[origin] = Route(origin)
        return route

    def post(self, route: Route, request: bytes, answered: Answered) -> None:
        """Write `request` (an HTTP/1.1 request whole, for the route's origin); `answered` is
        called with the answer's status, or None. Written at the end of this turn of the
        event loop, with the other requests due in it."""
        route.waiting.append((request, answered))
        if not route.flushing:
            route.flushing = True
            self.loop.call_soon(self._flush, route)

    def _flush(self, route: Route) -> None:
        """Write the requests waiting on the connections with room; open more for those
        left, up to the limit."""
        route.flushing = False
        waiting, free = route.waiting, route.free
        while waiting and free:
            connection = free.pop()
            room = self._depth - len(connection.in_flight)
            connection.send([waiting.popleft() for _ in range(min(room, len(waiting)))])
            if len(connection.in_flight) < self._depth:
                free.add(connection)
        if waiting:
            self._grow(route)

    def _grow(self, route: Route) -> None:
        wanted = -(-len(route.waiting) // self._depth) - route.connecting
        room = self._limit - len(route.open) - route.connecting
        for _ in range(max(0, min(wanted, room))):
            route.connecting += 1
            task = self.loop.create_task(self._connect(route))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, route: Route) -> None:
        origin = route.origin
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await self.loop.create_connection(
                    lambda: _Connection(self, route), origin.host, origin.port
                )
        except (OSError, TimeoutError):
            route.connecting -= 1
            # Nothing listens: the requests waiting now get no answer (none was sent).
            waiting, route.waiting = route.waiting, deque()
            for _, answered in waiting:
                answered(None)
            return
        route.connecting -= 1
        route.open.add(connection)
        self.ready(route, connection)

    def ready(self, route: Route, connection: _Connection) -> None:
        """`connection` has room again: it takes requests waiting."""
        if len(connection.in_flight) < self._depth:
            route.free.add(connection)
        if route.waiting and not route.flushing:
            self._flush(route)

    def lost(self, route: Route, connection: _Connection) -> None:
        route.open.discard(connection)
        route.free.discard(connection)
        if route.waiting:
            self._grow(route)

    def _sweep(self) -> None:
        now = self.loop.time()
        for route in self._routes.values():
            for connection in list(route.open):
                if connection.in_flight and now - connection.in_flight[0][0] > self._timeout:
                    connection.close()
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    async def close(self) -> None:
        self._sweeper.cancel()
        for task in self._tasks:
            task.cancel()
        for route in self._routes.values():
            for connection in list(route.open):
                connection.close()
        for route in self._routes.values():
            waiting, route.waiting = route.waiting, deque()
            for _, answered in waiting:
                answered(None)
