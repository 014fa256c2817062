"""ChunkWorkflow: sends one range of a batch's ledger, a few slices at a time.

Pausing cancels the slices in flight: a send activity that is cancelled lets the requests
already on the wire finish, records them, and puts the rest of its slice back to `pending`,
so the slice simply runs again on resume. `stop` interrupts them the same way and ends the
chunk, leaving what was not sent `pending` for the batch to close.
"""

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.sending import SendingActivities
    from workflows.contracts import CHUNK_WORKFLOW, ChunkInput, SendCounts, SendSliceInput
    from workflows.retries import SLICE_RETRY

# Patch id (docs/WORKFLOWS.md): a slice with rows outside their send window runs again when
# the window opens.
SEND_WINDOW_PATCH = "chunk-send-window-wait"
SPREAD_SLICE_SECONDS = 300
# A spread slice's activity starts this early, to claim its rows before its first send time.
SPREAD_LEAD_SECONDS = 2


@workflow.defn(name=CHUNK_WORKFLOW)
class ChunkWorkflow:
    def __init__(self) -> None:
        self._in_flight = 0
        self._paused = False
        self._stopping = False
        # Insertion-ordered: cancelling them is a command each, in this order, on replay too.
        self._sends: dict[asyncio.Task[SendCounts], None] = {}
        self._interrupted: set[asyncio.Task[SendCounts]] = set()
        self._counts = SendCounts()

    @workflow.signal
    def pause(self) -> None:
        self._paused = True
        self._interrupt_sends()

    @workflow.signal
    def stop(self) -> None:
        self._stopping = True
        self._interrupt_sends()

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.run
    async def run(self, input: ChunkInput) -> SendCounts:
        slices = []
        size = input.slice_size
        if input.pace.interval:
            # A spread batch's slice spans at most a few minutes of its timeline.
            size = max(1, min(size, int(SPREAD_SLICE_SECONDS / input.pace.interval)))
        for start in range(input.start, input.end, size):
            await workflow.wait_condition(
                lambda: (
                    (self._in_flight < input.slices_in_flight and not self._paused)
                    or self._stopping
                )
            )
            if input.pace.interval:
                await self._sleep_until(input.pace.send_time(start) - SPREAD_LEAD_SECONDS)
            if self._stopping:
                break
            end = min(start + size, input.end)
            self._in_flight += 1
            slices.append(asyncio.create_task(self._send_slice(input, start, end)))
        await asyncio.gather(*slices)
        return self._counts

    async def _send_slice(self, input: ChunkInput, start: int, end: int) -> None:
        try:
            while True:
                await workflow.wait_condition(lambda: not self._paused or self._stopping)
                if self._stopping:
                    return
                send = asyncio.create_task(
                    workflow.execute_activity_method(
                        SendingActivities.send_slice,
                        SendSliceInput(
                            batch_id=input.batch_id,
                            account_id=input.account_id,
                            agent_number=input.agent_number,
                            start=start,
                            end=end,
                            pace=input.pace,
                        ),
                        start_to_close_timeout=timedelta(minutes=10),
                        heartbeat_timeout=timedelta(seconds=input.send_heartbeat_timeout_seconds),
                        retry_policy=SLICE_RETRY,
                        # Wait for the activity to record what it sent before moving on.
                        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    )
                )
                self._sends[send] = None
                try:
                    counts = await send
                except (asyncio.CancelledError, ActivityError):
                    if send not in self._interrupted:
                        raise
                    continue
                finally:
                    self._sends.pop(send, None)
                    self._interrupted.discard(send)
                self._counts.sent += counts.sent
                self._counts.failed += counts.failed
                if not counts.waiting or not workflow.patched(SEND_WINDOW_PATCH):
                    return
                # Rows outside their send window: the slice runs again when the first of
                # them opens, giving up its place in flight meanwhile.
                self._in_flight -= 1
                try:
                    await self._sleep_until(counts.next_window)
                    await self._take_place(input.slices_in_flight)
                finally:
                    self._in_flight += 1
        finally:
            self._in_flight -= 1

    async def _take_place(self, places: int) -> None:
        """Wait for a place among the slices in flight (or a stop)."""

        def free() -> bool:
            return (self._in_flight < places and not self._paused) or self._stopping

        # Another slice may take the place first, between the wake-up and this task's turn.
        while not free():
            await workflow.wait_condition(free)

    async def _sleep_until(self, moment: float) -> None:
        """A durable timer that `stop` cuts short."""
        delay = moment - workflow.now().timestamp()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(
                    lambda: self._stopping, timeout=timedelta(seconds=delay)
                )

    def _interrupt_sends(self) -> None:
        for send in self._sends:
            self._interrupted.add(send)
            send.cancel()
