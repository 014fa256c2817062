"""ChunkWorkflow: sends one range of a batch's ledger, a few slices at a time.

Pausing cancels the slices in flight: a send activity that is cancelled lets the requests
already on the wire finish, records them, and puts the rest of its slice back to `pending`,
so the slice simply runs again on resume. `stop` interrupts them the same way and ends the
chunk, leaving what was not sent `pending` for the batch to close.
"""

import asyncio
import contextlib
import dataclasses
from collections import Counter, deque
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.sending import ACCOUNT_FAILURES, SendingActivities
    from workflows.contracts import (
        CHUNK_WORKFLOW,
        AutoPause,
        AutoPaused,
        ChunkInput,
        Pace,
        SendCounts,
        SendSliceInput,
    )
    from workflows.retries import SLICE_RETRY

# Patch id (docs/WORKFLOWS.md): a slice with rows outside their send window runs again when
# the window opens.
SEND_WINDOW_PATCH = "chunk-send-window-wait"
# Patch id: a chunk of a batch that passes over its waiting rows again (`hand_back_waiting`)
# leaves them `pending` and ends, reporting them, instead of waiting for their window.
HAND_BACK_PATCH = "chunk-window-hand-back"
# A chunk whose slices meet too many carrier errors (or an account-wide one) pauses itself and
# asks its batch to pause.
AUTO_PAUSE_PATCH = "chunk-auto-pause"
# Patch id: a chunk given a send task queue (`send_task_queue`) schedules its send activities
# there, on workers apart from the batch steps (docs/WORKFLOWS.md, Fairness between batches).
SEND_QUEUE_PATCH = "chunk-send-task-queue"
# Patch id: a spread batch's chunk, resumed, moves its timeline on by the time it was paused
# (its batch does the same for the chunks it starts later: `batch-pause-shifts-spread`).
PAUSE_SHIFTS_SPREAD_PATCH = "chunk-pause-shifts-spread"
# The batch's signal for it (BatchWorkflow.auto_pause).
AUTO_PAUSE_SIGNAL = "auto_pause"
TOP_ERROR_CODES = 3
AUTHENTICATION_FAILED = "carrier_authentication_failed"
THROTTLED = "carrier_throttled"
UNREACHABLE = "carrier_unreachable"
ERROR_RATE = "carrier_error_rate"


