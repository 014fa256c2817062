"""The ceilings: bare asyncio HTTP loops posting the same messages to the same emulator.

Two clients, because the answer depends on it: aiohttp, the usual asyncio HTTP client (the
ceiling the targets are set against), and Herald's own lean HTTP/1.1 client alone, without
twilio's request building, Temporal or PostgreSQL: what this machine can do at most.

Each form is made as the worker makes it (`message_form`) and the lean client encodes it as
Herald's seam does (`form_body`). Without a `status_callback` it is To, From and Body alone,
the ceiling the targets are set against; with one, each message names its send in it as a
batch's messages do: the form Herald posts, which costs the carrier more to read (the
emulator about 5 us a message: docs/PERFORMANCE.md, 2026-12-05, evening).
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import ClientSession, TCPConnector

from activities.providers.http1 import Http1Pool
from activities.providers.twilio import basic_auth, form_body, message_form
from store.receipts import KeyedUrls

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
    status_callback: str | None,
    lean: bool = False,
) -> tuple[int, float]:
    """POST every (to, body) with `concurrency` requests in flight; (accepted, seconds).
    Each message names its send in `status_callback` as a batch's do (the emulator posts no
    callback when the stack's are off). `lean` posts with Herald's HTTP/1.1 client instead
    of aiohttp."""
    endpoint = f"{url}/2010-04-01/Accounts/{account_sid}/Messages.json"
    headers = {
        "Authorization": basic_auth(account_sid, auth_token),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    pending = iter(enumerate(messages))
    keyed = KeyedUrls(status_callback, uuid.uuid4()) if status_callback else None
    accepted = 0

    async def lane(post: Post) -> None:
        nonlocal accepted
        for seq, (to, body) in pending:
            form = message_form(
                to=to,
                from_=agent_number,
                body=body,
                status_callback=keyed.of(seq, 1) if keyed else None,
                content_sid=None,
                content_variables=None,
            )
            # Awaited first: `accepted += await ...` would read `accepted` before the wait.
            ok = await post(form)
            accepted += ok

    started = time.perf_counter()
    if lean:
        pool = Http1Pool(connections=concurrency, timeout=60)

        async def post_lean(form: dict[str, str]) -> bool:
            body = form_body(form).encode()
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
