"""Riding out a PostgreSQL outage (a restart, a failover) inside a send activity."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from temporalio import activity

from store.db import UNAVAILABLE

log = structlog.get_logger(__name__)

# How long a send activity holding the carrier's answers waits for PostgreSQL to come back
# (a restart, a failover) before it gives up, leaving its rows to end `uncertain`.
OUTAGE_WAIT_SECONDS = 60.0


async def through_outages(write: Callable[[], Awaitable[object]]) -> None:
    """Run `write`, and again while PostgreSQL is unreachable, heartbeating, for up to
    OUTAGE_WAIT_SECONDS. The carrier's answers are worth the wait: an activity that failed
    here would be retried, and its retry would find these rows `sending` and make them
    `uncertain`."""
    deadline = time.monotonic() + OUTAGE_WAIT_SECONDS
    pause = 0.1
    while True:
        try:
            await write()
            return
        except UNAVAILABLE as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database unavailable; outcomes kept until it is back", error=repr(error))
        activity.heartbeat()
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)
