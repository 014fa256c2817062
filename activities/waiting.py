"""Waiting for an event, for at most a while, without losing a cancel."""

import asyncio
import contextlib


async def set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it is set.

    Not `asyncio.wait_for`: on Python 3.11 a cancel that comes as the event is set is lost
    (CPython gh-86296), and the cancelled task goes on waiting. The API's receipts applier
    hung its process's shutdown that way."""
    if seconds > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
    return event.is_set()
