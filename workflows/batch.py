"""BatchWorkflow: validates a recipient file, then sends it chunk by chunk.

Recipients live in PostgreSQL; this workflow only moves counts and seq ranges, keeps a
bounded window of ChunkWorkflows, and continues as new before its history grows large.
Operators steer it with the `cancel`, `pause` and `resume` signals (from the API or the
`temporal` CLI); a Temporal cancellation ends it the same way as `cancel`.
"""

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    FailureError,
)
from temporalio.types import MethodAsyncSingleParam

with workflow.unsafe.imports_passed_through():
    from activities.ledger import LedgerActivities
    from activities.recipients.rejections import NO_VALID_RECIPIENTS, NOTHING_TO_SEND
    from activities.reconciliation import ReconciliationActivities
    from activities.status_events import StatusEventActivities
    from activities.validation import ValidationActivities
    from workflows.cancellation import shielded
    from workflows.chunk import AUTO_PAUSE_SIGNAL, THROTTLED, ChunkWorkflow, throttled_reason
    from workflows.contracts import (
        ACCOUNT_ID,
        AGENT_NUMBER,
        BATCH_ID,
        BATCH_STATUS,
        BATCH_WORKFLOW,
        RECIPIENT_COUNT,
        AutoPaused,
        BatchCounts,
        BatchInput,
        BatchProgress,
        BatchResult,
        ChunkInput,
        DeliverEventsInput,
        DeliverEventsResult,
        DispatchState,
        FinishInput,
        Pace,
        ReconcileInput,
        ReopenInput,
        RunningBatchesInput,
        SendCounts,
        StatusUpdate,
        ValidateInput,
        ValidationResult,
        WaitingRange,
        batch_workflow_id,
    )
    from workflows.retries import DB_RETRY, VALIDATE_RETRY
    from workflows.statuses import FINAL_BATCH_STATUSES, BatchStatus, LedgerStatus

