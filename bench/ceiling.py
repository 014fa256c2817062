"""The ceiling: a bare asyncio HTTP loop posting the same messages to the same emulator."""

import asyncio
import time
from collections.abc import Iterable

from aiohttp import ClientSession, TCPConnector, encode_basic_auth


async def post_all(
    *,
    url: str,
    account_sid: str,
    auth_token: str,
    agent_number: str,
    messages: Iterable[tuple[str, str]],
    concurrency: int,
) -> tuple[int, float]:
    """POST every (to, body) with `concurrency` requests in flight; (accepted, seconds)."""
    endpoint = f"{url}/2010-04-01/Accounts/{account_sid}/Messages.json"
    headers = {"Authorization": encode_basic_auth(account_sid, auth_token)}
    pending = iter(messages)
    accepted = 0

    async def lane(session: ClientSession) -> None:
        nonlocal accepted
        for to, body in pending:
            form = {"To": to, "From": agent_number, "Body": body}
            async with session.post(endpoint, data=form, headers=headers) as response:
                await response.read()
                accepted += response.status == 201

    started = time.perf_counter()
    async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
    return accepted, time.perf_counter() - started
