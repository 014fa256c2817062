"""SSRF: which addresses a webhook may reach, at request time and at delivery time."""

import asyncio
import ipaddress
import re
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pydantic
import pytest

import egress
from activities.webhooks import DeliveryAttempt, post_event
from egress import PinnedTransport, UnsafeURL, checked_addresses, refusal
from settings import Settings
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.production import PRODUCTION
from tests.support.stack import Account, WebhookReceiver, api_client

REFUSED = [
    "127.0.0.1",  # loopback
    "::1",
    "10.1.2.3",  # private
    "172.16.0.1",
    "192.168.1.1",
    "169.254.1.1",  # link-local
    "169.254.169.254",  # cloud metadata
    "fe80::1",
    "fc00::1",  # unique local
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "ff02::1",
    "0.0.0.0",  # unspecified
    "::",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "::ffff:8.8.8.8",  # IPv4 mapped in IPv6, even of a public address
    "::ffff:127.0.0.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::808:808",  # NAT64, even of a public address
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "192.0.0.8",  # IETF protocol assignments, which Python 3.11 counts as global
    "192.0.0.10",
    "192.88.99.1",  # 6to4 relay anycast
    "fec0::1",  # site-local
    "3fff::1",  # documentation (RFC 9637)
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_loopback=False) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_loopback=False) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.1", "::1"])
def test_loopback_only_with_the_setting(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_loopback=True) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) is not None


def resolving(records: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        return records.get(host, [])

    return resolve


@pytest.mark.parametrize(
    ("url", "records", "ok"),
    [
        ("https://hooks.example/x", ["93.184.216.34"], True),
        ("https://hooks.example/x", ["93.184.216.34", "2606:4700:4700::1111"], True),
        # One bad record among good ones is enough to refuse: a connection may use any.
        ("https://hooks.example/x", ["93.184.216.34", "10.0.0.7"], False),
        ("https://hooks.example/x", ["2606:4700:4700::1111", "::ffff:10.0.0.7"], False),
        ("https://hooks.example/x", [], False),  # does not resolve
        ("ftp://hooks.example/x", ["93.184.216.34"], False),
        ("file:///etc/passwd", [], False),
        ("http://[::1]:8080/x", [], False),
        ("http://169.254.169.254/latest/meta-data/", [], False),
        ("http://8.8.8.8/x", [], True),
    ],
)
async def test_every_resolved_address_is_checked(url: str, records: list[str], ok: bool) -> None:
    check = checked_addresses(
        url, allow_loopback=False, resolver=resolving({"hooks.example": records})
    )
    if ok:
        expected = records or [httpx.URL(url).host]
        assert [str(a) for a in await check] == expected
    else:
        with pytest.raises(UnsafeURL):
            await check


async def test_a_name_no_request_can_be_made_to_is_refused_though_it_resolves() -> None:
    """☃.com as a URL holds it (`xn--n3h.com`): it resolves, but IDNA 2008 refuses the
    symbol, so every request to it failed as it was built, before any connection: its
    events were retried, never posted, for good."""
    resolver = resolving({"xn--n3h.com": ["93.184.216.34"]})

    with pytest.raises(UnsafeURL) as refused:
        await checked_addresses("https://xn--n3h.com/hook", allow_loopback=False, resolver=resolver)

    assert str(refused.value).startswith(
        "xn--n3h.com is not a host name a request can be made to: "
    )


async def test_a_bad_port_is_told_as_one() -> None:
    with pytest.raises(UnsafeURL) as refused:
        await checked_addresses("http://hooks.example:80a/x", allow_loopback=False)

    assert str(refused.value).startswith("bad port: ")


async def test_a_post_to_a_name_no_request_can_be_made_to_is_a_failed_attempt() -> None:
    """Such a URL stored before the check refused it: its post fails as a post does."""
    async with httpx.AsyncClient() as http:
        attempt = await post_event(http, "https://xn--n3h.com/hook", {}, within_seconds=5)

    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("InvalidCodepoint: ")


async def test_a_refusal_does_not_tell_what_a_name_resolves_to_or_whether_it_does() -> None:
    resolver = resolving({"herald-postgres.internal": ["10.96.0.12"]})

    with pytest.raises(UnsafeURL) as internal:
        await checked_addresses(
            "https://herald-postgres.internal/x", allow_loopback=False, resolver=resolver
        )
    with pytest.raises(UnsafeURL) as unknown:
        await checked_addresses(
            "https://nothing.internal/x", allow_loopback=False, resolver=resolver
        )

    assert str(internal.value) == "herald-postgres.internal does not resolve to a public address"
    assert str(unknown.value) == "nothing.internal does not resolve to a public address"


async def test_a_lookup_that_never_ends_holds_none_of_the_event_loops_resolver_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller's name server that never answers: its lookups time out and leave their
    threads waiting, which must not be the ones the carrier's own lookups need."""
    released = threading.Event()
    lookup = socket.getaddrinfo
    stuck_on: set[str] = set()

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "stuck.example":
            stuck_on.add(threading.current_thread().name)
            released.wait(30)
            raise socket.gaierror("stuck")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(egress, "RESOLVE_SECONDS", 0.2)
    loop = asyncio.get_running_loop()
    try:
        stuck = [
            checked_addresses("https://stuck.example/x", allow_loopback=False)
            for _ in range(3 * egress.LOOKUP_THREADS)
        ]
        refused = await asyncio.gather(*stuck, return_exceptions=True)
        async with asyncio.timeout(5):
            carrier = await loop.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)
    finally:
        released.set()

    assert all(isinstance(r, UnsafeURL) for r in refused)
    assert carrier
    # However many threads the loop's own executor has (this machine's cores decide).
    assert stuck_on and all(name.startswith("egress-dns") for name in stuck_on)