P = TypeVar("P")
R = TypeVar("R")
PROGRESS_EVERY = timedelta(seconds=1)
# Patch ids (docs/WORKFLOWS.md): runs recorded before them replay without the step.
RECONCILE_PATCH = "batch-reconcile-uncertain"
# Chunks of a batch with a send window hand back their waiting rows, and the batch passes over
# them again when their window opens, so that they hold back no other row.
WINDOW_PASSES_PATCH = "batch-send-window-passes"
VALIDATED_PATCH = "batch-validated-at-upload"
# A Postman upload's file is ledger rows the API validated: the batch loads them
# (`load_recipients`) instead of validating its file.
LOAD_VALIDATED_PATCH = "batch-load-validated-rows"
# A cancel during validation cancels the validate activity rather than waiting for its end.
CANCEL_VALIDATION_PATCH = "batch-cancel-validation"
# The same for the load of a Postman upload's validated rows (`load_recipients`): a cancel
# waited for the whole load, then closed every loaded row `cancelled`.
CANCEL_LOAD_PATCH = "batch-cancel-load"
# A batch pauses itself when a chunk asks (too many carrier errors, or an account-wide one).
AUTO_PAUSE_PATCH = "batch-auto-pause"
# A batch paused for a carrier throttling resumes by itself after the pause's back-off.
THROTTLE_RESUME_PATCH = "batch-throttle-resume"
# The `dispatching` and `in_progress` events are recorded while the first chunks start, not
# before: two activities fewer between the POST and the first message.
REPORT_WHILE_STARTING_PATCH = "batch-report-while-starting"
# The batch's short database steps (its status events, the check for uncertain rows, the
# ledger's close) run as local activities, in the workflow task that asks for them, and
# reconciliation runs only when a row is `uncertain` (docs/WORKFLOWS.md, Fairness).
LOCAL_STEPS_PATCH = "batch-local-db-steps"
# A batch whose rows fit one send slice sends them from its own workflow, without a child
# ChunkWorkflow (docs/WORKFLOWS.md, Fairness between batches).
ONE_SLICE_PATCH = "batch-one-slice-inline"
# The `dispatching` and `in_progress` reports of a batch that is not spread run as activities
# on the task queue, not local ones: a workflow task is completed only once its local
# activities are done, so as local ones they held back the first sends' (or chunks') start,
# scheduled in the same task (docs/WORKFLOWS.md, Fairness between batches).
OPENING_QUEUED_PATCH = "batch-opening-reports-queued"
# A batch whose rows fit `inline_slices` send slices (100 by default: 100,000 rows) runs its
# chunks' code in its own workflow too: no child's start on the path to the first message,
# no child's end on the path to the final event (docs/WORKFLOWS.md, Fairness between batches).
SLICES_INLINE_PATCH = "batch-slices-inline"
# The `validating` event is recorded by an activity on the task queue, beside the file's
# validation, not by a local activity before it: a workflow task completes only once its local
# activities are done, so the validation's start waited for the event's (docs/WORKFLOWS.md).
VALIDATING_QUEUED_PATCH = "batch-validating-report-queued"
# A batch of fewer chunks than `chunk_window`, run in its own workflow, shares the window's
# slices in flight (`chunk_window` x `slices_in_flight`) among its chunks: a 10,000-row batch
# (two chunks of 5,000) sent with four slices' requests in flight, half a larger batch's
# (docs/WORKFLOWS.md, Fairness between batches).
SHARED_WINDOW_PATCH = "batch-inline-chunks-share-window"
# A pause (an operator's through the `temporal` CLI, or one racing the API's check) that comes
# once the batch's final event is recorded, while its run still posts it, is ignored: it
# recorded a `paused` event after the final one, and left the batch `paused` for good.
NO_PAUSE_AFTER_END_PATCH = "batch-no-pause-after-end"
# A batch cancelled while it waits for `schedule_at` ends there: it recorded `dispatching` and
# `in_progress` first, a send phase for a batch that sent nothing.
CANCELLED_WAIT_ENDS_PATCH = "batch-cancelled-wait-ends"
# A batch paused when its `expire_at` passes ends then, what was left `expired`, as a sending
# one does; it stayed paused, with no final event, until an operator acted.
EXPIRY_ENDS_PAUSE_PATCH = "batch-expiry-ends-pause"
# A resume that comes once the batch's final event is recorded (a batch that ended paused, by
# its expiry or its validation, while its run still posts events: an operator's resume racing
# the API's check, an auto-pause's timer) is ignored: it recorded the phase it paused in after
# the final event, and left the batch looking as if it sent, for good.
NO_RESUME_AFTER_END_PATCH = "batch-no-resume-after-end"
# Pause, resume and an auto-pause's pause run one at a time (`_in_turn`). Each signals the
# chunks, one command after another, then records its event; one that came meanwhile ran
# between them: a resume could record its phase before `paused`, and a pause that came while
# the previous `paused` was being recorded took `paused` for the phase to resume to, so the
# next resume recorded `paused` while the batch sent on.
CONTROL_IN_TURN_PATCH = "batch-control-in-turn"
# No event is recorded after the final one: a pause or a resume whose handler was under way
# (signalling the chunks) when the last chunk ended recorded `paused`, then its phase, after
# `completed`, and left the batch showing a phase it had ended.
NO_EVENT_AFTER_FINAL_PATCH = "batch-no-event-after-final"
# A batch with a send window passes over its waiting rows beside its chunks, as each range's
# window opens, not only once every chunk has ended; and a spread one's chunks span at most
# SPREAD_CHUNK_SECONDS of its pace. A spread batch's chunks (or a slow sender's) run for hours
# or days: its rows that waited for their window went out in one burst after the last chunk.
WINDOW_BESIDE_PATCH = "batch-send-window-passes-beside"
# A resume records every phase the batch reached while paused, in order, each with its message
# (a batch paused while validating or waiting for `schedule_at` goes on to `dispatching` and
# `in_progress`): it recorded only the last, so the `dispatching` event and its counts were
# never posted.
PHASES_HELD_PATCH = "batch-phases-held-while-paused"
# A resume of a paused batch that is being cancelled is ignored, as a pause is: it recorded
# the phase paused in (`validating`, say) between `paused` and `cancelled`, while the
# validation was being cut short or the rows on the wire reconciled.
NO_RESUME_WHILE_CANCELLING_PATCH = "batch-no-resume-while-cancelling"
# An operator's pause of a batch paused by itself until a back-off ends (carrier_throttled)
# holds it for good with a `paused` event of its own: nothing was recorded, and the batch
# kept the auto-pause's code and its reason, "resumes by itself in 60 s", which it never did.
PAUSE_FOR_GOOD_EVENT_PATCH = "batch-pause-for-good-event"
# Reconciliation runs again while the rows its `reconciled` chunk sent are left `uncertain`
# (their requests timed out or a worker died), up to RECONCILE_ROUNDS in all: those rows
# ended `uncertain`, never sent though the carrier had not got them.
RECONCILE_AGAIN_PATCH = "batch-reconcile-again"
RECONCILE_ROUNDS = 3
# A `reconciled` chunk that fails (terminated through Temporal) leaves its rows to the next
# round, as any chunk leaves its rows to reconciliation: it failed the batch's run, which
# never closed its ledger or posted a final event. The last round's failure still does.
RECONCILED_FAILURE_PATCH = "batch-reconciled-chunk-failure-goes-on"
# A Temporal cancellation (`temporal workflow cancel`, the web UI's Cancel) is the `cancel`
# signal, wherever the run is: it reached whatever the run awaited, and ended the run with no
# final event when that was an activity or a child (reconciliation, a Postman upload's load,
# an event's record) or the hand-over's drain; it failed the batch during a load, was taken for
# a failed `reconciled` chunk (the batch went on sending), and cut the webhook posts after the
# final event short.
TEMPORAL_CANCEL_AS_SIGNAL_PATCH = "batch-temporal-cancel-as-signal"
# A batch sent in ChunkWorkflows (more than `inline_slices` slices, not spread) is cut into
# about CHUNK_ROUNDS rounds of the window's chunks, each of whole slices, at least
# `chunk_size` rows and at most the `inline_slices` slices a batch's own workflow holds: it
# was always cut into chunks of `chunk_size` rows, 200 child workflows for 1,000,000 rows,
# each with its start, its end and its parent's workflow tasks on them, and a drain of the
# window at each hand-over (docs/PERFORMANCE.md, 2026-12-07, midday).
BALANCED_CHUNKS_PATCH = "batch-balanced-chunks"
# A batch paused while its run reconciled the rows on the wire holds the rows the carrier
# never got until it is resumed (or stopped): their `reconciled` chunk started at once, and
# its slices sent while the batch showed `paused`, until the pause signalled after its start
# reached them.
RECONCILED_WAITS_FOR_RESUME_PATCH = "batch-reconciled-waits-for-resume"
# A resume of a paused batch whose `expire_at` has passed (its run closing what was left
# `expired`) is ignored, as one of a batch being cancelled is: it recorded the phase paused in
# between `paused` and the final event.
NO_RESUME_AFTER_EXPIRY_PATCH = "batch-no-resume-after-expiry"
# A retry run paused and resumed before it reports `dispatching` records no event on resume:
# it recorded `queued` (its status before any phase), for which no event is ever sent.
NO_QUEUED_ON_RESUME_PATCH = "batch-no-queued-on-resume"
# A retry run cancelled before its rows are reopened ends there, its rows as they were: they
# were reopened, then closed `cancelled`, so a `failed` row retried and cancelled at once was
# no longer `failed`, and a later retry of the failed rows found none.
CANCEL_BEFORE_REOPEN_PATCH = "batch-cancel-before-reopen"
# A retry run of one status cancelled while it reopened its rows puts them back in that status
# and ends there, with no `dispatching` or `in_progress`: they were closed `cancelled`, so the
# `failed` rows of a retry cancelled at once were `failed` no more, and a later retry of the
# failed rows found none. (Of several statuses, which row was in which is not kept: those
# still end `cancelled`.)
CANCEL_DURING_REOPEN_PATCH = "batch-cancel-during-reopen"
# A spread batch resumed after a pause sends the rows left at their places on its timeline
# moved on by the time it was paused (its chunks' too: `chunk-pause-shifts-spread`): every row
# whose place had passed went at once, at the sender's rate, however long the spread.
PAUSE_SHIFTS_SPREAD_PATCH = "batch-pause-shifts-spread"
# An auto-pause met before the batch's last resume is ignored: another batch's account-wide
# pause (or a chunk's) signalled before an operator resumed the batch, and delivered after,
# paused it again, for a throttling back-off of an hour, with nothing wrong since.
STALE_AUTO_PAUSE_PATCH = "batch-stale-auto-pause-ignored"
# An auto-pause that waits for an operator (wrong credentials, a carrier out of reach) coming to
# a batch paused by a throttling until its back-off ends holds it for good, with its `paused`
# event, and pauses the account's other batches if account-wide: it was dropped (the batch
# already paused), and the back-off resumed the batch into an account that needed an operator.
SERIOUS_OVER_BACK_OFF_PATCH = "batch-serious-pause-over-back-off"
# A throttling that has deferred every request since its last back-off resumed the batch gets
# a back-off twice as long (at most MAX_BACK_OFF_SECONDS): one that never lifted paused and
# resumed the batch every few minutes, each time some fifty events of its history, until the
# run passed Temporal's limit of events (a day and a half of it) and was ended.
BACK_OFF_GROWS_PATCH = "batch-back-off-grows"
MAX_BACK_OFF_SECONDS = 3600.0
# How soon after a back-off resumed the batch its slices' requests are deferred again for the
# throttling to count as not lifted (the resume reaching the chunks, their slices starting).
NOT_LIFTED_WITHIN_SECONDS = 60.0
CHUNK_ROUNDS = 5
# A rate-limited sender's batch sends no faster for larger chunks, and its progress (the
# `progress` query, progress events) moves as chunks end: its chunks hold at most this long
# of sending at its rate, shared by the window's chunks.
RATE_CHUNK_SECONDS = 60.0
# How long a chunk of a spread batch with a send window runs at most (WINDOW_BESIDE_PATCH):
# the rows it hands back wait no longer than that past their window's opening.
SPREAD_CHUNK_SECONDS = 3600.0
NATIVE_CANCEL_REASON = "cancelled through Temporal"


