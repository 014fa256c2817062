"""A TCP proxy in front of PostgreSQL that loses the answer to one statement after it has
committed, as a connection closed by a restart or a network fault between the commit and its
answer would: the client sees "connection was closed in the middle of operation" and cannot
tell whether its statement ran."""

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

# Untyped messages a client may send before its startup message (SSL and GSSAPI requests).
_BEFORE_STARTUP = {80877103, 80877104}


@dataclass
class AnswerLost:
    """Loses the answer to the first execution of a statement whose text holds `statement`:
    the server runs it and says it is ready for the next (its implicit transaction committed),
    and then both sides of the connection are closed, the answer never forwarded."""

    upstream: tuple[str, int]
    statement: bytes
    port: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _armed: bool = False

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        server, to_server = await asyncio.open_connection(*self.upstream)
        losing = asyncio.Event()
        pumps = [
            asyncio.create_task(self._from_client(client, to_server, losing)),
            asyncio.create_task(self._from_server(server, to_client, losing)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for writer in (to_client, to_server):
            writer.transport.abort()

    async def _from_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        targets: set[bytes] = set()
        started = False
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            while True:
                if not started:
                    if len(buffer) < 8:
                        break
                    (length,) = struct.unpack("!i", buffer[:4])
                    (code,) = struct.unpack("!i", buffer[4:8])
                    started = code not in _BEFORE_STARTUP
                    kind, body_start = b"", 4
                else:
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    (length,) = struct.unpack("!i", buffer[1:5])
                    length += 1
                    body_start = 5
                if len(buffer) < length:
                    break
                body, buffer = buffer[body_start:length], buffer[length:]
                if kind == b"P":
                    name, query = body.split(b"\0")[:2]
                    if self.statement in query:
                        targets.add(name)
                elif kind == b"B" and body.split(b"\0")[1] in targets and not self._armed:
                    self._armed = True
                    losing.set()
            writer.write(data)
            await writer.drain()

    async def _from_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        # The client waits for the answer to its last statement before it sends the next, so
        # what the server sends once the statement is armed is its answer, from its first byte.
        buffer = b""
        while data := await reader.read(65536):
            if not losing.is_set():
                writer.write(data)
                await writer.drain()
                continue
            buffer += data
            while len(buffer) >= 5:
                (length,) = struct.unpack("!i", buffer[1:5])
                if len(buffer) < length + 1:
                    break
                kind, buffer = buffer[:1], buffer[length + 1 :]
                if kind == b"Z":
                    self.lost.set()
                    return


@asynccontextmanager
async def answer_lost(upstream: tuple[str, int], statement: bytes) -> AsyncIterator[AnswerLost]:
    """An AnswerLost proxy listening on a free local port."""
    proxy = AnswerLost(upstream, statement)
    listener = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    proxy.port = listener.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        listener.close()
        with suppress(Exception):
            await listener.wait_closed()