class ErrorWindow:
    """The carrier's answers over about the last `size` messages, slice by slice: the oldest
    slices are dropped while the newer ones hold `size` messages without them."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._slices: deque[SendCounts] = deque()

    def add(self, counts: SendCounts) -> None:
        self._slices.append(counts)
        while self._slices and self._messages() - _answered(self._slices[0]) >= self._size:
            self._slices.popleft()

    def clear(self) -> None:
        self._slices.clear()

    def error_rate(self) -> float | None:
        """Failed messages of those answered; None until the window holds `size` of them."""
        messages = self._messages()
        if messages < self._size:
            return None
        return sum(c.failed for c in self._slices) / messages

    def top_errors(self) -> dict[str, int]:
        errors: Counter[str] = Counter()
        for counts in self._slices:
            errors.update(counts.errors)
        return dict(errors.most_common(TOP_ERROR_CODES))

    def passes(self, rule: AutoPause) -> AutoPaused | None:
        """Why the batch pauses, when the window's error rate passes the rule's."""
        rate = self.error_rate()
        if rate is None or rate <= rule.error_rate:
            return None
        failed = sum(c.failed for c in self._slices)
        errors = self.top_errors()
        codes = ", ".join(f"{code or 'no code'} ({count})" for code, count in errors.items())
        return AutoPaused(
            code=ERROR_RATE,
            reason=(
                f"the carrier refused {failed} of the last {self._messages()} messages"
                f" ({rate:.0%}, above the batch's auto_pause_error_rate {rule.error_rate:g});"
                f" top error codes: {codes}"
            ),
            error_codes=errors,
        )

    def _messages(self) -> int:
        return sum(_answered(c) for c in self._slices)


def _answered(counts: SendCounts) -> int:
    return counts.sent + counts.failed


SPREAD_SLICE_SECONDS = 300
# A spread slice's activity starts this early, to claim its rows before its first send time.
SPREAD_LEAD_SECONDS = 2


@workflow.defn(name=CHUNK_WORKFLOW)
class ChunkWorkflow:
    def __init__(self) -> None:
        self._in_flight = 0
        self._paused = False
        # When the pause began (Unix time), and how far pauses moved a spread timeline on.
        self._paused_since = 0.0
        self._paused_for = 0.0
        self._stopping = False
        # Insertion-ordered: cancelling them is a command each, in this order, on replay too.
        self._sends: dict[asyncio.Task[SendCounts], None] = {}
        self._interrupted: set[asyncio.Task[SendCounts]] = set()
        self._counts = SendCounts()
        self._errors = ErrorWindow(AutoPause().window)  # the input's, once the run starts
        self._send_queue: str | None = None
        # Set when the chunk runs inside its batch's own workflow (`run_in_batch`): how it
        # asks the batch to pause, in place of a signal to its parent.
        self._ask_batch_to_pause: Callable[[AutoPaused], None] | None = None

    @workflow.signal
    def pause(self) -> None:
        if not self._paused:
            self._paused_since = workflow.now().timestamp()
        self._paused = True
        self._interrupt_sends()

    @workflow.signal
    def stop(self) -> None:
        self._stopping = True
        self._interrupt_sends()

    @workflow.signal
    def resume(self) -> None:
        if self._paused:
            self._paused_for += workflow.now().timestamp() - self._paused_since
        self._paused = False
        # Only what is sent after the resume counts towards the next pause.
        self._errors.clear()

    @workflow.run
    async def run(self, input: ChunkInput) -> SendCounts:
        # None: this worker's own queue, as every chunk recorded before the patch used.
        self._send_queue = (
            input.send_task_queue
            if input.send_task_queue is not None and workflow.patched(SEND_QUEUE_PATCH)
            else None
        )
        if input.auto_pause is not None:
            self._errors = ErrorWindow(input.auto_pause.window)
        slices = []
        size = input.slice_size
        if input.pace.interval:
            # A spread batch's slice spans at most a few minutes of its timeline.
            # (A tiny interval makes the quotient inf, which no int holds.)
            size = max(1, int(min(size, SPREAD_SLICE_SECONDS / input.pace.interval)))
        for start in range(input.start, input.end, size):
            await workflow.wait_condition(
                lambda: (
                    (self._in_flight < input.slices_in_flight and not self._paused)
                    or self._stopping
                )
            )
            if input.pace.interval:
                await self._sleep_until(self._due(input, start))
            if self._stopping:
                break
            end = min(start + size, input.end)
            self._in_flight += 1
            slices.append(asyncio.create_task(self._send_slice(input, start, end)))
        await asyncio.gather(*slices)
        return self._counts

    async def run_in_batch(
        self, input: ChunkInput, ask_batch_to_pause: Callable[[AutoPaused], None]
    ) -> SendCounts:
        """The same sends as `run`, as a part of the batch's own workflow rather than a child
        workflow of it (BatchWorkflow, patch `batch-one-slice-inline`): the batch steers it by
        calling `pause`, `resume` and `stop` itself, and it asks for an auto-pause by calling
        `ask_batch_to_pause`."""
        self._ask_batch_to_pause = ask_batch_to_pause
        return await self.run(input)

    async def _send_slice(self, input: ChunkInput, start: int, end: int) -> None:
        try:
            while True:
                await workflow.wait_condition(lambda: not self._paused or self._stopping)
                if self._stopping:
                    return
                if await self._waited_for_moved_place(input, start):
                    continue  # paused or stopped meanwhile, maybe
                send = asyncio.create_task(
                    workflow.execute_activity_method(
                        SendingActivities.send_slice,
                        SendSliceInput(
                            batch_id=input.batch_id,
                            account_id=input.account_id,
                            agent_number=input.agent_number,
                            start=start,
                            end=end,
                            pace=self._pace(input),
                        ),
                        task_queue=self._send_queue,
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
                if counts.account_failure is not None and workflow.patched(AUTO_PAUSE_PATCH):
                    # The slice stopped at the failure: it runs again on resume.
                    await self._pause_batch(
                        _account_failure(
                            counts.account_failure, counts.resume_after, counts.deferred_since
                        )
                    )
                    continue
                auto_pause = input.auto_pause
                if auto_pause is not None and not self._paused:
                    self._errors.add(counts)
                    paused = self._errors.passes(auto_pause)
                    if paused is not None and workflow.patched(AUTO_PAUSE_PATCH):
                        await self._pause_batch(paused)
                if not counts.waiting or not workflow.patched(SEND_WINDOW_PATCH):
                    return
                if input.hand_back_waiting and workflow.patched(HAND_BACK_PATCH):
                    self._hand_back(counts)
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

    async def _waited_for_moved_place(self, input: ChunkInput, start: int) -> bool:
        """Sleep until the slice's place on a spread timeline that a pause moved on (`_pace`),
        if it is still to come; whether it slept (the slice was due before the pause)."""
        if not input.pace.interval:
            return False
        moment = self._due(input, start)
        if moment <= workflow.now().timestamp():
            return False
        await self._sleep_until(moment)
        return True

    def _due(self, input: ChunkInput, start: int) -> float:
        """When a spread batch's slice from `start` starts: a little before its first row's
        place on the chunk's timeline (`_pace`)."""
        return self._pace(input).send_time(start) - SPREAD_LEAD_SECONDS

    def _pace(self, input: ChunkInput) -> Pace:
        """The chunk's timeline, moved on by the time it was paused (a spread batch's)."""
        if (
            self._paused_for > 0
            and input.pace.interval
            and workflow.patched(PAUSE_SHIFTS_SPREAD_PATCH)
        ):
            return dataclasses.replace(input.pace, start=input.pace.start + self._paused_for)
        return input.pace

    def _hand_back(self, counts: SendCounts) -> None:
        """Count a slice's waiting rows in the chunk's result, for the batch to send later."""
        first = self._counts.next_window
        self._counts.next_window = (
            min(first, counts.next_window) if self._counts.waiting else counts.next_window
        )
        self._counts.waiting += counts.waiting

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

    async def _pause_batch(self, paused: AutoPaused) -> None:
        """Pause this chunk at once and ask the batch to pause (it pauses its other chunks and
        records the `paused` event); once, until a resume."""
        if self._paused or self._stopping:
            return
        self.pause()
        self._errors.clear()
        paused = dataclasses.replace(paused, seen_at=workflow.now().timestamp())
        if self._ask_batch_to_pause is not None:
            self._ask_batch_to_pause(paused)
            return
        parent = workflow.info().parent
        if parent is not None:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                AUTO_PAUSE_SIGNAL, paused
            )

    def _interrupt_sends(self) -> None:
        for send in self._sends:
            self._interrupted.add(send)
            send.cancel()