@workflow.defn(name=BATCH_WORKFLOW)
class BatchWorkflow:
    # `workflow.init`: the input is in hand before any signal handler runs. A signal can come
    # in the run's first task (a pause sent just after the POST, an account-wide auto-pause,
    # one sent while the run continued as new), and its handler runs before `run`.
    @workflow.init
    def __init__(self, input: BatchInput) -> None:
        self._input = input
        self._closing = False
        # Set when this run continues as new: its pump leaves waiting retries to the next run.
        self._handing_over = False
        self._last_progress = 0.0
        self._status = BatchStatus.QUEUED
        self._state: DispatchState | None = None
        self._paused = False
        # When the pause the batch is in began, and when it was last resumed (Unix time).
        self._paused_since = 0.0
        self._resumed_at = 0.0
        # When a throttling's back-off last resumed it, and how many back-offs in a row the
        # throttling has outlasted since (BACK_OFF_GROWS_PATCH).
        self._backed_off_at = 0.0
        self._back_offs_outlasted = 0
        # Counts pauses, operators' pauses of a paused batch and resumes: a back-off that
        # would resume the batch (THROTTLE_RESUME_PATCH) does so only if none came meanwhile.
        self._pause_turn = 0
        # The turn an auto-pause's back-off waits on to resume the batch, while it waits.
        self._resume_by_itself_turn: int | None = None
        # The phase a resume returns to; phases reached while paused are kept for then, each
        # with its message (PHASES_HELD_PATCH).
        self._resume_status = BatchStatus.QUEUED
        self._held: list[tuple[BatchStatus, str | None]] = []
        self._cancel_reason: str | None = None
        # The validate activity while it runs (runs with CANCEL_VALIDATION_PATCH only).
        self._validation: asyncio.Task[ValidationResult] | None = None
        self._expired = False
        # Whether the expiry ends a wait for a place among the chunks, paused (it did not
        # before EXPIRY_ENDS_PAUSE_PATCH).
        self._expiry_ends_wait = False
        # By child workflow name.
        self._chunks: dict[str, workflow.ChildWorkflowHandle[ChunkWorkflow, SendCounts]] = {}
        # Chunks run inside this workflow (ONE_SLICE_PATCH, SLICES_INLINE_PATCH), by name,
        # and the auto-pauses they asked for while those run.
        self._chunks_in_batch: dict[str, ChunkWorkflow] = {}
        self._asked_pauses: dict[asyncio.Task[None], None] = {}
        # Whether chunks hand back rows waiting for their send window (WINDOW_PASSES_PATCH),
        # and whether the batch passes over them beside its chunks (WINDOW_BESIDE_PATCH),
        # until `_beside_ends`.
        self._window_passes = False
        self._window_beside = False
        self._beside_ends = False
        # While the pass beside waits for a place, the next chunk waits behind it: its rows
        # are older.
        self._beside_waits = False
        # Chunks (and passes over waiting rows) this run started: a run starts at most
        # `chunks_per_run`.
        self._started_here = 0
        # Insertion-ordered, like everything a workflow iterates: a set's order follows
        # memory addresses, which differ on replay.
        self._chunk_tasks: dict[asyncio.Task[None], None] = {}
        self._chunks_done = 0
        self._totals = SendCounts()
        # Chunks finish concurrently; events must still get consecutive seqs, in order.
        self._report_lock = asyncio.Lock()
        # The `dispatching` and `in_progress` reports while the first chunks start
        # (REPORT_WHILE_STARTING_PATCH); awaited before the run ends or continues as new.
        self._opening_reports: asyncio.Task[None] | None = None
        # Held by each control handler while it steers the chunks (CONTROL_IN_TURN_PATCH).
        self._control = asyncio.Lock()
        state = input.state
        if state is None:
            self._events_recorded = self._events_delivered = input.first_event_seq
        else:
            self._events_recorded = state.event_seq
            self._events_delivered = state.event_seq - int(state.events_unsettled)
            self._resume_status = state.status
            self._paused = state.paused
            self._paused_since = state.paused_since
            self._resumed_at = state.resumed_at
            self._backed_off_at = state.backed_off_at
            self._back_offs_outlasted = state.back_offs_outlasted
            self._status = BatchStatus.PAUSED if state.paused else state.status
            self._chunks_done = state.chunks_done
            self._totals = SendCounts(sent=state.sent, failed=state.failed)
            self._cancel_reason = state.cancel_reason

    @workflow.signal
    async def cancel(self, reason: str | None = None) -> None:
        """Stop sending: no new slice starts, sends on the wire are recorded, the rest is
        `cancelled`."""
        if self._cancel_reason is None:
            self._cancel_reason = reason or "cancelled by an operator"
            if self._validation is not None:
                self._validation.cancel()
            await self._signal_chunks(ChunkWorkflow.stop)

    @workflow.signal
    async def pause(self) -> None:
        async with self._in_turn():
            # A paused batch stays paused now until an operator resumes it, whatever paused it.
            held_for_good = self._backing_off()
            self._pause_turn += 1
            if await self._pause() or not held_for_good:
                return
            if workflow.patched(PAUSE_FOR_GOOD_EVENT_PATCH):
                await self._report(BatchStatus.PAUSED)

    @workflow.signal(name=AUTO_PAUSE_SIGNAL)
    async def auto_pause(self, paused: AutoPaused) -> None:
        """A chunk met too many carrier errors, or one refusing the whole account (or another
        batch of the account did): pause as `pause` does, the reason in the `paused` event.
        An account-wide failure pauses the account's other running batches too."""
        if not workflow.patched(AUTO_PAUSE_PATCH):
            return  # a signal an older release ignored, replayed
        # As met: the account's other batches each give it their own back-off.
        met = paused
        async with self._in_turn():
            # In turn: a resume queued behind another handler comes first, and is seen.
            stale = 0 < paused.seen_at < self._resumed_at
            if stale and workflow.patched(STALE_AUTO_PAUSE_PATCH):
                return
            if paused.resume_after_seconds and not self._paused:
                paused = self._back_off(paused)
            if not await self._pause(paused):
                if not (
                    self._backing_off()
                    and not paused.resume_after_seconds
                    and workflow.patched(SERIOUS_OVER_BACK_OFF_PATCH)
                ):
                    return
                # Its back-off ends here (the turn moves on): an operator resumes it.
                self._pause_turn += 1
                await self._report(
                    BatchStatus.PAUSED,
                    code=paused.code,
                    reason=paused.reason,
                    error_codes=paused.error_codes,
                )
        turn = self._pause_turn
        # Before the account's other batches are paused: an operator's pause meanwhile holds
        # this one for good, with its event.
        resumes = paused.resume_after_seconds > 0
        if resumes:
            self._resume_by_itself_turn = turn
        if paused.account_wide:
            await self._pause_account(dataclasses.replace(met, account_wide=False))
        if resumes and workflow.patched(THROTTLE_RESUME_PATCH):
            await self._resume_after(turn, paused.resume_after_seconds)

    def _back_off(self, paused: AutoPaused) -> AutoPaused:
        """A throttling's pause with its back-off: twice the last one's (BACK_OFF_GROWS_PATCH)
        when the carrier has deferred every request since that back-off resumed the batch."""
        not_lifted = (
            self._backed_off_at > 0
            and 0 < paused.deferred_since <= self._backed_off_at + NOT_LIFTED_WITHIN_SECONDS
        )
        if not (not_lifted and workflow.patched(BACK_OFF_GROWS_PATCH)):
            self._back_offs_outlasted = 0
            return paused
        self._back_offs_outlasted += 1
        delay = min(
            paused.resume_after_seconds * 2**self._back_offs_outlasted, MAX_BACK_OFF_SECONDS
        )
        code = next(iter(paused.error_codes), THROTTLED)
        return dataclasses.replace(
            paused, resume_after_seconds=delay, reason=throttled_reason(code, delay)
        )

    def _backing_off(self) -> bool:
        """Whether the batch is paused until an auto-pause's back-off ends (nothing since)."""
        return (
            self._paused
            and self._resume_by_itself_turn == self._pause_turn
            and self._cancel_reason is None
            and self._status not in FINAL_BATCH_STATUSES
        )

    async def _resume_after(self, turn: int, seconds: float) -> None:
        """Resume after `seconds` (one durable timer), unless the batch was resumed, paused
        again by an operator or cancelled meanwhile."""
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(
                lambda: self._pause_turn != turn or self._cancel_reason is not None,
                timeout=timedelta(seconds=seconds),
            )
        if self._pause_turn == turn and self._cancel_reason is None:
            self._backed_off_at = workflow.now().timestamp()
            await self.resume()

    async def _pause(self, why: AutoPaused | None = None) -> bool:
        """Pause, with the event; False when already paused, being cancelled or ended."""
        if self._status in FINAL_BATCH_STATUSES and workflow.patched(NO_PAUSE_AFTER_END_PATCH):
            return False
        if self._paused or self._cancel_reason is not None:
            return False
        self._paused = True
        self._paused_since = workflow.now().timestamp()
        self._pause_turn += 1
        self._resume_status = self._status
        await self._signal_chunks(ChunkWorkflow.pause)
        if why is None:
            await self._report(BatchStatus.PAUSED)
        else:
            await self._report(
                BatchStatus.PAUSED, code=why.code, reason=why.reason, error_codes=why.error_codes
            )
        return True

    async def _pause_account(self, paused: AutoPaused) -> None:
        """Signal the account's other running batches to pause for the same reason."""
        others = await workflow.execute_activity_method(
            LedgerActivities.running_batches,
            RunningBatchesInput(account_id=self._input.account_id, batch_id=self._input.batch_id),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )
        for batch_id in others:
            handle = workflow.get_external_workflow_handle(batch_workflow_id(batch_id))
            try:
                await handle.signal(AUTO_PAUSE_SIGNAL, paused)
            except FailureError:
                pass  # finished (or not started) meanwhile: nothing to pause

    @workflow.signal
    async def resume(self) -> None:
        async with self._in_turn():
            if not self._paused:
                return
            ended = self._status in FINAL_BATCH_STATUSES
            if ended and workflow.patched(NO_RESUME_AFTER_END_PATCH):
                return
            cancelling = self._cancel_reason is not None
            if cancelling and workflow.patched(NO_RESUME_WHILE_CANCELLING_PATCH):
                return
            if self._expired and workflow.patched(NO_RESUME_AFTER_EXPIRY_PATCH):
                return
            self._paused = False
            self._resumed_at = workflow.now().timestamp()
            self._pause_turn += 1
            self._move_spread_on()
            await self._signal_chunks(ChunkWorkflow.resume)
            held, self._held = self._held, []
            if held:
                for status, message in held:
                    await self._report(status, message=message)
                return
            queued = self._resume_status == BatchStatus.QUEUED
            if queued and workflow.patched(NO_QUEUED_ON_RESUME_PATCH):
                return
            # Its event as the phase's first had it: a batch waiting for `schedule_at` says when.
            scheduled = self._resume_status == BatchStatus.WAITING_FOR_SCHEDULED_MESSAGES
            await self._report(
                self._resume_status, message=self._scheduled_for() if scheduled else None
            )

    def _move_spread_on(self) -> None:
        """On resume, a spread batch's timeline moves on by the time it was paused, for the
        chunks that start from now on (the running ones move their own): since the pause
        began, or since its sending started if that was later (validated while paused)."""
        state = self._state
        # 0: paused in a run that kept no such time (before the release with the patch, then
        # continued as new): how long is unknown, and all the time since sending began would
        # push the rest of the timeline days on.
        if state is None or not state.pace.interval or not self._paused_since:
            return
        paused_for = workflow.now().timestamp() - max(self._paused_since, state.pace.start)
        if paused_for > 0 and workflow.patched(PAUSE_SHIFTS_SPREAD_PATCH):
            state.pace = dataclasses.replace(state.pace, start=state.pace.start + paused_for)

    def _in_turn(self) -> asyncio.Lock | contextlib.nullcontext[None]:
        """What a control handler holds while it steers the chunks: the lock, so that pause,
        resume and auto-pause run one at a time (CONTROL_IN_TURN_PATCH); nothing in runs
        recorded before it."""
        if workflow.patched(CONTROL_IN_TURN_PATCH):
            return self._control
        return contextlib.nullcontext()

    @workflow.query
    def progress(self) -> BatchProgress:
        state = self._state
        return BatchProgress(
            status=self._status,
            paused=self._paused,
            cancel_reason=self._cancel_reason,
            rows_total=state.rows_total if state else 0,
            recipients=state.recipients if state else 0,
            dispatched=state.dispatched if state else 0,
            chunks_total=-(-state.recipients // self._chunk_size(state)) if state else 0,
            chunks_done=self._chunks_done,
            sent=self._totals.sent,
            failed=self._totals.failed,
        )

    @workflow.run
    async def run(self, input: BatchInput) -> BatchResult:
        state = input.state
        if state is None:
            workflow.upsert_search_attributes(
                [
                    BATCH_ID.value_set(input.batch_id),
                    ACCOUNT_ID.value_set(input.account_id),
                    AGENT_NUMBER.value_set(input.agent_number),
                ]
            )
        work = asyncio.create_task(self._run_to_end(input, state))

        async def cancelled_through_temporal() -> None:
            # The `cancel` signal: the work goes on to the batch's end as a cancelled one.
            await self.cancel(NATIVE_CANCEL_REASON)
            if work.done() and isinstance(work.exception(), workflow.ContinueAsNewError):
                # Handed over as the cancellation came: the next run takes the cancel, as
                # this one's would have had it come a moment sooner.
                self._continue_as_new(input)

        return await shielded(work, TEMPORAL_CANCEL_AS_SIGNAL_PATCH, cancelled_through_temporal)

    async def _run_to_end(self, input: BatchInput, state: DispatchState | None) -> BatchResult:
        pump = asyncio.create_task(self._deliver_events())
        try:
            result = await self._run(state)
        except asyncio.CancelledError:
            # Runs recorded before TEMPORAL_CANCEL_AS_SIGNAL_PATCH: `temporal workflow cancel`
            # or the web UI, where the run awaited a timer or a condition.
            await self.cancel(NATIVE_CANCEL_REASON)
            await self._chunks_finished()
            result = await self._finish()
        # No await in a `finally`: a run evicted from the worker's cache must unwind cleanly.
        await self._drain(pump, handing_over=result is None)
        if result is not None:
            return result
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._continue_as_new(input)

    def _continue_as_new(self, input: BatchInput) -> NoReturn:
        """Go on in a new run, from where this one is."""
        continuing = self._state
        if continuing is not None:
            continuing.event_seq = self._events_recorded
            continuing.paused = self._paused
            continuing.paused_since = self._paused_since
            continuing.resumed_at = self._resumed_at
            continuing.backed_off_at = self._backed_off_at
            continuing.back_offs_outlasted = self._back_offs_outlasted
            continuing.chunks_done = self._chunks_done
            continuing.sent, continuing.failed = self._totals.sent, self._totals.failed
            continuing.cancel_reason = self._cancel_reason
            continuing.events_unsettled = self._events_delivered < self._events_recorded
        workflow.continue_as_new(
            BatchInput(
                batch_id=input.batch_id,
                account_id=input.account_id,
                agent_number=input.agent_number,
                dispatch=input.dispatch,
                state=continuing,
                limits=input.limits,
                timing=input.timing,
                auto_pause=input.auto_pause,
            )
        )

    async def _run(self, state: DispatchState | None) -> BatchResult | None:
        """The batch from where this run starts; None when it should continue as new."""
        if state is None:
            retry = self._input.retry_statuses
            prepared = await (self._reopen() if retry else self._validate())
            if isinstance(prepared, BatchResult):
                return prepared
            state = prepared
        self._state = state
        return await self._dispatch(state)

    async def _validate(self) -> DispatchState | BatchResult:
        if not workflow.patched(VALIDATING_QUEUED_PATCH):
            await self._report(BatchStatus.VALIDATING)
            return await self._validated()
        validating = asyncio.create_task(self._report(BatchStatus.VALIDATING, queued=True))
        # One turn of the loop (no command): the report takes `_report_lock` and its seq
        # before any other report can, so every later event still comes after it.
        await asyncio.sleep(0)
        prepared = await self._validated()
        await validating
        return prepared

    async def _validated(self) -> DispatchState | BatchResult:
        """The file validated into the ledger (or loaded), and the state to send from; the
        batch's result when it ends here."""
        validated = self._input.validated
        if validated is not None and workflow.patched(VALIDATED_PATCH):
            validation = validated
        else:
            try:
                loads = self._input.load_validated and workflow.patched(LOAD_VALIDATED_PATCH)
                if loads and not workflow.patched(CANCEL_LOAD_PATCH):
                    validation = await self._build_ledger(ValidationActivities.load_recipients)
                elif loads or workflow.patched(CANCEL_VALIDATION_PATCH):
                    found = await self._cancellable_validation(
                        ValidationActivities.load_recipients
                        if loads
                        else ValidationActivities.validate_recipients
                    )
                    if found is None:
                        return await self._finish()
                    validation = found
                else:
                    validation = await self._build_ledger(ValidationActivities.validate_recipients)
            except ActivityError as error:
                # Out of retries: the batch still ends, with a final event, rather than hanging.
                reason = f"the file could not be validated: {error.cause or error}"
                return await self._finish_failed("validation_error", reason, rows_total=0)
        workflow.upsert_search_attributes([RECIPIENT_COUNT.value_set(validation.recipients)])
        if validation.code is not None:
            return await self._finish_failed(
                validation.code, validation.reason, rows_total=validation.rows_total
            )
        sendable = validation.recipients - validation.skipped
        if sendable == 0:
            return await self._finish_failed(
                NO_VALID_RECIPIENTS, NOTHING_TO_SEND, rows_total=validation.rows_total
            )
        await self._wait_for_schedule()
        if self._cancel_reason is not None and workflow.patched(CANCELLED_WAIT_ENDS_PATCH):
            return await self._finish()
        return await self._start_sending(
            validation.rows_total,
            validation.recipients,
            f"Requested: {validation.rows_total}. Validated: {sendable}.",
        )

    async def _build_ledger(
        self,
        activity: Callable[[ValidationActivities, ValidateInput], Awaitable[ValidationResult]],
    ) -> ValidationResult:
        """The activity that builds the batch's ledger from its file: `validate_recipients`,
        or `load_recipients` for rows validated as they were uploaded."""
        return await workflow.execute_activity_method(
            activity,
            ValidateInput(batch_id=self._input.batch_id, limits=self._input.limits),
            task_queue=self._input.validation_task_queue,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=VALIDATE_RETRY,
        )

    async def _cancellable_validation(
        self,
        activity: Callable[[ValidationActivities, ValidateInput], Awaitable[ValidationResult]],
    ) -> ValidationResult | None:
        """The activity that builds the ledger (`_build_ledger`), which a `cancel` cancels
        (it sees that within a second or so, in a heartbeat's reply, and rolls its ledger
        back); None when cancelled. A cancel that came before it starts skips it."""
        if self._cancel_reason is not None:
            return None
        self._validation = asyncio.create_task(
            workflow.execute_activity_method(
                activity,
                ValidateInput(batch_id=self._input.batch_id, limits=self._input.limits),
                task_queue=self._input.validation_task_queue,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=VALIDATE_RETRY,
                # The batch ends only once the activity has let go of the ledger.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        )
        try:
            return await self._validation
        except (asyncio.CancelledError, ActivityError) as error:
            if self._cancel_reason is not None:
                return None
            if isinstance(error, ActivityError) and isinstance(error.cause, CancelledError):
                # A Temporal cancellation of the batch, which cancelled this activity too.
                raise asyncio.CancelledError from error
            raise
        finally:
            self._validation = None

    def _scheduled_for(self) -> str:
        """The message of the `waiting_for_scheduled_messages` event."""
        when = datetime.fromtimestamp(self._input.timing.schedule_at, UTC).isoformat()
        return f"Scheduled for {when}."

    async def _wait_for_schedule(self) -> None:
        """A durable timer until `schedule_at`; a cancel ends the wait (and the batch)."""
        delay = self._input.timing.schedule_at - workflow.now().timestamp()
        if delay <= 0:
            return
        await self._report(
            BatchStatus.WAITING_FOR_SCHEDULED_MESSAGES, message=self._scheduled_for()
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(
                lambda: self._cancel_reason is not None, timeout=timedelta(seconds=delay)
            )

    async def _reopen(self) -> DispatchState | BatchResult:
        """A retry run: put the requested rows back to `pending`, then send as usual."""
        if self._cancel_reason is not None and workflow.patched(CANCEL_BEFORE_REOPEN_PATCH):
            return await self._finish()
        statuses = self._input.retry_statuses or []
        reopened = await workflow.execute_activity_method(
            LedgerActivities.reopen_rows,
            ReopenInput(
                batch_id=self._input.batch_id,
                statuses=statuses,
                attempts_below=self._input.retry_attempts_below,
            ),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=DB_RETRY,
        )
        cancelled = self._cancel_reason is not None and len(statuses) == 1
        if cancelled and workflow.patched(CANCEL_DURING_REOPEN_PATCH):
            # Its rows, all `pending` now (the batch had ended), back as they were.
            finish = FinishInput(batch_id=self._input.batch_id, close_pending_as=statuses[0])
            counts = await self._db_step(
                LedgerActivities.finish_ledger, finish, timedelta(minutes=2)
            )
            return await self._report_final(
                BatchStatus.CANCELLED, counts, code="cancelled", reason=self._cancel_reason
            )
        return await self._start_sending(
            reopened.rows_total,
            reopened.recipients,
            f"Retrying {reopened.reopened} rows ({', '.join(statuses)}).",
        )

    async def _start_sending(
        self, rows_total: int, recipients: int, dispatching: str
    ) -> DispatchState:
        """Report `dispatching` (with its message) and `in_progress`, and the state to
        dispatch from. With REPORT_WHILE_STARTING_PATCH the reports of a batch that is not
        spread run while the first chunks start; before it, both were recorded first."""
        chunk_rows = self._window_chunk_rows(recipients) or self._large_chunk_rows(recipients)
        chunks = -(-recipients // (chunk_rows or self._input.dispatch.chunk_size))
        status = BatchStatus.IN_PROGRESS_CHUNKED if chunks > 1 else BatchStatus.IN_PROGRESS
        # A spread batch keeps the reports first: its pace starts now, and the first chunk
        # would start behind the reports' activities and send its first rows late.
        spread = self._input.timing.spread_seconds > 0
        if not spread and workflow.patched(REPORT_WHILE_STARTING_PATCH):
            self._opening_reports = asyncio.create_task(self._report_opening(dispatching, status))
        else:
            await self._report(BatchStatus.DISPATCHING, message=dispatching)
            await self._report(status)
        now = workflow.now().timestamp()
        timing = self._input.timing
        return DispatchState(
            rows_total=rows_total,
            recipients=recipients,
            next_chunk=0,
            dispatched=0,
            event_seq=self._events_recorded,
            dispatch_started=now,
            status=status,
            pace=Pace(
                start=now,
                interval=timing.spread_seconds / recipients if timing.spread_seconds else 0.0,
                expire_at=timing.expire_at,
                send_window=timing.send_window,
            ),
            chunk_rows=chunk_rows,
        )

    def _window_chunk_rows(self, recipients: int) -> int:
        """The rows of each chunk of a spread batch with a send window (WINDOW_BESIDE_PATCH):
        SPREAD_CHUNK_SECONDS of its pace at most, so that the rows a chunk hands back wait
        no longer than that past their window's opening. 0 for any other batch: its chunks
        are `chunk_size` rows."""
        timing = self._input.timing
        if not (
            timing.spread_seconds and timing.send_window and recipients
        ) or not workflow.patched(WINDOW_BESIDE_PATCH):
            return 0
        # As a float first: a tiny spread makes the quotient inf, which no int holds.
        rows = min(
            float(self._input.dispatch.chunk_size),
            SPREAD_CHUNK_SECONDS * recipients / timing.spread_seconds,
        )
        return max(1, int(rows))

    def _large_chunk_rows(self, recipients: int) -> int:
        """The rows of each chunk of a batch sent in ChunkWorkflows (BALANCED_CHUNKS_PATCH):
        CHUNK_ROUNDS rounds of `chunk_window` chunks, in whole slices, no fewer rows than
        `chunk_size` and no more than `inline_slices` slices, nor than RATE_CHUNK_SECONDS of
        a rate-limited sender's sending (`sender_mps`). 0 for a batch sent in its own
        workflow, a spread one, or one whose rounds' chunks, in whole slices, would be no
        larger than `chunk_size`: the patch is asked only then."""
        dispatch = self._input.dispatch
        slices = -(-recipients // dispatch.slice_size)
        if self._input.timing.spread_seconds or slices <= dispatch.inline_slices:
            return 0
        even = -(-recipients // (dispatch.chunk_window * CHUNK_ROUNDS))
        rows = min(
            -(-even // dispatch.slice_size) * dispatch.slice_size,
            max(dispatch.chunk_size, dispatch.inline_slices * dispatch.slice_size),
        )
        if dispatch.sender_mps is not None:
            paced = dispatch.sender_mps * RATE_CHUNK_SECONDS / dispatch.chunk_window
            rows = min(rows, int(paced) // dispatch.slice_size * dispatch.slice_size)
        if rows <= dispatch.chunk_size or not workflow.patched(BALANCED_CHUNKS_PATCH):
            return 0
        return rows

    def _chunk_size(self, state: DispatchState) -> int:
        return state.chunk_rows or self._input.dispatch.chunk_size

    async def _report_opening(self, dispatching: str, status: BatchStatus) -> None:
        # Queued, the reports let this workflow task complete with the first sends' commands
        # and run beside them. Their order is kept: `_report_lock` gives them their seqs one
        # after the other, and the final event awaits them.
        queued = workflow.patched(OPENING_QUEUED_PATCH)
        await self._report(BatchStatus.DISPATCHING, message=dispatching, queued=queued)
        await self._report(status, queued=queued)

    async def _dispatch(self, state: DispatchState) -> BatchResult | None:
        """Run the remaining chunks; None when this run should continue as new first."""
        expiry = asyncio.create_task(self._expire_at(state.pace.expire_at))
        try:
            result = await self._run_chunks(state)
        finally:
            expiry.cancel()
        if self._opening_reports is not None:
            # Before a continue-as-new, which carries the count of recorded events; a
            # failure of theirs fails the run, as it did when they were awaited in line.
            await self._opening_reports
        return result

    async def _run_chunks(self, state: DispatchState) -> BatchResult | None:
        chunks = -(-state.recipients // self._chunk_size(state))
        self._window_passes = state.pace.send_window is not None and workflow.patched(
            WINDOW_PASSES_PATCH
        )
        self._window_beside = self._window_passes and workflow.patched(WINDOW_BESIDE_PATCH)
        beside = (
            asyncio.create_task(self._pass_waiting_beside(state)) if self._window_beside else None
        )
        while state.next_chunk < chunks and not self._stopped:
            if self._run_full():
                await self._end_beside(beside)
                await self._chunks_finished()
                if self._cancel_reason is None:
                    return None
                break
            if not await self._chunk_place(behind_beside=True):
                break
            if self._window_beside and self._run_full():
                continue  # the pass beside took the run's last place
            index = state.next_chunk
            state.next_chunk += 1
            self._started_here += 1
            self._start_chunk_task(self._run_chunk(state, index))
        if beside is not None:
            # The pass beside serves the ranges the last chunks hand back while they run.
            await workflow.wait_condition(lambda: not self._chunk_tasks)
        await self._end_beside(beside)
        await self._chunks_finished()
        if self._window_passes and not await self._pass_waiting(state):
            return None
        return await self._finish()

    def _run_full(self) -> bool:
        """Whether this run has started its share of chunks: it continues as new."""
        return (
            self._started_here >= self._input.dispatch.chunks_per_run
            or workflow.info().is_continue_as_new_suggested()
        )

    def _start_chunk_task(self, chunk: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(chunk)
        self._chunk_tasks[task] = None
        task.add_done_callback(self._forget_chunk_task)

    async def _chunk_place(self, *, behind_beside: bool = False) -> bool:
        """Wait for a place among the chunks in flight (`behind_beside`: after the pass
        beside the chunks, if it waits for one); False when the batch is cancelled (or
        expired, EXPIRY_ENDS_PAUSE_PATCH). With the pass beside, two waiters can be let
        through by one change: the second waits again."""
        window = self._input.dispatch.chunk_window

        def free() -> bool:
            return (
                len(self._chunk_tasks) < window
                and not self._paused
                and not (behind_beside and self._beside_waits)
            )

        while True:
            await workflow.wait_condition(
                lambda: free() or self._cancel_reason is not None or self._expiry_ends_wait
            )
            if self._cancel_reason is not None or self._expiry_ends_wait:
                return False
            if not self._window_beside or free():
                return True

    async def _pass_waiting(self, state: DispatchState) -> bool:
        """Send the rows that waited for their send window: sleep until the first of them
        opens (one durable timer a pass), then run a chunk over each range whose window has
        opened, and again while rows wait. False when this run should continue as new first
        (the ranges left are in `state`)."""
        while (opens := _first_opening(state)) is not None and not self._stopped:
            await self._sleep_while_sending(opens)
            if self._stopped:
                break
            if not await self._start_due(state, beside=False):
                return self._cancel_reason is not None
            await self._chunks_finished()
        return True

    async def _pass_waiting_beside(self, state: DispatchState) -> None:
        """While the chunks run (WINDOW_BESIDE_PATCH): each time a waiting range's window
        opens, run a chunk over it, as `_pass_waiting` does after them; until the batch stops,
        this run is full, or `_end_beside`. A timer to the first opening, cut short when a
        chunk hands back another range."""
        while not self._stopped and not self._beside_ends:
            opens = _first_opening(state)
            delay = None if opens is None else opens - workflow.now().timestamp()
            if delay is not None and delay <= 0:
                if not await self._start_due(state, beside=True):
                    return
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(
                    functools.partial(self._beside_wakes, state, opens),
                    timeout=None if delay is None else timedelta(seconds=delay),
                )

    def _beside_wakes(self, state: DispatchState, opens: float | None) -> bool:
        """Whether the pass beside the chunks should look again before its timer (to the
        first opening, `opens`): the batch stopped, the pass ends, or a chunk handed back a
        range that opens sooner."""
        first = _first_opening(state)
        return (
            self._stopped
            or self._beside_ends
            or (first is not None and (opens is None or first < opens))
        )

    async def _end_beside(self, beside: asyncio.Task[None] | None) -> None:
        """Stop the pass beside the chunks, once it has started what it was starting."""
        if beside is not None:
            self._beside_ends = True
            await beside

    async def _start_due(self, state: DispatchState, *, beside: bool) -> bool:
        """Run a chunk (`<batch>/waiting-<pass>-<start>`) over each waiting range whose
        window has opened; False when this run is full first: the ranges not started are
        left waiting, after those the running chunks hand back (after the chunks, once they
        have ended; beside them, the run's end waits for them)."""
        now = workflow.now().timestamp()
        due = [r for r in state.waiting if r.opens <= now]
        state.waiting = [r for r in state.waiting if r.opens > now]
        state.window_passes += 1
        for number, waiting in enumerate(due):
            if self._run_full():
                if not beside:
                    await self._chunks_finished()
                state.waiting.extend(due[number:])
                return False
            self._beside_waits = beside
            try:
                placed = await self._chunk_place()
            finally:
                self._beside_waits = False
            if not placed:
                break
            if beside and self._run_full():
                # Full while it waited: the run's end carries the ranges over.
                state.waiting.extend(due[number:])
                return False
            self._started_here += 1
            name = f"waiting-{state.window_passes}-{waiting.start}"
            self._start_chunk_task(
                self._send_range(state, waiting.start, waiting.end, name, hand_back=True)
            )
        return True

    async def _sleep_while_sending(self, moment: float) -> None:
        """A durable timer until `moment` that a cancel or the expiry cuts short."""
        delay = moment - workflow.now().timestamp()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(
                    lambda: self._stopped, timeout=timedelta(seconds=delay)
                )

    def _chunk_rows(self, state: DispatchState, index: int) -> tuple[int, int]:
        """Chunk `index`'s rows: seqs from the first up to the second."""
        start = index * self._chunk_size(state)
        return start, min(start + self._chunk_size(state), state.recipients)

    async def _run_chunk(self, state: DispatchState, index: int) -> None:
        start, end = self._chunk_rows(state, index)
        await self._send_range(
            state, start, end, f"chunk-{index}", index, hand_back=self._window_passes
        )
        state.dispatched += end - start
        now = workflow.now().timestamp()
        opened = self._opening_reports is None or self._opening_reports.done()
        if (
            now - self._last_progress >= PROGRESS_EVERY.total_seconds()
            and not self._paused
            and opened
        ):
            self._last_progress = now
            elapsed = max(now - state.dispatch_started, 0.001)
            await self._report(
                state.status,
                message=(
                    f"Requested: {state.rows_total}. Validated: {state.recipients}. "
                    f"Dispatched: {state.dispatched}. MPS: {state.dispatched / elapsed:.1f}."
                ),
                progress=True,
            )

    async def _send_range(
        self,
        state: DispatchState,
        start: int,
        end: int,
        name: str,
        index: int = -1,
        *,
        hand_back: bool = False,
    ) -> None:
        """Send the pending rows of seqs [start, end) in a ChunkWorkflow named `name`, steered
        by this batch's signals like every chunk. With `hand_back`, rows waiting for their
        send window are left to `_pass_waiting`."""
        dispatch = self._input.dispatch
        chunk_input = ChunkInput(
            batch_id=self._input.batch_id,
            account_id=self._input.account_id,
            agent_number=self._input.agent_number,
            start=start,
            end=end,
            slice_size=dispatch.slice_size,
            slices_in_flight=dispatch.slices_in_flight,
            pace=state.pace,
            send_heartbeat_timeout_seconds=dispatch.send_heartbeat_timeout_seconds,
            hand_back_waiting=hand_back,
            auto_pause=self._input.auto_pause,
            send_task_queue=dispatch.send_task_queue,
        )
        if index >= 0 and self._sends_in_batch(state):
            shared = self._slices_in_flight(state, index)
            counts = await self._send_in_batch(
                dataclasses.replace(chunk_input, slices_in_flight=shared), name
            )
        else:
            handle = await workflow.start_child_workflow(
                ChunkWorkflow.run, chunk_input, id=f"{workflow.info().workflow_id}/{name}"
            )
            self._chunks[name] = handle
            try:
                if self._stopped:
                    await handle.signal(ChunkWorkflow.stop)
                elif self._paused:
                    await handle.signal(ChunkWorkflow.pause)
                counts = await handle
            finally:
                del self._chunks[name]
        if index >= 0:
            self._chunks_done += 1
        self._totals.sent += counts.sent
        self._totals.failed += counts.failed
        if counts.waiting:
            state.waiting.append(WaitingRange(start=start, end=end, opens=counts.next_window))

    def _sends_in_batch(self, state: DispatchState) -> bool:
        """Whether the batch's chunks run in its own workflow: a batch not spread that fits
        one slice (ONE_SLICE_PATCH), or `inline_slices` of them (SLICES_INLINE_PATCH)."""
        dispatch = self._input.dispatch
        if state.pace.interval:
            return False
        if state.recipients <= dispatch.slice_size:
            return workflow.patched(ONE_SLICE_PATCH)
        slices = -(-state.recipients // dispatch.slice_size)
        return slices <= dispatch.inline_slices and workflow.patched(SLICES_INLINE_PATCH)

    def _slices_in_flight(self, state: DispatchState, index: int) -> int:
        """The slices in flight of chunk `index`, run in this workflow: with fewer chunks
        than `chunk_window`, its share of the window's `chunk_window` x `slices_in_flight`
        (SHARED_WINDOW_PATCH), dealt to the chunks one slice at a time in order, none more
        than it has; else, or for a chunk of no more slices than `slices_in_flight`, that."""
        dispatch = self._input.dispatch
        chunks = -(-state.recipients // self._chunk_size(state))
        sizes = [
            -(-(end - start) // dispatch.slice_size)
            for start, end in (self._chunk_rows(state, at) for at in range(chunks))
        ]
        if (
            len(sizes) >= dispatch.chunk_window
            or sizes[index] <= dispatch.slices_in_flight
            or not workflow.patched(SHARED_WINDOW_PATCH)
        ):
            return dispatch.slices_in_flight
        shares = [0] * len(sizes)
        left = dispatch.chunk_window * dispatch.slices_in_flight
        while left and any(share < size for share, size in zip(shares, sizes, strict=True)):
            for at, size in enumerate(sizes):
                if left and shares[at] < size:
                    shares[at] += 1
                    left -= 1
        return shares[index]

    async def _send_in_batch(self, chunk_input: ChunkInput, name: str) -> SendCounts:
        """A chunk run as a part of this workflow (ONE_SLICE_PATCH, SLICES_INLINE_PATCH): a
        batch whose rows fit a few slices spares the child workflow's start, its own workflow
        tasks and the task that takes its end, which stand between its POST and its first
        message, and between its last send and its final event.
        The sends, their pause, resume and stop, and the auto-pause are the chunk's own code."""
        chunk = ChunkWorkflow()
        self._chunks_in_batch[name] = chunk
        try:
            if self._stopped:
                chunk.stop()
            elif self._paused:
                chunk.pause()
            return await chunk.run_in_batch(chunk_input, self._ask_to_pause)
        finally:
            del self._chunks_in_batch[name]

    def _ask_to_pause(self, paused: AutoPaused) -> None:
        """What the `auto_pause` signal of a child chunk does, for a chunk run in this
        workflow: the handler runs beside the sends, as a signal's would."""
        task = asyncio.create_task(self.auto_pause(paused))
        self._asked_pauses[task] = None
        task.add_done_callback(lambda done: self._asked_pauses.pop(done, None))

    def _forget_chunk_task(self, task: asyncio.Task[None]) -> None:
        self._chunk_tasks.pop(task, None)
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            # Its rows still `pending` are sent as the batch ends (`_reconcile`).
            workflow.logger.warning("chunk failed: %r", failure)

    async def _chunks_finished(self) -> None:
        """Wait for the running chunks; unlike gather, a cancellation of this workflow does
        not cancel them (they are stopped by signal, so their last sends are recorded)."""
        if self._chunk_tasks:
            await workflow.wait(list(self._chunk_tasks))

    async def _signal_chunks(self, signal: Callable[[ChunkWorkflow], None]) -> None:
        for chunk in list(self._chunks_in_batch.values()):
            signal(chunk)
        for handle in list(self._chunks.values()):
            try:
                await handle.signal(signal)
            except (ApplicationError, ChildWorkflowError):
                pass  # the chunk finished meanwhile: nothing left to steer

    @property
    def _stopped(self) -> bool:
        return self._cancel_reason is not None or self._expired

    async def _expire_at(self, moment: float) -> None:
        """At `expire_at`, stop sending; what was not sent by then ends `expired`."""
        if not moment:
            return
        await workflow.sleep(max(0.0, moment - workflow.now().timestamp()))
        if not self._stopped:
            self._expired = True
            self._expiry_ends_wait = workflow.patched(EXPIRY_ENDS_PAUSE_PATCH)
            await self._signal_chunks(ChunkWorkflow.stop)

    async def _finish(self) -> BatchResult:
        if self._opening_reports is not None:
            # `dispatching` and `in_progress` before the final event, however fast the chunks.
            await self._opening_reports
        if workflow.patched(RECONCILE_PATCH) and (
            not workflow.patched(LOCAL_STEPS_PATCH) or await self._has_uncertain()
        ):
            await self._reconcile("reconciled", last=False)
            if workflow.patched(RECONCILE_AGAIN_PATCH):
                for turn in range(2, RECONCILE_ROUNDS + 1):
                    if self._stopped or not await self._has_uncertain():
                        break
                    await self._reconcile(f"reconciled-{turn}", last=turn == RECONCILE_ROUNDS)
        cancelled = self._cancel_reason is not None
        pending_as = (
            LedgerStatus.CANCELLED if cancelled else LedgerStatus.EXPIRED if self._expired else None
        )
        finish = FinishInput(batch_id=self._input.batch_id, close_pending_as=pending_as)
        counts = await self._db_step(LedgerActivities.finish_ledger, finish, timedelta(minutes=2))
        if cancelled:
            return await self._report_final(
                BatchStatus.CANCELLED, counts, code="cancelled", reason=self._cancel_reason
            )
        # An `uncertain` row may have reached the carrier: then "no message was accepted"
        # is not known, and the batch ends `completed_partial` with its counts.
        if counts.successful == 0 and counts.uncertain == 0:
            return await self._report_final(
                BatchStatus.FAILED,
                counts,
                code="all_sends_failed",
                reason="no message was accepted",
            )
        partial = (
            counts.failed + counts.skipped + counts.uncertain + counts.cancelled + counts.expired
        )
        status = BatchStatus.COMPLETED_PARTIAL if partial else BatchStatus.COMPLETED
        return await self._report_final(status, counts)

    async def _db_step(
        self,
        step: MethodAsyncSingleParam[Any, P, R],
        arg: P,
        start_to_close: timedelta,
        *,
        queued: bool = False,
    ) -> R:
        """A short database step: a local activity, in this workflow task, with
        LOCAL_STEPS_PATCH; an activity on the task queue in runs recorded before it, or
        when `queued`."""
        if not queued and workflow.patched(LOCAL_STEPS_PATCH):
            return await workflow.execute_local_activity_method(
                step, arg, start_to_close_timeout=start_to_close, retry_policy=DB_RETRY
            )
        return await workflow.execute_activity_method(
            step, arg, start_to_close_timeout=start_to_close, retry_policy=DB_RETRY
        )

    async def _has_uncertain(self) -> bool:
        """Whether reconciliation has rows to settle (a local activity)."""
        return await workflow.execute_local_activity_method(
            ReconciliationActivities.has_uncertain,
            self._reconcile_input(),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=DB_RETRY,
        )

    def _reconcile_input(self) -> ReconcileInput:
        return ReconcileInput(
            batch_id=self._input.batch_id,
            account_id=self._input.account_id,
            agent_number=self._input.agent_number,
            stopped=self._stopped,
        )

    async def _reconcile(self, name: str, *, last: bool) -> None:
        """Settle `uncertain` rows with the carrier; send those it never got, and rows still
        `pending` (a chunk that failed left them), in the chunk `name`, unless the batch was
        stopped (then they end as its other unsent rows do). The chunk's failure fails the
        run in the `last` round, where no round is left to send its rows."""
        settled = await workflow.execute_activity_method(
            ReconciliationActivities.reconcile_uncertain,
            self._reconcile_input(),
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=DB_RETRY,
        )
        state = self._state
        if settled.reopened and state is not None and not self._stopped:
            if self._paused and workflow.patched(RECONCILED_WAITS_FOR_RESUME_PATCH):
                await workflow.wait_condition(lambda: not self._paused or self._stopped)
                if self._stopped:
                    return
            try:
                await self._send_range(state, settled.first_seq, settled.end_seq, name)
            except ChildWorkflowError as failure:
                if last or not workflow.patched(RECONCILED_FAILURE_PATCH):
                    raise
                workflow.logger.warning("chunk %s failed: %r", name, failure)

    async def _finish_failed(
        self, code: str, reason: str | None, *, rows_total: int
    ) -> BatchResult:
        counts = BatchCounts(total=rows_total, skipped=rows_total)
        return await self._report_final(BatchStatus.FAILED, counts, code=code, reason=reason)

    async def _report_final(
        self,
        status: BatchStatus,
        counts: BatchCounts,
        *,
        code: str | None = None,
        reason: str | None = None,
    ) -> BatchResult:
        await self._report(status, code=code, reason=reason, counts=counts)
        return BatchResult(status=status, counts=counts, code=code, reason=reason)

    async def _report(
        self,
        status: BatchStatus,
        *,
        message: str | None = None,
        code: str | None = None,
        reason: str | None = None,
        counts: BatchCounts | None = None,
        error_codes: dict[str, int] | None = None,
        queued: bool = False,
        progress: bool = False,
    ) -> None:
        """Record a lifecycle event (batch row, search attribute, log) and queue its webhook;
        `queued`: by an activity on the task queue, even with LOCAL_STEPS_PATCH; `progress`:
        a repeat of the phase with its progress (StatusUpdate.progress)."""
        if self._paused and counts is None and status != BatchStatus.PAUSED:
            self._resume_status = status
            if not progress and workflow.patched(PHASES_HELD_PATCH):
                self._held.append((status, message))
            return
        async with self._report_lock:
            # Under the lock, a final status is one whose event is recorded.
            ended = self._status in FINAL_BATCH_STATUSES
            if ended and workflow.patched(NO_EVENT_AFTER_FINAL_PATCH):
                return
            seq = self._events_recorded + 1
            if status != self._status:
                self._status = status
                workflow.upsert_search_attributes([BATCH_STATUS.value_set(status)])
            update = StatusUpdate(
                batch_id=self._input.batch_id,
                workflow_id=workflow.info().workflow_id,
                event_seq=seq,
                status=status,
                message=message,
                code=code,
                reason=reason,
                counts=counts,
                error_codes=error_codes,
                progress=progress,
            )
            # Idempotent (the event's seq is its key): a local activity run again after a
            # lost workflow task records it once.
            await self._db_step(
                StatusEventActivities.record_status, update, timedelta(seconds=30), queued=queued
            )
            self._events_recorded = seq

    async def _deliver_events(self) -> None:
        """Post recorded events to the status webhook in order, without holding sends back.

        A failed post is retried by the activity on a later call: between calls this pump
        sleeps on a durable timer, and the batch's status never waits for it.
        """
        while True:
            await workflow.wait_condition(
                lambda: self._events_delivered < self._events_recorded or self._closing
            )
            if self._events_delivered >= self._events_recorded:
                return
            target = self._events_recorded
            delivery: DeliverEventsResult | None = await workflow.execute_activity_method(
                StatusEventActivities.deliver_status_events,
                DeliverEventsInput(batch_id=self._input.batch_id),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )
            # Compatibility branch `batch-deliver-events-result` (docs/WORKFLOWS.md): a run
            # started before webhook retries has `None` recorded here, meaning all settled.
            if delivery is None or delivery.retry_in is None:
                self._events_delivered = target
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(
                    lambda: self._handing_over, timeout=timedelta(seconds=delivery.retry_in)
                )
            if self._handing_over:
                return  # the next run's pump goes on from the database's delivery state

    async def _drain(self, pump: asyncio.Task[None], *, handing_over: bool) -> None:
        self._closing = True
        self._handing_over = handing_over
        await pump


def _first_opening(state: DispatchState) -> float | None:
    """When the first waiting range's window opens; None when no range waits."""
    return min((r.opens for r in state.waiting), default=None)
