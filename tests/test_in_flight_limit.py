"""The limit of a carrier account's requests in flight (activities/providers/in_flight.py):
slow start, one decrease per round of throttles, growth only while the limit holds requests
back, places handed over in order and never lost to a cancellation; and the carrier client's
requests (sends, lists) taking their places, against the session's emulator."""

import asyncio
from collections import deque

import pytest

from activities.providers.in_flight import (
    DECREASE,
    FLOOR,
    INITIAL,
    RECOVERY_SECONDS,
    InFlightLimit,
    StoppedWaiting,
)
from settings import Settings
from tests.support.sending import twilio_carrier


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fill(limit: InFlightLimit) -> list[int]:
    """Take every free place; the epochs they were taken under."""
    taken = []
    while (epoch := limit.take()) is not None:
        taken.append(epoch)
    return taken


def flow(limit: InFlightLimit, answers: int, *, throttled: bool | None = False) -> None:
    """`answers` requests answered one at a time, lanes taking every place freed (as a
    busy worker's do), then the rest of those in flight given back with no answer."""
    in_flight = deque(fill(limit))
    for _ in range(answers):
        limit.give_back(in_flight.popleft(), throttled=throttled)
        in_flight.extend(fill(limit))
    for epoch in in_flight:
        limit.give_back(epoch, throttled=None)


def test_an_account_starts_with_a_few_requests_and_doubles_them_each_round() -> None:
    limit = InFlightLimit(ceiling=1000)
    sizes = []
    for _ in range(4):
        sizes.append(limit.limit)
        flow(limit, limit.limit)
    assert sizes == [INITIAL, 2 * INITIAL, 4 * INITIAL, 8 * INITIAL]


def test_the_limit_never_passes_the_ceiling() -> None:
    limit = InFlightLimit(ceiling=60)
    flow(limit, 500)
    assert limit.limit == 60
    assert len(fill(limit)) == 60


def test_throttles_of_one_round_lower_the_limit_once_from_what_was_in_flight() -> None:
    limit = InFlightLimit(ceiling=1000)
    taken = fill(limit)
    # Every request of the round refused: one signal, not INITIAL of them.
    for epoch in taken:
        limit.give_back(epoch, throttled=True)
    assert limit.limit == int(INITIAL * DECREASE)
    # A throttle of a request sent since the decrease lowers it again.
    again = fill(limit)
    limit.give_back(again[0], throttled=True)
    assert limit.limit == int(len(again) * DECREASE)


def test_throttled_throughout_the_limit_stops_at_the_floor() -> None:
    limit = InFlightLimit(ceiling=1000)
    flow(limit, 1000, throttled=True)
    assert limit.limit == FLOOR
    assert len(fill(limit)) == FLOOR


def lowered(limit: InFlightLimit) -> int:
    """The limit after one throttle of a full round."""
    taken = fill(limit)
    limit.give_back(taken.pop(), throttled=True)
    for epoch in taken:
        limit.give_back(epoch, throttled=None)
    return limit.limit


def test_after_a_throttle_the_limit_grows_by_one_a_round() -> None:
    limit = InFlightLimit(ceiling=1000)
    after = lowered(limit)
    assert after == int(INITIAL * DECREASE)
    for _ in range(3):
        flow(limit, limit.limit)
    assert after + 2 <= limit.limit <= after + 3


def test_a_limit_the_requests_do_not_fill_does_not_grow() -> None:
    limit = InFlightLimit(ceiling=1000)
    # One request at a time (a paced sender): far below the limit, which stays.
    for _ in range(500):
        epoch = limit.take()
        assert epoch is not None
        limit.give_back(epoch, throttled=False)
    assert limit.limit == INITIAL
    # No answer (timeout, cancelled): no signal either way.
    flow(limit, 500, throttled=None)
    assert limit.limit == INITIAL


def test_with_no_throttle_for_a_while_the_limit_grows_by_slow_start_again() -> None:
    clock = Clock()
    limit = InFlightLimit(ceiling=1000, clock=clock)
    after = lowered(limit)
    flow(limit, 10)
    assert limit.limit == after  # +10/33: still the same whole number
    clock.now += RECOVERY_SECONDS
    flow(limit, after)
    assert limit.limit == 2 * after


async def test_waiters_get_freed_places_in_order() -> None:
    limit = InFlightLimit(ceiling=1000)
    taken = fill(limit)
    order: list[int] = []

    async def waiter(n: int) -> None:
        await limit.wait()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    # Others wait first: a place freed goes to them, not to a new comer.
    limit.give_back(taken.pop(), throttled=None)
    assert limit.take() is None
    limit.give_back(taken.pop(), throttled=None)
    limit.give_back(taken.pop(), throttled=None)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert limit.in_flight == INITIAL


async def test_a_cancelled_waiter_loses_no_place() -> None:
    limit = InFlightLimit(ceiling=1000)
    taken = fill(limit)
    first = asyncio.create_task(limit.wait())
    second = asyncio.create_task(limit.wait())
    await asyncio.sleep(0)
    # The place is handed to the first the moment it is cancelled: it goes on to the second.
    limit.give_back(taken.pop(), throttled=None)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert limit.in_flight == INITIAL
    # Cancelled while still waiting: removed from the queue.
    third = asyncio.create_task(limit.wait())
    await asyncio.sleep(0)
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    limit.give_back(0, throttled=None)
    assert limit.take() is not None


async def test_a_place_is_given_at_once_when_free_and_in_turn_when_not() -> None:
    limit = InFlightLimit(ceiling=1000)
    taken = [await limit.place() for _ in range(INITIAL)]
    later = asyncio.create_task(limit.place())
    await asyncio.sleep(0)
    assert not later.done()
    limit.give_back(taken.pop(), throttled=None)
    assert await later == 0
    assert limit.in_flight == INITIAL


async def test_a_waiter_told_to_stop_gets_no_place_and_loses_none() -> None:
    limit = InFlightLimit(ceiling=1000)
    taken = fill(limit)
    stopping = asyncio.Event()
    stopped = asyncio.create_task(limit.place(stopping))
    behind = asyncio.create_task(limit.place())
    await asyncio.sleep(0)
    stopping.set()
    with pytest.raises(StoppedWaiting):
        await stopped
    # The place freed next goes to the one behind it.
    limit.give_back(taken.pop(), throttled=None)
    assert await behind == 0
    assert limit.in_flight == INITIAL
    # Given a place and told to stop at once: it stops, and the place goes on.
    granted = asyncio.create_task(limit.place(stopping := asyncio.Event()))
    await asyncio.sleep(0)
    limit.give_back(taken.pop(), throttled=None)
    stopping.set()
    with pytest.raises(StoppedWaiting):
        await granted
    assert limit.in_flight == INITIAL - 1
    assert limit.take() is not None


async def test_the_carriers_list_requests_count_against_the_accounts_limit(
    settings: Settings,
) -> None:
    # Reconciliation's lists are the account's requests too: with every place taken, one
    # waits, and goes once a send gives its place back.
    carrier = twilio_carrier(settings, connections=64)
    try:
        limit = carrier.in_flight_limit()
        taken = fill(limit)
        listing = asyncio.create_task(
            carrier.sent_messages(to="+15550000001", from_="+15550000002")
        )
        await asyncio.sleep(0.2)
        assert not listing.done()
        limit.give_back(taken.pop(), throttled=None)
        assert await asyncio.wait_for(listing, 10) == []
        assert limit.in_flight == len(taken)
    finally:
        await carrier.close()
