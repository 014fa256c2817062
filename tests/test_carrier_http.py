"""The carrier's HTTP/1.1 client against real servers: aiohttp's for well-formed answers,
raw sockets for misbehaving ones, TLS with a certificate made for the test."""

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from activities.providers import http1
from activities.providers.http1 import ConnectFailed, Http1Pool, NoAnswer, split_url
from deploy.local.processes import free_port
from tests.support.web import served

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "host": request.host,
            "body": (await request.read()).decode(),
            "peer": request.transport.get_extra_info("peername")[1] if request.transport else 0,
        },
        status=201,
        headers={"Retry-After": "7"},
    )


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b'{"parts": ', b"[1, 2, ", b"3]}"):
        await response.write(part)
    await response.write_eof()
    return response


async def closing(request: web.Request) -> web.Response:
    return web.Response(text="bye", headers={"Connection": "close"})


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/closing", closing)
    async with served(app) as url:
        yield url


async def raw_server(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def no_answer_from(handler: Handler, *, pool_timeout: float) -> NoAnswer:
    """What one POST to a raw server running `handler` raises."""
    server, url = await raw_server(handler)
    try:
        with pytest.raises(NoAnswer) as raised:
            pool = Http1Pool(connections=1, timeout=pool_timeout)
            await pool.request("POST", f"{url}/x", headers={}, body=b"x")
    finally:
        server.close()
    return raised.value


def test_split_url_keeps_the_query_and_names_the_default_port() -> None:
    origin, target = split_url("https://api.twilio.com/2010-04-01/Messages.json?a=1")
    assert (origin.scheme, origin.host, origin.port) == ("https", "api.twilio.com", 443)
    assert origin.host_header == "api.twilio.com"
    assert target == "/2010-04-01/Messages.json?a=1"
    with pytest.raises(ValueError, match="not an http"):
        split_url("ftp://example.com/file")


async def test_requests_reuse_one_keep_alive_connection(server_url: str) -> None:
    pool = Http1Pool(connections=4, timeout=5)
    answers = [
        await pool.request(
            "POST", f"{server_url}/echo", headers={"X-Test": "1"}, body=f"n={i}".encode()
        )
        for i in range(5)
    ]
    await pool.close()
    assert [a.status for a in answers] == [201] * 5
    sent = [json.loads(a.body) for a in answers]
    assert [s["body"] for s in sent] == [f"n={i}" for i in range(5)]
    assert {s["peer"] for s in sent} == {sent[0]["peer"]}, "one connection carried them all"
    assert answers[0].headers["retry-after"] == "7"


async def test_a_connection_idle_too_long_is_replaced(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second of idleness allowed: the event loop this test shares with the session's worker
    # can stall for tenths of a second on a loaded machine.
    monkeypatch.setattr(http1, "IDLE_SECONDS", 1.0)
    pool = Http1Pool(connections=1, timeout=5)
    peers = []
    for pause in (0, 0.05, 1.5):
        await asyncio.sleep(pause)
        answer = await pool.request("POST", f"{server_url}/echo", headers={}, body=b"x")
        peers.append(json.loads(answer.body)["peer"])
    await pool.close()
    assert peers[0] == peers[1] != peers[2]


async def test_query_parameters_and_host_reach_the_server(server_url: str) -> None:
    pool = Http1Pool(connections=1, timeout=5)
    answer = await pool.request(
        "GET", f"{server_url}/echo", headers={}, params={"PageSize": 2, "To": "+1 415"}
    )
    await pool.close()
    sent = json.loads(answer.body)
    assert sent["method"] == "GET"
    assert sent["path"] == "/echo?PageSize=2&To=%2B1+415"
    assert sent["host"] == server_url.removeprefix("http://")


async def test_a_chunked_answer_is_read_whole(server_url: str) -> None:
    pool = Http1Pool(connections=1, timeout=5)
    answer = await pool.request("GET", f"{server_url}/chunked", headers={})
    again = await pool.request("GET", f"{server_url}/echo", headers={})
    await pool.close()
    assert answer.body == b'{"parts": [1, 2, 3]}'
    assert again.status == 201


async def test_concurrent_requests_stay_within_the_connection_limit(server_url: str) -> None:
    pool = Http1Pool(connections=3, timeout=5)
    answers = await asyncio.gather(
        *(pool.request("POST", f"{server_url}/echo", headers={}, body=b"x") for _ in range(30))
    )
    await pool.close()
    peers = {json.loads(a.body)["peer"] for a in answers}
    assert len(answers) == 30
    assert 1 <= len(peers) <= 3


async def test_connection_close_is_honoured(server_url: str) -> None:
    pool = Http1Pool(connections=1, timeout=5)
    first = await pool.request("GET", f"{server_url}/closing", headers={})
    second = await pool.request("GET", f"{server_url}/closing", headers={})
    await pool.close()
    assert (first.body, second.body) == (b"bye", b"bye")


async def test_a_refused_connection_is_connect_failed() -> None:
    pool = Http1Pool(connections=1, timeout=2)
    with pytest.raises(ConnectFailed):
        await pool.request("POST", f"http://127.0.0.1:{free_port()}/x", headers={}, body=b"x")


async def test_silence_after_the_request_is_no_answer() -> None:
    received = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        await asyncio.sleep(5)
        writer.close()

    error = await no_answer_from(silent, pool_timeout=0.3)
    assert "no answer within" in str(error)
    assert received.is_set()


async def test_a_connection_dropped_mid_answer_is_no_answer() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"sid"')
        await writer.drain()
        writer.close()

    assert "closed before the answer" in str(await no_answer_from(half, pool_timeout=5))


async def test_garbage_is_no_answer() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    assert "malformed" in str(await no_answer_from(garbage, pool_timeout=5))


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    connections = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # a keep-alive timeout, without saying `Connection: close`

    server, url = await raw_server(once)
    pool = Http1Pool(connections=1, timeout=5)
    first = await pool.request("POST", f"{url}/x", headers={}, body=b"x")
    await asyncio.sleep(0.2)
    second = await pool.request("POST", f"{url}/x", headers={}, body=b"x")
    await pool.close()
    server.close()
    assert (first.body, second.body, connections) == (b"ok", b"ok", 2)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    new_key = ["-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(
        ["openssl", "req", "-x509", "-days", "1", *new_key, *subject],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_verifies_the_server_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "localhost", port, ssl_context=server_context).start()
    try:
        trusting = Http1Pool(
            connections=1, timeout=5, ssl_context=ssl.create_default_context(cafile=cert)
        )
        answer = await trusting.request("POST", f"https://localhost:{port}/echo", headers={})
        await trusting.close()
        assert answer.status == 201
        with pytest.raises(ConnectFailed):
            await Http1Pool(connections=1, timeout=5).request(
                "POST", f"https://localhost:{port}/echo", headers={}
            )
    finally:
        await runner.cleanup()


async def test_each_request_goes_out_byte_for_byte_as_written_whole() -> None:
    # The head is made once per method, URL, query and headers (http1.request_head): every
    # request, the first and those after it, must still be the one its parts make.
    seen: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = next(
                (
                    int(line[15:])
                    for line in head.split(b"\r\n")
                    if line.startswith(b"Content-Length")
                ),
                0,
            )
            seen.append(head + await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server, url = await raw_server(recording)
    pool = Http1Pool(connections=1, timeout=5)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    try:
        for body in (b"To=%2B1555&Body=hi", b"To=%2B1666&Body=hello+there", b""):
            await pool.request("POST", f"{url}/2010/Messages.json", headers=headers, body=body)
        await pool.request("GET", f"{url}/list?a=1", headers={"X": "y"}, params={"To": "+1 2"})
        await pool.request("GET", f"{url}/list", headers={})
    finally:
        await pool.close()
        server.close()
    host = url.removeprefix("http://")
    post = (
        f"POST /2010/Messages.json HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"
    ).encode()
    assert seen == [
        post + b"Content-Length: 18\r\n\r\nTo=%2B1555&Body=hi",
        post + b"Content-Length: 27\r\n\r\nTo=%2B1666&Body=hello+there",
        post + b"Content-Length: 0\r\n\r\n",
        f"GET /list?a=1&To=%2B1+2 HTTP/1.1\r\nHost: {host}\r\nX: y\r\n\r\n".encode(),
        f"GET /list HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
    ]
