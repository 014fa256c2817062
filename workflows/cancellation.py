"""A run's work shielded from a Temporal cancellation, which the run passes on to it."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio import workflow

T = TypeVar("T")


async def shielded(work: asyncio.Task[T], patch: str, pass_on: Callable[[], Awaitable[None]]) -> T:
    """The outcome of `work`, the run's work in a task of its own. A Temporal cancellation
    (`temporal workflow cancel`, the web UI's Cancel) reaches the run's main task, which
    awaits this, not `work`: `pass_on` tells the work, which ends as the workflow ends such a
    run. Under `patch` only: in runs recorded before it, the cancellation reaches what the
    work awaits, as it did. Work done in the same workflow task as the cancellation stands
    (`pass_on` may still act on it: `work` is done)."""
    while True:
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.cancelled():
                raise  # the work itself was cancelled: the run is evicted from the cache
            if not workflow.patched(patch):
                work.cancel()
                return await work
            await pass_on()
