"""activities.waiting: an event awaited for a while, and the cancel that comes meanwhile."""

import asyncio

import pytest

from activities.waiting import set_within


async def test_it_answers_whether_the_event_was_set_in_time() -> None:
    event = asyncio.Event()
    assert await set_within(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await set_within(event, 5) is True
    assert await set_within(event, 0) is True


async def test_a_cancel_that_comes_as_the_event_is_set_is_kept() -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(set_within(event, 5))
    await asyncio.sleep(0)
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