async def test_delivery_connects_to_the_checked_address_with_the_original_host(
    webhooks: WebhookReceiver,
) -> None:
    run = secrets.token_hex(6)
    port = httpx.URL(webhooks.base_url).port
    transport = PinnedTransport(
        allow_loopback=True, resolver=resolving({"hooks.example": ["127.0.0.1"]})
    )
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.post(f"http://hooks.example:{port}/{run}", json={"status": "x"})
    assert response.status_code == 204
    assert webhooks.posts[run][0].headers["Host"] == f"hooks.example:{port}"


@pytest.mark.parametrize(
    ("records", "allow_loopback"), [(["10.0.0.9"], True), (["127.0.0.1"], False)]
)
async def test_delivery_to_a_refused_address_never_connects(
    webhooks: WebhookReceiver, records: list[str], allow_loopback: bool
) -> None:
    run = secrets.token_hex(6)
    port = httpx.URL(webhooks.base_url).port
    transport = PinnedTransport(
        allow_loopback=allow_loopback, resolver=resolving({"rebound.example": records})
    )
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError, match="refused"):
            await http.post(f"http://rebound.example:{port}/{run}", json={})
    assert not webhooks.posts[run]


async def test_the_api_refuses_internal_webhooks_with_400(
    api: httpx.AsyncClient, account: Account, settings: Settings, webhooks: WebhookReceiver
) -> None:
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [["+12125550123"]]))
    batch = {
        "file_id": file_id,
        "global": {"agent_number": account.agent_number, "agent_message": "hi"},
    }
    send = {
        "user_number": unique_numbers(1)[0],
        "agent_number": account.agent_number,
        "agent_message": "hi",
    }
    refused = [
        ("/v1/sms/batch", batch | {"status_webhook": "http://10.1.2.3/hook"}),
        ("/v1/sms/batch", batch | {"status_webhook": "http://169.254.169.254/latest"}),
        ("/v1/sms/batch", batch | {"status_webhook": "ftp://example.com/hook"}),
        # Held as `xn--n3h.com`, which no request can be made to.
        ("/v1/sms/batch", batch | {"status_webhook": "https://\u2603.com/hook"}),
        ("/v1/sms/send", send | {"webhook": "http://[::ffff:10.0.0.1]/hook"}),
        ("/v1/sms/numbers", {"number": unique_numbers(1)[0], "webhook": "http://10.0.0.7/"}),
    ]
    for path, body in refused:
        response = await api.post(path, headers=account.headers, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["errors"][0]["error"] == "INVALID_WEBHOOK_URL", response.text

    patched = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}",
        headers=account.headers,
        json={"webhook": "http://192.168.1.1/hook"},
    )
    assert patched.status_code == 400, patched.text
    assert patched.json()["errors"][0]["error"] == "INVALID_WEBHOOK_URL"

    strict = settings.model_copy(update={"allow_loopback_webhooks": False})
    async with api_client(strict) as client:
        body = batch | {"status_webhook": webhooks.url("loopback")}
        response = await client.post("/v1/sms/batch", headers=account.headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["error"] == "INVALID_WEBHOOK_URL"


@pytest.mark.parametrize(
    ("env", "loopback", "accepted"),
    [
        ("development", "true", True),
        ("production", "false", True),
        ("production", "true", False),
    ],
)
def test_production_refuses_loopback_webhooks(
    monkeypatch: pytest.MonkeyPatch, env: str, loopback: str, accepted: bool
) -> None:
    if env == "production":
        for key, value in PRODUCTION.items():
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("HERALD_ENV", env)
    monkeypatch.setenv("HERALD_ALLOW_LOOPBACK_WEBHOOKS", loopback)

    if accepted:
        assert Settings().allow_loopback_webhooks == (loopback == "true")
    else:
        with pytest.raises(pydantic.ValidationError, match="HERALD_ALLOW_LOOPBACK_WEBHOOKS=true"):
            Settings()


@asynccontextmanager
async def raw_receiver(
    answer: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[int, list[int]]]:
    """A receiver on 127.0.0.1 that reads each request's head and answers with `answer`, its
    connections kept open; yields its port and a list that counts its connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                await answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()


async def answer_204(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await writer.drain()


async def post_to(port: int, records: dict[str, list[str]], *hosts: str) -> list[DeliveryAttempt]:
    """A post to each of `hosts` (names `records` resolves), through one client."""
    transport = PinnedTransport(allow_loopback=True, resolver=resolving(records))
    async with httpx.AsyncClient(timeout=30, transport=transport) as http:
        return [
            await post_event(http, f"http://{host}:{port}/hook", {"a": 1}, within_seconds=1)
            for host in hosts
        ]


HOOKS = {"hooks.example": ["127.0.0.1"]}


async def test_a_post_is_done_with_at_its_status_line_however_long_the_answer() -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        while True:
            writer.write(b"x" * 65536)
            await writer.drain()

    async with raw_receiver(endless) as (port, _), asyncio.timeout(10):
        [attempt] = await post_to(port, HOOKS, "hooks.example")

    assert (attempt.status_code, attempt.error) == (200, None)


async def test_a_receiver_dribbling_its_answer_fails_the_post_in_its_time() -> None:
    async def dribble(writer: asyncio.StreamWriter) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.3)

    async with raw_receiver(dribble) as (port, _), asyncio.timeout(5):
        [attempt] = await post_to(port, HOOKS, "hooks.example")

    assert (attempt.status_code, attempt.error) == (None, "TimeoutError: no answer within 1 s")


async def test_a_connection_is_never_reused_for_another_host_at_the_same_address() -> None:
    """Two accounts' receivers behind one address: each post connects anew, so TLS would
    be checked for each one's own name."""
    records = {"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]}
    async with raw_receiver(answer_204) as (port, connections):
        attempts = await post_to(port, records, "a.example", "b.example")

    assert [a.status_code for a in attempts] == [204, 204], attempts
    assert len(connections) == 2


async def test_the_next_checked_address_is_tried_when_one_does_not_connect() -> None:
    """127.0.0.2 has no receiver on the port; 127.0.0.1 has."""
    records = {"hooks.example": ["127.0.0.2", "127.0.0.1"]}
    async with raw_receiver(answer_204) as (port, connections):
        [attempt] = await post_to(port, records, "hooks.example")

    assert attempt.status_code == 204, attempt
    assert len(connections) == 1


class DroppedAt(httpx.AsyncBaseTransport):
    """A network whose packets to `address` are dropped: connecting there times out (after
    the time the request gives it to connect, which it records); elsewhere, the real one."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._real = httpx.AsyncHTTPTransport()
        self.connect_timeouts: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == self._address:
            self.connect_timeouts.append(request.extensions["timeout"]["connect"])
            raise httpx.ConnectTimeout("timed out", request=request)
        return await self._real.handle_async_request(request)


async def test_an_address_that_drops_the_connection_leaves_the_next_its_share() -> None:
    dropped = DroppedAt("127.0.0.2")
    transport = PinnedTransport(
        allow_loopback=True,
        resolver=resolving({"hooks.example": ["127.0.0.2", "127.0.0.1"]}),
        inner=dropped,
    )
    async with raw_receiver(answer_204) as (port, _):
        async with httpx.AsyncClient(timeout=6, transport=transport) as http:
            attempt = await post_event(
                http, f"http://hooks.example:{port}/hook", {"a": 1}, within_seconds=6
            )

    assert attempt.status_code == 204, attempt
    assert dropped.connect_timeouts == [3.0]
