"""A slice's waves (activities/sending.py `_Waves`), without the stack: lanes that find their
row's wave being marked wait for it, one wave is marked at a time and only once the outcomes
taken by the one before are written, as they were when the lanes waited on an asyncio.Lock."""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from activities.providers.twilio import SendResult, Verdict
from activities.sending import T, _Waves

ROWS = 61
LANES = 8


class LockedWaves(_Waves):
    """The waves as they were, the lanes waiting on an asyncio.Lock: the reference."""

    def __init__(self, rows: int, size: int, stopping: asyncio.Event) -> None:
        super().__init__(rows, size, stopping)
        self._lock = asyncio.Lock()

    async def on_the_wire(
        self,
        index: int,
        wave: Callable[[int], Awaitable[list[T]]],
        record: Callable[[list[T]], Awaitable[None]],
    ) -> bool:
        if self._tried[index]:
            return self._marked[index]
        recording: asyncio.Future[None] | None = None
        async with self._lock:
            if not self._tried[index]:
                if self._recording is not None:
                    await self._recording
                done = await wave(index)
                if done:
                    recording = self._recording = asyncio.ensure_future(record(done))
        if recording is not None:
            await recording
        return self._marked[index]


async def send_slice(waves_class: type[_Waves], seed: int) -> tuple[list[list[int]], list[bool]]:
    """A slice sent by LANES lanes, each request and statement taking a few random turns of
    the loop; the rows of each wave, and whether each row was this attempt's to send."""
    turns = random.Random(seed)
    waves = waves_class(ROWS, LANES, asyncio.Event())
    results: list[SendResult | None] = [None] * ROWS
    queue = iter(range(ROWS))
    marked: list[list[int]] = []
    written: list[list[int]] = []
    marking = False
    recording: list[int] = []

    async def some_turns() -> None:
        for _ in range(turns.randrange(4)):
            await asyncio.sleep(0)

    async def wave(index: int) -> list[int]:
        nonlocal marking
        assert not marking, "two waves marked at once"
        assert not recording, "a wave marked while the outcomes before it are written"
        marking = True
        done = waves.unrecorded(results)
        rows = waves.next_wave(index)
        await some_turns()
        waves.marked(rows, {i for i in rows if i % 7 != 3}, time.monotonic())
        marked.append(rows)
        marking = False
        return done

    async def record(rows: list[int]) -> None:
        recording.extend(rows)
        await some_turns()
        written.append(rows)
        recording.clear()

    sendable = [False] * ROWS

    async def lane() -> None:
        for index in queue:
            sendable[index] = await waves.on_the_wire(index, wave, record)
            if sendable[index]:
                await some_turns()
                results[index] = SendResult(verdict=Verdict.SENT, sid=f"SM{index}")
                waves.answered(index)

    await asyncio.gather(*(lane() for _ in range(LANES)))
    rest = waves.unrecorded(results, unsent=True)
    written.append(rest)
    assert sorted(i for rows in written for i in rows) == [i for i in range(ROWS) if sendable[i]]
    return marked, sendable


@pytest.mark.parametrize("seed", range(12))
def test_waves_are_marked_as_when_the_lanes_waited_on_a_lock(seed: int) -> None:
    ours = asyncio.run(send_slice(_Waves, seed))
    reference = asyncio.run(send_slice(LockedWaves, seed))

    assert ours == reference
    marked, sendable = ours
    assert sorted(i for rows in marked for i in rows) == list(range(ROWS))
    assert sendable == [i % 7 != 3 for i in range(ROWS)]


def test_a_lane_cancelled_while_it_waits_leaves_the_others_their_wave() -> None:
    async def scenario() -> list[bool]:
        waves = _Waves(4, 4, asyncio.Event())
        release = asyncio.Event()

        async def wave(index: int) -> list[int]:
            await release.wait()
            waves.marked(waves.next_wave(index), {0, 1, 2, 3}, time.monotonic())
            return []

        async def record(rows: list[int]) -> None:
            raise AssertionError("nothing to record")

        first = asyncio.create_task(waves.on_the_wire(0, wave, record))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(waves.on_the_wire(i, wave, record)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        waiting[0].cancel()
        await asyncio.sleep(0)
        release.set()
        answers = [await first, *[await task for task in waiting[1:]]]
        assert waiting[0].cancelled()
        return answers

    assert asyncio.run(scenario()) == [True, True, True]


def test_lanes_waiting_for_a_wave_whose_write_failed_mark_no_other() -> None:
    # The write before the wave failed for good, and the slice stops: the lanes that waited
    # for that wave neither mark it again, one after another, nor send.
    async def scenario() -> tuple[list[bool], int]:
        stopping = asyncio.Event()
        waves = _Waves(4, 4, stopping)
        release = asyncio.Event()
        calls = 0

        async def wave(index: int) -> list[int]:
            nonlocal calls
            calls += 1
            await release.wait()
            stopping.set()
            raise ConnectionRefusedError("PostgreSQL away")

        async def record(rows: list[int]) -> None:
            raise AssertionError("nothing to record")

        first = asyncio.create_task(waves.on_the_wire(0, wave, record))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(waves.on_the_wire(i, wave, record)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(ConnectionRefusedError):
            await first
        return list(await asyncio.gather(*waiting)), calls

    sendable, calls = asyncio.run(scenario())

    assert sendable == [False] * 3
    assert calls == 1
