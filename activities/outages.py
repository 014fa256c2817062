"""Riding out a PostgreSQL outage (a restart, a failover) inside an activity, or across its
attempts."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from store.db import UNAVAILABLE

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How long a send activity holding the carrier's answers waits for PostgreSQL to come back
# (a restart, a failover) before it gives up, leaving its rows to end `uncertain`.
OUTAGE_WAIT_SECONDS = 60.0


async def through_outages(call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, and again while PostgreSQL is unreachable, heartbeating, for up to
    OUTAGE_WAIT_SECONDS; what it returns. Every statement of a send activity that has
    claimed its rows goes through here: an activity that failed would be retried, and its
    retry would find the rows still `sending` and make them `uncertain`, sent or not.

    Its heartbeats carry the details the attempt before left (SliceHeartbeat): the server
    keeps only the last heartbeat's, and one without them would leave an attempt that dies
    in the outage nothing of what the attempts before it had carried."""
    deadline = time.monotonic() + OUTAGE_WAIT_SECONDS
    pause = 0.1
    while True:
        try:
            return await call()
        except UNAVAILABLE as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database unavailable; waiting until it is back", error=repr(error))
        activity.heartbeat(*activity.info().heartbeat_details)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


async def outages_uncounted(call: Callable[[], Awaitable[T]], *, attempts: int) -> T:
    """Run `call`, the body of an activity whose retry policy has no attempt cap; what it
    returns. While PostgreSQL is unreachable the attempt fails as it is, to be retried until
    the database is back however long that takes; any other error is final (not retryable)
    from attempt `attempts` on. A policy's `maximum_attempts` cannot tell the two apart: a
    restart of a few seconds used up its attempts and ended the work for good."""
    try:
        return await call()
    except UNAVAILABLE:
        raise
    except Exception as error:
        if activity.info().attempt < attempts:
            raise
        # The type and message the SDK would give the error, so the workflow sees the same.
        raise ApplicationError(str(error), type=type(error).__name__, non_retryable=True) from error