def throttled_reason(code: str, resume_after: float) -> str:
    """A throttling pause's reason, saying when the batches resume."""
    return (
        f"the carrier throttled every request of the account ({code}) for longer than"
        " the retry window: every batch of the account is paused, and resumes by"
        f" itself in {resume_after:g} s"
    )


def _account_failure(
    code: str, resume_after: float = 0.0, deferred_since: float = 0.0
) -> AutoPaused:
    """Why every running batch of the account pauses: wrong credentials (20003), a throttling
    (resume_after > 0: the batches resume by themselves) or a carrier out of reach that
    outlasted the retry window."""
    if code in ACCOUNT_FAILURES:
        return AutoPaused(
            code=AUTHENTICATION_FAILED,
            reason=(
                f"the carrier refused the account's credentials ({code}): every batch of the"
                " account is paused; fix the carrier account, then resume them"
            ),
            error_codes={code: 1},
            account_wide=True,
        )
    if resume_after > 0:
        return AutoPaused(
            code=THROTTLED,
            reason=throttled_reason(code, resume_after),
            error_codes={code: 1},
            account_wide=True,
            resume_after_seconds=resume_after,
            deferred_since=deferred_since,
        )
    return AutoPaused(
        code=UNREACHABLE,
        reason=(
            f"the carrier could not be reached ({code}) for longer than the retry window:"
            " every batch of the account is paused; resume them once the carrier is back"
        ),
        error_codes={code: 1},
        account_wide=True,
    )
