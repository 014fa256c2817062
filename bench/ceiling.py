"""The ceilings: bare asyncio HTTP loops posting the same messages to the same emulator.

Two clients, because the answer depends on it: aiohttp, the usual asyncio HTTP client (the
ceiling the targets are set against), and Herald's own lean HTTP/1.1 client alone, without
twilio's request building, Temporal or PostgreSQL: what this machine can do at most.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlencode

from aiohttp import ClientSession, TCPConnector

from activities.providers.http1 import Http1Pool
from activities.providers.twilio import basic_auth

# Posts one form and says whether the carrier accepted it.
Post = Callable[[dict[str, str]], Awaitable[bool]]


async def post_all(
    *,
    url: str,
    account_sid: str,
    auth_token: str,
    agent_number: str,
    messages: Iterable[tuple[str, str]],
    concurrency: int,
    lean: bool = False,
) -> tuple[int, float]:
    """POST every (to, body) with `concurrency` requests in flight; (accepted, seconds).
    `lean` posts with Herald's HTTP/1.1 client instead of aiohttp."""
    endpoint = f"{url}/2010-04-01/Accounts/{account_sid}/Messages.json"
    headers = {
        "Authorization": basic_auth(account_sid, auth_token),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    pending = iter(messages)
    accepted = 0

    async def lane(post: Post) -> None:
        nonlocal accepted
        for to, body in pending:
            # Awaited first: `accepted += await ...` would read `accepted` before the wait.
            ok = await post({"To": to, "From": agent_number, "Body": body})
            accepted += ok

    started = time.perf_counter()
    if lean:
        pool = Http1Pool(connections=concurrency, timeout=60)

        async def post_lean(form: dict[str, str]) -> bool:
            body = urlencode(form).encode()
            answer = await pool.request("POST", endpoint, headers=headers, body=body)
            return answer.status == 201

        try:
            await asyncio.gather(*(lane(post_lean) for _ in range(concurrency)))
        finally:
            await pool.close()
    else:
        async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:

            async def post_aiohttp(form: dict[str, str]) -> bool:
                async with session.post(endpoint, data=form, headers=headers) as response:
                    await response.read()
                    return response.status == 201

            await asyncio.gather(*(lane(post_aiohttp) for _ in range(concurrency)))
    return accepted, time.perf_counter() - started
