"""A TCP proxy in front of PostgreSQL that loses the answer to one statement after it has
committed, as a connection closed by a restart or a network fault between the commit and its
answer would: the client sees "connection was closed in the middle of operation" and cannot
tell whether its statement ran. Its clients connect without TLS (`sslmode=disable`), so that
the proxy reads the protocol's messages."""

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

# Untyped messages a client may send before its startup message (SSL and GSSAPI requests).
_BEFORE_STARTUP = {80877103, 80877104}


@dataclass
class AnswerLost:
    """Loses the answer to the `nth` execution of a statement whose text holds `statement`:
    the server runs it and says it is ready for the next (its implicit transaction ended),
    then both sides of the connection are closed, the answer never forwarded. `lost` is set
    once an answer with no error was lost (the statement committed), `failed` if the lost
    answer held an error."""

    upstream: tuple[str, int]
    statement: bytes
    nth: int = 1
    port: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    _executions: int = 0

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            server, to_server = await asyncio.open_connection(*self.upstream)
        except OSError:
            to_client.transport.abort()
            return
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
        buffer = bytearray()
        while data := await reader.read(65536):
            buffer += data
            at = 0
            while True:
                if not started:
                    if len(buffer) - at < 8:
                        break
                    length, code = struct.unpack_from("!ii", buffer, at)
                    started = code not in _BEFORE_STARTUP
                    kind, body = b"", at + 4
                else:
                    if len(buffer) - at < 5:
                        break
                    kind = bytes(buffer[at : at + 1])
                    (length,) = struct.unpack_from("!i", buffer, at + 1)
                    length += 1
                    body = at + 5
                if length < 4:
                    raise ValueError("not PostgreSQL's protocol (TLS?)")
                if len(buffer) - at < length:
                    break
                fields = bytes(buffer[body : at + length]).split(b"\0")
                at += length
                if kind == b"P" and self.statement in fields[1]:
                    targets.add(fields[0])
                elif kind == b"B" and fields[1] in targets:
                    self._executions += 1
                    if self._executions == self.nth:
                        losing.set()
            del buffer[:at]
            writer.write(data)
            await writer.drain()

    async def _from_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        # The client waits for the answer to its last statement before it sends the next, so
        # what the server sends once the statement is armed is its answer, from its first byte.
        buffer = bytearray()
        while data := await reader.read(65536):
            if not losing.is_set():
                writer.write(data)
                await writer.drain()
                continue
            buffer += data
            while len(buffer) >= 5:
                (length,) = struct.unpack_from("!i", buffer, 1)
                if length < 4:
                    raise ValueError("not PostgreSQL's protocol (TLS?)")
                if len(buffer) < length + 1:
                    break
                kind = bytes(buffer[:1])
                del buffer[: length + 1]
                if kind == b"E":
                    self.failed = True
                elif kind == b"Z":
                    if not self.failed:
                        self.lost.set()
                    return


@asynccontextmanager
async def answer_lost(
    upstream: tuple[str, int], statement: bytes, nth: int = 1
) -> AsyncIterator[AnswerLost]:
    """An AnswerLost proxy listening on a free local port."""
    proxy = AnswerLost(upstream, statement, nth)
    listener = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    proxy.port = listener.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        listener.close()
        with suppress(Exception):
            await listener.wait_closed()
