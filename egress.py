"""Where Herald may send a caller-given URL (webhooks): http(s) to globally routable addresses
only, checked on every resolved address, and connected to the address that was checked.

Without this, a caller could point a webhook at Herald's own network (the database, the
Temporal frontend, a cloud metadata endpoint) and have Herald post to it (SSRF).
"""

import asyncio
import concurrent.futures
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

RESOLVE_SECONDS = 5.0
# A caller names the host, and so may name one whose name server never answers: the system
# resolver waits it out (about 10 s a lookup, past RESOLVE_SECONDS, which stops only the
# waiting). Such lookups run on threads of their own, never the event loop's resolver threads
# (uvloop's are libuv's four), which the carrier's connections and PostgreSQL's reconnections
# need: stuck lookups hold up other webhooks at worst, never sending. (A process stopping
# waits for a lookup under way, as Python joins these threads at exit: the resolver's own
# timeout, some 10-30 s; the API pods' grace is 30 s, the local stack's 15 s, then SIGKILL.)
LOOKUP_THREADS = 8
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="egress-dns")
# Ranges `is_global` lets through (as of Python 3.11) that still reach somewhere they should not.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
METADATA = ipaddress.ip_address("169.254.169.254")
# Ranges Python 3.11's tables count as global that later registries do not: the IETF protocol
# assignments (192.0.0.0/24: NAT64 and TURN anycast, ...), 6to4 relay anycast, IPv6's
# deprecated site-local and its documentation prefix of RFC 9637.
NOT_GLOBAL = (
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("192.88.99.0/24"),
    ipaddress.ip_network("fec0::/10"),
    ipaddress.ip_network("3fff::/20"),
)


class UnsafeURL(ValueError):
    """The URL may not be posted to; the message says why."""


def refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why `address` may not be connected to, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "an IPv4 address mapped in IPv6"
        if address in NAT64 or address in NAT64_LOCAL:
            return "a NAT64 address"
        if address in SIX_TO_FOUR:
            return "a 6to4 address"
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address == METADATA:
        return "the cloud metadata address"
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address.is_link_local, "a link-local address"),
        (address.version == 4 and address in CGNAT, "a carrier-grade NAT address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (
            not address.is_global
            or any(address.version == net.version and address in net for net in NOT_GLOBAL),
            "not a globally routable address",
        ),
    )
    return next((why for refused, why in checks if refused), None)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA record of `host`, looked up on a thread of `_LOOKUPS`."""
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(_LOOKUPS, lookup)
    # In the system's order of preference (RFC 6724), each once.
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """The addresses `url` resolves to, all of them allowed; UnsafeURL otherwise. Every record
    is checked, not one: which one a connection would use is not ours to choose."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("only http and https URLs are allowed")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise UnsafeURL(f"bad port: {error}") from None
    try:
        # The name as a request's Host takes it: a punycode label IDNA 2008 refuses (an
        # emoji domain, say) resolves, but no request to it can be made.
        httpx.URL(url).host  # noqa: B018 - decoding the host is the check
    except (httpx.InvalidURL, UnicodeError) as error:
        raise UnsafeURL(
            f"{parts.hostname} is not a host name a request can be made to: {error}"
        ) from None
    try:
        literal: IPAddress | None = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            async with asyncio.timeout(RESOLVE_SECONDS):
                found = [ipaddress.ip_address(a) for a in await resolver(parts.hostname, port)]
        except (OSError, TimeoutError, ValueError):
            found = []
    for address in found:
        why = refusal(address, allow_loopback=allow_loopback)
        if why is not None and literal is not None:
            raise UnsafeURL(f"{parts.hostname} is {why}")
        if why is not None:
            found = []
    if not found:
        # One answer for a name that does not resolve and one that resolves to no public
        # address: neither its address nor which of the two is told, or a caller could map
        # Herald's own network by the names that exist in it.
        raise UnsafeURL(f"{parts.hostname} does not resolve to a public address")
    return found


class PinnedTransport(httpx.AsyncBaseTransport):
    """Resolves and checks each request's host, then connects to a checked address itself
    (each in turn, until one connects), keeping the original Host header and TLS server name:
    a DNS answer that changes between the check and the connection (rebinding) cannot
    redirect the request.

    No connection is kept for another request: the pool knows a connection by its address,
    not its host name, so another host at the same address (another account's receiver)
    would get it, with TLS checked for the first host's name."""

    def __init__(
        self,
        *,
        allow_loopback: bool,
        resolver: Resolver = system_resolver,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allow_loopback = allow_loopback
        self._resolver = resolver
        self._inner = inner or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            addresses = await checked_addresses(
                str(request.url), allow_loopback=self._allow_loopback, resolver=self._resolver
            )
        except UnsafeURL as error:
            raise httpx.ConnectError(f"refused: {error}", request=request) from None
        url = request.url
        # httpx set the Host header from the original URL already; TLS must name it too.
        extensions = {**request.extensions, "sni_hostname": url.host}
        timeouts = extensions.get("timeout")
        if isinstance(timeouts, dict) and timeouts.get("connect") and len(addresses) > 1:
            # Each address its share of the time to connect, so that one whose packets are
            # dropped leaves the others theirs.
            share = timeouts["connect"] / len(addresses)
            extensions["timeout"] = {**timeouts, "connect": share}
        request.extensions = extensions
        for address in addresses[:-1]:
            request.url = url.copy_with(host=str(address))
            try:
                return await self._inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue  # nothing was sent: the next address
        request.url = url.copy_with(host=str(addresses[-1]))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
