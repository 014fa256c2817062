"""The fast tier for BatchWorkflow: its decisions (which slices go when, which statuses in
which order, the result) on the time-skipping test server, with stub activities."""

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from tests.support.sending import eventually
from tests.support.workflows import StubActivities, result_of, stub_worker
from workflows.batch import BALANCED_CHUNKS_PATCH, RECONCILE_ROUNDS, BatchWorkflow
from workflows.chunk import AUTO_PAUSE_SIGNAL, SPREAD_LEAD_SECONDS, ErrorWindow, throttled_reason
from workflows.contracts import (
    BATCH_WORKFLOW,
    AutoPause,
    AutoPaused,
    BatchInput,
    BatchProgress,
    BatchResult,
    DispatchSettings,
    SendCounts,
    SendSliceInput,
    SendWindow,
    StatusUpdate,
    Timing,
    batch_workflow_id,
)
from workflows.retries import VALIDATE_ATTEMPTS
from workflows.statuses import BatchStatus, LedgerStatus

pytestmark = pytest.mark.fast

S = BatchStatus


async def start_batch(
    env: WorkflowEnvironment,
    task_queue: str,
    *,
    dispatch: DispatchSettings | None = None,
    timing: Timing | None = None,
    retry_statuses: list[LedgerStatus] | None = None,
    first_event_seq: int = 0,
    auto_pause: AutoPause | None = None,
    start_signal: str | None = None,
    load_validated: bool = False,
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    batch_id = str(uuid.uuid4())
    return await env.client.start_workflow(
        BATCH_WORKFLOW,
        BatchInput(
            batch_id=batch_id,
            account_id=str(uuid.uuid4()),
            agent_number="+15005550006",
            dispatch=dispatch or DispatchSettings(),
            timing=timing or Timing(),
            retry_statuses=retry_statuses,
            first_event_seq=first_event_seq,
            auto_pause=auto_pause,
            load_validated=load_validated,
        ),
        id=batch_workflow_id(batch_id),
        task_queue=task_queue,
        result_type=BatchResult,
        start_signal=start_signal,
    )


async def cancel_through_temporal(handle: WorkflowHandle[BatchWorkflow, BatchResult]) -> None:
    """Cancel the run as `temporal workflow cancel` and the web UI do, and wait until the
    batch has taken it as its `cancel` signal."""
    await handle.cancel()
    await eventually(
        lambda: handle.query(BatchWorkflow.progress), lambda p: p.cancel_reason is not None
    )


def slices(stubs: StubActivities) -> list[tuple[int, int]]:
    sends: list[SendSliceInput] = stubs.inputs("send_slice")
    return [(s.start, s.end) for s in sends]


async def test_a_small_batch_sends_every_row_once_and_completes(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=5)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
        )
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(0, 2), (2, 4), (4, 5)]
    assert stubs.phases() == [S.VALIDATING, S.DISPATCHING, S.IN_PROGRESS, S.COMPLETED]
    assert result.status == S.COMPLETED
    assert result.counts.successful == 5


async def test_rows_the_carrier_never_got_are_sent_again_before_the_batch_ends(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, never_received={2, 4})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
        )
        result = await result_of(handle)
        history = await handle.fetch_history()
    sent = slices(stubs)
    assert sorted(sent[:3]) == [(0, 2), (2, 4), (4, 6)]
    assert sorted(sent[3:]) == [(2, 4), (4, 5)]
    assert len(stubs.inputs("reconcile_uncertain")) == 1
    chunks = [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    assert [c.rsplit("/", 1)[1] for c in chunks] == ["chunk-0", "reconciled"]
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


def child_names(history: WorkflowHistory) -> list[str]:
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id.rsplit("/", 1)[1]
        for e in history.events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]


async def test_rows_whose_second_send_is_lost_too_are_reconciled_again(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, never_received={2, 4}, lost_again=[{4}])
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
        )
        result = await result_of(handle)
        history = await handle.fetch_history()
    assert sorted(slices(stubs)[3:]) == [(2, 4), (4, 5), (4, 5)]
    assert len(stubs.inputs("reconcile_uncertain")) == 2
    assert child_names(history) == ["chunk-0", "reconciled", "reconciled-2"]
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def test_reconciliation_runs_at_most_three_times(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, never_received={4}, lost_again=[{4}] * 5)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
        )
        await result_of(handle)
        history = await handle.fetch_history()
    assert len(stubs.inputs("reconcile_uncertain")) == RECONCILE_ROUNDS == 3
    assert child_names(history) == ["chunk-0", "reconciled", "reconciled-2", "reconciled-3"]


async def test_a_cancelled_batch_sends_nothing_again_after_reconciling(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, held={0}, never_received={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=10, slice_size=2, slices_in_flight=1),
        )
        await stubs.wait_for(lambda: len(slices(stubs)) == 1)
        await handle.signal(BatchWorkflow.cancel, "not today")
        result = await result_of(handle)
    assert slices(stubs) == [(0, 2)]
    assert len(stubs.inputs("reconcile_uncertain")) == 1
    assert result.status == S.CANCELLED


async def reconciling(
    env: WorkflowEnvironment, task_queue: str, stubs: StubActivities
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """A batch of slices of 2 rows, once its reconciliation (held by `stubs`) has started."""
    handle = await start_batch(
        env, task_queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
    )
    await stubs.wait_for(lambda: bool(stubs.inputs("reconcile_uncertain")))
    return handle


async def test_a_temporal_cancellation_while_reconciliation_runs_ends_the_batch_cancelled(
    time_skipping: WorkflowEnvironment,
) -> None:
    # The cancellation reached the reconciliation activity: the run ended Cancelled with no
    # final event and its ledger never closed.
    stubs = StubActivities(recipients=4, never_received={1}, reconciliations_held=True)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await reconciling(time_skipping, queue, stubs)
        await cancel_through_temporal(handle)
        stubs.release.set()
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(0, 2), (2, 4)]
    assert [f.close_pending_as for f in stubs.inputs("finish_ledger")] == [LedgerStatus.CANCELLED]
    assert (result.status, result.reason, result.counts.cancelled) == (
        S.CANCELLED,
        "cancelled through Temporal",
        1,
    )
    assert stubs.statuses()[-1] == S.CANCELLED


async def test_a_temporal_cancellation_while_a_reconciled_chunk_sends_stops_it(
    time_skipping: WorkflowEnvironment,
) -> None:
    # The cancellation reached the `reconciled` chunk, taken for a chunk that failed: the
    # batch sent its rows in the next round and ended `completed`.
    stubs = StubActivities(recipients=4, never_received={1}, held={1})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
        )
        await stubs.wait_for(lambda: (1, 2) in slices(stubs))
        await cancel_through_temporal(handle)
        result = await result_of(handle)
    assert [(s.start, s.end) for s in stubs.cancelled_sends] == [(1, 2)]
    assert sorted(slices(stubs)) == [(0, 2), (1, 2), (2, 4)]
    assert [f.close_pending_as for f in stubs.inputs("finish_ledger")] == [LedgerStatus.CANCELLED]
    assert (result.status, result.counts.cancelled) == (S.CANCELLED, 1)


async def test_a_temporal_cancellation_while_validated_rows_load_ends_the_batch_cancelled(
    time_skipping: WorkflowEnvironment,
) -> None:
    # A Postman upload's rows: the cancelled load was taken for a failed validation.
    stubs = StubActivities(recipients=4, loads_held=True)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue, load_validated=True)
        await stubs.wait_for(lambda: bool(stubs.calls.get("load_recipients")))
        await cancel_through_temporal(handle)
        stubs.release.set()
        result = await result_of(handle)
    assert slices(stubs) == []
    assert (result.status, result.code, result.counts.cancelled) == (S.CANCELLED, "cancelled", 4)


async def test_a_cancel_while_validated_rows_load_stops_the_load(
    time_skipping: WorkflowEnvironment,
) -> None:
    # A Postman upload's rows: the cancel waited for the whole load (it is never released
    # here), then closed every loaded row `cancelled`.
    stubs = StubActivities(recipients=4, loads_held=True)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue, load_validated=True)
        await stubs.wait_for(lambda: bool(stubs.calls.get("load_recipients")))
        await handle.signal(BatchWorkflow.cancel, "wrong list")
        result = await result_of(handle)
    assert slices(stubs) == []
    assert (result.status, result.reason) == (S.CANCELLED, "wrong list")


async def test_a_temporal_cancellation_after_the_final_event_lets_its_posts_go_on(
    time_skipping: WorkflowEnvironment,
) -> None:
    # The run stays open while its events' posts are retried; the cancellation reached the
    # pump's post: the final event never reached the caller's webhook.
    stubs = StubActivities(recipients=4, undelivered=1)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, dispatch=DispatchSettings(chunk_size=10, slice_size=2)
        )
        await stubs.wait_for(
            lambda: S.COMPLETED in stubs.statuses() and bool(stubs.calls["deliver_status_events"])
        )
        delivered = len(stubs.calls["deliver_status_events"])
        await cancel_through_temporal(handle)
        result = await result_of(handle)
    assert result.status == S.COMPLETED
    assert len(stubs.calls["deliver_status_events"]) > delivered
    assert stubs.statuses()[-1] == S.COMPLETED


async def test_a_file_with_no_sendable_row_fails_without_sending(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=3, skipped=3)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue)
        result = await result_of(handle)
    assert slices(stubs) == []
    assert stubs.phases() == [S.VALIDATING, S.FAILED]
    assert (result.status, result.code) == (S.FAILED, "no_valid_recipients")
    assert (result.counts.total, result.counts.skipped) == (3, 3)


async def test_a_database_outage_during_validation_uses_up_no_attempt(
    time_skipping: WorkflowEnvironment,
) -> None:
    # PostgreSQL refuses connections for more attempts than a real error is given.
    outage: list[Exception] = [ConnectionRefusedError(111, "Connect call failed")] * (
        VALIDATE_ATTEMPTS + 2
    )
    stubs = StubActivities(recipients=3, validation_errors=outage)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue)
        result = await result_of(handle)
    assert len(stubs.inputs("validate_recipients")) == VALIDATE_ATTEMPTS + 3
    assert sorted(slices(stubs)) == [(0, 3)]
    assert result.status == S.COMPLETED


async def test_a_validation_that_keeps_failing_ends_the_batch_failed_after_its_attempts(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=3, validation_errors=[ValueError("no such column")] * 20)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue)
        result = await result_of(handle)
    assert len(stubs.inputs("validate_recipients")) == VALIDATE_ATTEMPTS
    assert slices(stubs) == []
    assert stubs.phases() == [S.VALIDATING, S.FAILED]
    assert (result.status, result.code) == (S.FAILED, "validation_error")
    assert result.reason == "the file could not be validated: ValueError: no such column"


async def test_a_retry_run_reopens_rows_without_validating_and_numbers_events_on(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=4)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            retry_statuses=[LedgerStatus.FAILED],
            first_event_seq=5,
        )
        result = await result_of(handle)
    assert "validate_recipients" not in stubs.calls
    assert [r.statuses for r in stubs.inputs("reopen_rows")] == [[LedgerStatus.FAILED]]
    assert sorted(slices(stubs)) == [(0, 4)]
    assert stubs.phases() == [S.DISPATCHING, S.IN_PROGRESS, S.COMPLETED]
    seqs = sorted(u.event_seq for u in stubs.inputs("record_status"))
    assert seqs == list(range(6, 6 + len(seqs)))
    assert result.status == S.COMPLETED


Ran = tuple[StubActivities, WorkflowHandle[BatchWorkflow, BatchResult], BatchResult]


async def retry_cancelled_before_reopening(env: WorkflowEnvironment) -> Ran:
    """A retry run of 4 rows whose `cancel` comes with its start (signal-with-start)."""
    stubs = StubActivities(recipients=4)
    async with stub_worker(env, stubs) as queue:
        handle = await start_batch(
            env,
            queue,
            retry_statuses=[LedgerStatus.FAILED],
            first_event_seq=5,
            start_signal=BatchWorkflow.cancel.__name__,
        )
        result = await result_of(handle)
    return stubs, handle, result


async def test_a_retry_run_cancelled_before_it_reopens_its_rows_leaves_them_as_they_were(
    time_skipping: WorkflowEnvironment,
) -> None:
    # A cancel sent at once after `/retry`: the rows were reopened, then closed `cancelled`,
    # and a later retry of the `failed` rows found none.
    stubs, _, result = await retry_cancelled_before_reopening(time_skipping)
    assert "reopen_rows" not in stubs.calls
    assert slices(stubs) == []
    assert [f.close_pending_as for f in stubs.inputs("finish_ledger")] == [LedgerStatus.CANCELLED]
    assert stubs.phases() == [S.CANCELLED]
    assert result.status == S.CANCELLED


async def reopening_retry(
    env: WorkflowEnvironment, queue: str, stubs: StubActivities
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """A retry run of the stubs' `failed` rows, once it is reopening them."""
    handle = await start_batch(env, queue, retry_statuses=[LedgerStatus.FAILED], first_event_seq=5)
    await stubs.wait_for(lambda: bool(stubs.inputs("reopen_rows")))
    return handle


async def retry_cancelled_while_reopening(env: WorkflowEnvironment) -> Ran:
    """A retry run of 4 `failed` rows cancelled while it reopens them."""
    stubs = StubActivities(recipients=4, reopens_held=True)
    async with stub_worker(env, stubs) as queue:
        handle = await reopening_retry(env, queue, stubs)
        await handle.signal(BatchWorkflow.cancel)
        await eventually(
            lambda: handle.query(BatchWorkflow.progress), lambda p: p.cancel_reason is not None
        )
        stubs.release.set()
        result = await result_of(handle)
    return stubs, handle, result


async def test_a_retry_run_cancelled_while_it_reopens_its_rows_puts_them_back(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Reopened, then closed `cancelled` with the batch (after `dispatching` and `in_progress`
    # for a run that sent nothing): the `failed` rows were `failed` no more.
    stubs, _, result = await retry_cancelled_while_reopening(time_skipping)
    assert slices(stubs) == []
    assert [f.close_pending_as for f in stubs.inputs("finish_ledger")] == [LedgerStatus.FAILED]
    assert stubs.phases() == [S.CANCELLED]
    assert result.status == S.CANCELLED


async def retry_paused_and_resumed_while_reopening(env: WorkflowEnvironment) -> Ran:
    """A retry run of 4 rows paused and resumed while it reopens its rows."""
    stubs = StubActivities(recipients=4, reopens_held=True)
    async with stub_worker(env, stubs) as queue:
        handle = await reopening_retry(env, queue, stubs)
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        await handle.signal(BatchWorkflow.resume)
        await eventually(
            lambda: handle.query(BatchWorkflow.progress), lambda progress: not progress.paused
        )
        stubs.release.set()
        result = await result_of(handle)
    return stubs, handle, result


async def test_a_retry_run_paused_and_resumed_before_it_dispatches_records_no_queued_event(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs, _, result = await retry_paused_and_resumed_while_reopening(time_skipping)
    assert stubs.phases() == [S.PAUSED, S.DISPATCHING, S.IN_PROGRESS, S.COMPLETED]
    assert result.status == S.COMPLETED


async def paused_while_reconciling(
    env: WorkflowEnvironment,
) -> tuple[*Ran, tuple[list[tuple[int, int]], bool]]:
    """A batch of 4 rows paused while it reconciles row 1 (which the carrier never got),
    resumed an hour later; also what it had sent, and whether it was paused, before."""
    stubs = StubActivities(recipients=4, never_received={1}, reconciliations_held=True)
    async with stub_worker(env, stubs) as queue:
        handle = await reconciling(env, queue, stubs)
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        stubs.release.set()
        await env.sleep(3600)
        before = (sorted(slices(stubs)), (await handle.query(BatchWorkflow.progress)).paused)
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    return stubs, handle, result, before


async def test_a_batch_paused_while_it_reconciles_sends_the_rows_the_carrier_never_got_after_resume(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Its `reconciled` chunk started at once, and sent while the batch showed `paused`.
    stubs, _, result, before = await paused_while_reconciling(time_skipping)
    assert before == ([(0, 2), (2, 4)], True)
    assert sorted(slices(stubs)) == [(0, 2), (1, 2), (2, 4)]
    assert stubs.phases()[-3:] == [S.PAUSED, S.IN_PROGRESS, S.COMPLETED]
    assert (result.status, result.counts.successful) == (S.COMPLETED, 4)


async def test_pause_holds_sends_until_resume_and_sends_the_interrupted_slice_again(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=4, held={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=10, slice_size=2, slices_in_flight=1),
        )
        # The opening reports run beside the first send: paused before `in_progress` was
        # recorded, the batch would report it at the resume instead (a different story).
        await stubs.wait_for(lambda: len(slices(stubs)) == 1 and S.IN_PROGRESS in stubs.statuses())
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(lambda: len(stubs.cancelled_sends) == 1)
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        # An hour paused: no slice starts, whatever timers fire meanwhile.
        await time_skipping.sleep(3600)
        assert slices(stubs) == [(0, 2)]
        assert (await handle.query(BatchWorkflow.progress)).paused
        stubs.release.set()
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    assert slices(stubs) == [(0, 2), (0, 2), (2, 4)]
    assert stubs.phases() == [
        S.VALIDATING,
        S.DISPATCHING,
        S.IN_PROGRESS,
        S.PAUSED,
        S.IN_PROGRESS,
        S.COMPLETED,
    ]
    # The resume itself reports the phase it returns to, before any progress report.
    updates = sorted(stubs.inputs("record_status"), key=lambda u: u.event_seq)
    paused = [u.status for u in updates].index(S.PAUSED)
    assert (updates[paused + 1].status, updates[paused + 1].message) == (S.IN_PROGRESS, None)
    assert result.status == S.COMPLETED
    assert result.counts.successful == 4


async def test_a_pause_that_comes_before_the_run_starts_holds_the_batch_until_resume(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Signal-with-start: the signal is in the workflow's first task, so its handler runs
    # before `run` (as a pause sent at once after the POST, or an account-wide auto-pause,
    # can). It ended every task of the batch with an error, for good.
    stubs = StubActivities(recipients=4)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=10, slice_size=2),
            start_signal=BatchWorkflow.pause.__name__,
        )
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        await time_skipping.sleep(3600)
        assert slices(stubs) == []
        assert (await handle.query(BatchWorkflow.progress)).paused
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(0, 2), (2, 4)]
    assert stubs.phases()[0] == S.PAUSED
    assert stubs.phases()[-1] == S.COMPLETED
    seqs = [u.event_seq for u in stubs.inputs("record_status")]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 4)


async def test_pauses_and_resumes_while_the_pause_is_recorded_take_turns(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Pause, resume, pause, resume, the first `paused` still being recorded. Each ran beside
    # the others: the second pause took `paused` (the status of the first, not yet resumed
    # in the record) as the phase to resume to, and the last resume recorded `paused` while
    # the batch sent on.
    stubs = StubActivities(recipients=6, held={0, 2, 4}, statuses_held={S.PAUSED})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=2, slice_size=2, chunk_window=3),
        )
        await stubs.wait_for(
            lambda: len(slices(stubs)) == 3 and S.IN_PROGRESS_CHUNKED in stubs.statuses()
        )
        recorded = len(stubs.statuses())
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(
            lambda: len(stubs.cancelled_sends) == 3 and S.PAUSED in stubs.statuses()
        )
        stubs.held |= {0, 2, 4}  # the chunks stay open until the end of the test
        for signal in (BatchWorkflow.resume, BatchWorkflow.pause, BatchWorkflow.resume):
            await handle.signal(signal)
        stubs.statuses_released.set()
        await stubs.wait_for(lambda: len(stubs.statuses()) == recorded + 4)
        assert stubs.statuses()[recorded:] == [S.PAUSED, S.IN_PROGRESS_CHUNKED] * 2
        stubs.release.set()
        result = await result_of(handle)
    assert stubs.statuses()[-1] == S.COMPLETED
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def test_cancel_interrupts_the_send_and_closes_the_rest_cancelled(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, held={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=10, slice_size=2, slices_in_flight=1),
        )
        await stubs.wait_for(lambda: len(slices(stubs)) == 1)
        await handle.signal(BatchWorkflow.cancel, "not today")
        result = await result_of(handle)
    assert slices(stubs) == [(0, 2)]
    assert len(stubs.cancelled_sends) == 1
    finish = stubs.inputs("finish_ledger")
    assert [f.close_pending_as for f in finish] == [LedgerStatus.CANCELLED]
    assert stubs.phases()[-1] == S.CANCELLED
    assert (result.status, result.code, result.reason) == (S.CANCELLED, "cancelled", "not today")
    assert result.counts.cancelled == 6


async def six_hours_ahead(env: WorkflowEnvironment) -> float:
    """A batch's `schedule_at`, six hours after the test server's time."""
    return (await env.get_current_time()).timestamp() + 6 * 3600


async def start_waiting(
    env: WorkflowEnvironment, task_queue: str, stubs: StubActivities, schedule_at: float
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """A batch scheduled at `schedule_at`, once it waits for that time."""
    handle = await start_batch(env, task_queue, timing=Timing(schedule_at=schedule_at))
    await stubs.wait_for(lambda: S.WAITING_FOR_SCHEDULED_MESSAGES in stubs.phases())
    return handle


async def test_a_scheduled_batch_waits_for_its_time_before_the_first_send(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=3)
    schedule_at = await six_hours_ahead(time_skipping)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue, timing=Timing(schedule_at=schedule_at))
        result = await result_of(handle)
    assert stubs.phases() == [
        S.VALIDATING,
        S.WAITING_FOR_SCHEDULED_MESSAGES,
        S.DISPATCHING,
        S.IN_PROGRESS,
        S.COMPLETED,
    ]
    validated_at = stubs.calls["validate_recipients"][0].at
    assert validated_at < schedule_at
    assert min(call.at for call in stubs.calls["send_slice"]) >= schedule_at
    assert result.status == S.COMPLETED


async def test_a_scheduled_batch_paused_and_resumed_says_again_when_it_sends(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=3)
    schedule_at = await six_hours_ahead(time_skipping)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_waiting(time_skipping, queue, stubs, schedule_at)
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(lambda: S.PAUSED in stubs.phases())
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    updates: list[StatusUpdate] = sorted(
        stubs.inputs("record_status"), key=lambda update: update.event_seq
    )
    waiting = [u.message for u in updates if u.status == S.WAITING_FOR_SCHEDULED_MESSAGES]
    when = datetime.fromtimestamp(schedule_at, UTC).isoformat()
    # The resumed phase's event says when, as its first did (docs/API.md, its `message`).
    assert waiting == [f"Scheduled for {when}."] * 2
    assert result.status == S.COMPLETED


async def test_a_batch_cancelled_while_it_waits_for_its_time_ends_there(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=3)
    schedule_at = await six_hours_ahead(time_skipping)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_waiting(time_skipping, queue, stubs, schedule_at)
        await handle.signal(BatchWorkflow.cancel, "not this week")
        result = await result_of(handle)
    # No send phase for a batch that sent nothing.
    assert stubs.phases() == [S.VALIDATING, S.WAITING_FOR_SCHEDULED_MESSAGES, S.CANCELLED]
    assert "send_slice" not in stubs.calls
    finish = stubs.inputs("finish_ledger")
    assert [f.close_pending_as for f in finish] == [LedgerStatus.CANCELLED]
    assert (result.status, result.reason) == (S.CANCELLED, "not this week")


async def test_a_spread_batch_sends_each_slice_at_its_place_on_the_timeline(
    time_skipping: WorkflowEnvironment,
) -> None:
    # 6 rows over 600 s: a row every 100 s, so slices of 3 rows (300 s of the timeline).
    stubs = StubActivities(recipients=6)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(time_skipping, queue, timing=Timing(spread_seconds=600))
        result = await result_of(handle)
    sends: list[SendSliceInput] = stubs.inputs("send_slice")
    assert [(s.start, s.end) for s in sends] == [(0, 3), (3, 6)]
    pace = sends[0].pace
    assert pace.interval == 100
    times = [call.at for call in stubs.calls["send_slice"]]
    # Each slice starts a little before its first row's send time, not earlier.
    for send, at in zip(sends, times, strict=True):
        due = pace.send_time(send.start) - SPREAD_LEAD_SECONDS
        assert due <= at < due + 5
    assert times[1] - times[0] >= 295
    assert result.status == S.COMPLETED


async def test_a_spread_batch_resumed_after_a_pause_keeps_its_pace_from_where_it_stopped(
    time_skipping: WorkflowEnvironment,
) -> None:
    # 8 rows over 4 hours, a row every 1,800 s, in chunks of two rows one at a time, paused
    # for 5,000 s after the first row: every row whose place had passed (row 1, and row 2,
    # the first of the chunk started after the resume) went at once on resume.
    stubs = StubActivities(recipients=8)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=2, chunk_window=1),
            timing=Timing(spread_seconds=8 * 1800),
        )
        await stubs.wait_for(lambda: len(slices(stubs)) == 1)
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        paused_at = (await time_skipping.get_current_time()).timestamp()
        await time_skipping.sleep(5000)
        resumed_at = (await time_skipping.get_current_time()).timestamp()
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    sends: list[SendSliceInput] = stubs.inputs("send_slice")
    assert [(s.start, s.end) for s in sends] == [(seq, seq + 1) for seq in range(8)]
    first = sends[0].pace
    times = [call.at for call in stubs.calls["send_slice"]]
    paused_for = resumed_at - paused_at
    for send, at in zip(sends[1:], times[1:], strict=True):
        due = first.send_time(send.start) + paused_for - SPREAD_LEAD_SECONDS
        assert due - 5 <= at < due + 5, (send.start, at - first.start)
    assert result.status == S.COMPLETED


async def test_rows_outside_their_send_window_are_sent_when_it_opens(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Rows 1 and 4 are outside their window for 5 hours; the others go at once.
    stubs = StubActivities(recipients=6, outside_window={1, 4})
    stubs.window_opens = (await time_skipping.get_current_time()).timestamp() + 5 * 3600
    window = SendWindow(start="09:00", end="17:00")
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(slice_size=3, slices_in_flight=1),
            timing=Timing(send_window=window),
        )
        result = await result_of(handle)
    sends: list[SendSliceInput] = stubs.inputs("send_slice")
    assert all(s.pace.send_window == window for s in sends)
    times = [call.at for call in stubs.calls["send_slice"]]
    first_pass, again = times[:2], times[2:]
    # Both slices ran at once (the waiting one gave up its place), then again at the opening.
    assert [(s.start, s.end) for s in sends[:2]] == [(0, 3), (3, 6)]
    assert sorted((s.start, s.end) for s in sends[2:]) == [(0, 3), (3, 6)]
    assert max(first_pass) < stubs.window_opens <= min(again)
    assert stubs.sent == set(range(6))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def test_expiry_stops_sending_and_closes_what_was_left_expired(
    time_skipping: WorkflowEnvironment,
) -> None:
    # 9 rows spread over 900 s: slices [0,3) at 0 s, [3,6) at 300 s, [6,9) at 600 s.
    stubs = StubActivities(recipients=9)
    now = (await time_skipping.get_current_time()).timestamp()
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping, queue, timing=Timing(spread_seconds=900, expire_at=now + 450)
        )
        result = await result_of(handle)
    assert slices(stubs) == [(0, 3), (3, 6)]
    finish = stubs.inputs("finish_ledger")
    assert [f.close_pending_as for f in finish] == [LedgerStatus.EXPIRED]
    assert result.status == S.COMPLETED_PARTIAL
    assert (result.counts.successful, result.counts.expired) == (6, 3)


async def paused_before_its_expiry(
    env: WorkflowEnvironment, task_queue: str, stubs: StubActivities
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """A batch of chunks of 2 rows, one at a time, paused as its first slice is held; it
    expires 600 s after its start."""
    now = (await env.get_current_time()).timestamp()
    handle = await start_batch(
        env,
        task_queue,
        dispatch=DispatchSettings(chunk_size=2, slice_size=2, chunk_window=1),
        timing=Timing(expire_at=now + 600),
    )
    await stubs.wait_for(
        lambda: len(slices(stubs)) == 1 and S.IN_PROGRESS_CHUNKED in stubs.statuses()
    )
    await handle.signal(BatchWorkflow.pause)
    await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
    return handle


async def test_a_batch_paused_past_its_expiry_ends_with_what_was_left_expired(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=8, held={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await paused_before_its_expiry(time_skipping, queue, stubs)
        # No resume: the expiry ends the batch, as it does one that is sending.
        result = await result_of(handle)
    finish = stubs.inputs("finish_ledger")
    assert [f.close_pending_as for f in finish] == [LedgerStatus.EXPIRED]
    assert stubs.phases()[-2:] == [S.PAUSED, S.FAILED]
    assert result.counts.expired == 8


async def test_a_resume_that_comes_after_the_final_event_changes_nothing(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Paused, then ended by its expiry; its run stays open while the status webhook's post
    # waits for its retry, and a resume comes meanwhile (an operator's racing the API's
    # check, or an auto-pause's timer). It recorded the phase paused after the final event,
    # and left the batch sending for good.
    stubs = StubActivities(recipients=8, held={0}, undelivered=1)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await paused_before_its_expiry(time_skipping, queue, stubs)
        await time_skipping.sleep(700)
        await stubs.wait_for(lambda: S.FAILED in stubs.statuses())
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    assert stubs.statuses()[-2:] == [S.PAUSED, S.FAILED]
    assert (result.status, result.counts.expired) == (S.FAILED, 8)


async def resumed_while_closing_expired(env: WorkflowEnvironment) -> Ran:
    """A batch paused, then past its expiry, resumed while its run reconciles a row on the
    wire before its final event."""
    stubs = StubActivities(recipients=8, held={0}, never_received={5}, reconciliations_held=True)
    async with stub_worker(env, stubs) as queue:
        handle = await paused_before_its_expiry(env, queue, stubs)
        await env.sleep(601)
        await stubs.wait_for(lambda: bool(stubs.inputs("reconcile_uncertain")))
        await handle.signal(BatchWorkflow.resume)
        await handle.query(BatchWorkflow.progress)
        stubs.release.set()
        result = await result_of(handle)
    return stubs, handle, result


async def test_a_resume_that_comes_while_an_expired_batch_closes_changes_nothing(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Paused, then past its expiry, its run reconciling a row on the wire before the final
    # event: a resume (an operator's, the database status not final yet) recorded the phase
    # paused in between `paused` and the final event.
    stubs, _, result = await resumed_while_closing_expired(time_skipping)
    assert stubs.statuses()[-2:] == [S.PAUSED, S.FAILED]
    assert result.status == S.FAILED


@pytest.mark.parametrize(
    ("recipients", "chunk_size", "inline_slices", "first_slices"),
    [
        (8, 8, 8, [0, 1, 2, 3]),
        (8, 4, 8, [0, 1, 4, 5]),
        (8, 3, 8, [0, 1, 3, 6]),
        (6, 5, 8, [0, 1, 2, 5]),
        (8, 2, 8, [0, 2, 4, 6]),
        (8, 4, 1, [0, 4]),
    ],
    ids=["one-chunk", "two-chunks", "three-chunks", "a-short-chunk", "four-chunks", "workflows"],
)
async def test_a_batch_of_few_chunks_shares_the_window_among_them(
    time_skipping: WorkflowEnvironment,
    recipients: int,
    chunk_size: int,
    inline_slices: int,
    first_slices: list[int],
) -> None:
    # Slices of 1 row, a window of 4 chunks of 1 slice in flight each: a batch run in its own
    # workflow has 4 slices in flight however many chunks it has, dealt to its chunks one at
    # a time, none more than it has (`batch-inline-chunks-share-window`): three chunks 2, 1,
    # 1; chunks of 5 and 1 slices 3 and 1. With chunk workflows, one a chunk.
    stubs = StubActivities(recipients=recipients, held=set(range(recipients)))
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(
                chunk_size=chunk_size,
                slice_size=1,
                chunk_window=4,
                slices_in_flight=1,
                inline_slices=inline_slices,
            ),
        )
        await stubs.wait_for(lambda: len(slices(stubs)) >= len(first_slices))
        # Every slice holds its place until released: no other starts meanwhile.
        await asyncio.sleep(0.5)
        assert sorted(start for start, _ in slices(stubs)) == first_slices
        stubs.release.set()
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(seq, seq + 1) for seq in range(recipients)]
    assert (result.status, result.counts.successful) == (S.COMPLETED, recipients)


def patches(history: WorkflowHistory) -> list[str]:
    """The patches the history's run recorded, in order."""
    return [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]


@pytest.mark.parametrize(
    ("recipients", "inline_slices", "sender_mps", "chunks", "patched"),
    [
        (40, 8, None, 10, True),
        (40, 3, None, 14, True),
        (40, 8, 0.1, 14, True),
        (40, 8, 0.05, 20, False),
        (12, 8, None, 6, False),
        (8, 8, None, 0, False),
    ],
    ids=[
        "rounds-of-the-window",
        "at-most-inline-slices",
        "at-most-a-minute-of-its-sender",
        "a-slow-senders-chunk-size",
        "at-least-chunk-size",
        "in-the-batch",
    ],
)
async def test_a_large_batch_runs_rounds_of_the_windows_chunks_not_one_of_chunk_size_each(
    time_skipping: WorkflowEnvironment,
    recipients: int,
    inline_slices: int,
    sender_mps: float | None,
    chunks: int,
    patched: bool,
) -> None:
    # A window of 2 chunks, 5 rounds of it: 40 rows are 10 chunks of 4 (not 20 of
    # `chunk_size` 2), or of 3 where 3 slices is what the batch's own workflow holds, or
    # where a minute of a 0.1 mps sender's sending, shared by the window's two chunks, is 3
    # rows (at 0.05 mps, 1.5 rows: `chunk_size`); 12 rows would be chunks of 2 rows,
    # `chunk_size` anyway. Within `inline_slices`, none.
    stubs = StubActivities(recipients=recipients)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(
                chunk_size=2,
                slice_size=1,
                chunk_window=2,
                inline_slices=inline_slices,
                sender_mps=sender_mps,
            ),
        )
        result = await result_of(handle)
        history = await handle.fetch_history()
    assert child_names(history) == [f"chunk-{index}" for index in range(chunks)]
    assert (BALANCED_CHUNKS_PATCH in patches(history)) == patched
    assert sorted(slices(stubs)) == [(seq, seq + 1) for seq in range(recipients)]
    assert (result.status, result.counts.successful) == (S.COMPLETED, recipients)


async def test_a_large_batchs_chunk_rows_are_carried_over_a_continue_as_new(
    time_skipping: WorkflowEnvironment,
) -> None:
    # 40 rows in 10 chunks of 4 (five rounds of a window of 2), 3 chunks a run: 4 runs, each
    # starting the next chunks of 4 rows from the state handed over, none of `chunk_size` 2.
    stubs = StubActivities(recipients=40)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(
                chunk_size=2, slice_size=1, chunk_window=2, inline_slices=8, chunks_per_run=3
            ),
        )
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(seq, seq + 1) for seq in range(40)]
    assert len({call.run_id for call in stubs.calls["record_status"]}) == 4
    # Each chunk workflow's run sent its 4 rows, from a multiple of 4.
    by_chunk: dict[str | None, list[int]] = {}
    for call in stubs.calls["send_slice"]:
        by_chunk.setdefault(call.run_id, []).append(call.input.start)
    assert sorted(sorted(starts) for starts in by_chunk.values()) == [
        list(range(first, first + 4)) for first in range(0, 40, 4)
    ]
    assert (result.status, result.counts.successful) == (S.COMPLETED, 40)


@pytest.mark.parametrize("inline_slices", [1, 7], ids=["chunk-workflows", "in-the-batch"])
async def test_continue_as_new_hands_over_and_sends_every_row_once(
    time_skipping: WorkflowEnvironment, inline_slices: int
) -> None:
    # 7 rows in chunks of 2 is 4 chunks; 2 chunks a run is 2 runs. With `inline_slices` 7
    # the 7 slices are the batch's own, in both runs (`batch-slices-inline`).
    stubs = StubActivities(recipients=7)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(
                chunk_size=2, slice_size=1, chunks_per_run=2, inline_slices=inline_slices
            ),
        )
        result = await result_of(handle)
    sends = sorted(slices(stubs))
    assert sends == [(seq, seq + 1) for seq in range(7)]
    status_runs = {call.run_id for call in stubs.calls["record_status"]}
    assert len(status_runs) == 2
    send_runs = {call.run_id for call in stubs.calls["send_slice"]}
    if inline_slices > 1:
        assert send_runs == status_runs
    else:
        assert send_runs.isdisjoint(status_runs) and len(send_runs) == 4
    assert stubs.calls["validate_recipients"][0].run_id == handle.result_run_id
    assert stubs.calls["finish_ledger"][0].run_id != handle.result_run_id
    # Event numbers carry on across runs: consecutive, none twice.
    seqs = [u.event_seq for u in stubs.inputs("record_status")]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert stubs.phases() == [
        S.VALIDATING,
        S.DISPATCHING,
        S.IN_PROGRESS_CHUNKED,
        S.COMPLETED,
    ]
    assert result.status == S.COMPLETED
    assert result.counts.successful == 7


async def test_a_cancel_that_comes_while_a_run_hands_over_ends_the_batch(
    time_skipping: WorkflowEnvironment,
) -> None:
    # 8 rows in chunks of 2, 2 chunks a run. The first run's chunks are done and it waits
    # for a webhook post in flight before it continues as new; a cancel then was answered
    # 200, but the next run sent every remaining chunk.
    stubs = StubActivities(recipients=8, deliveries_held=True)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=2, slice_size=2, chunks_per_run=2),
        )
        await stubs.wait_for(lambda: len(stubs.sent) == 4)
        # The run's chunks end, then it waits for the post before it continues as new.
        await asyncio.sleep(1)
        await handle.signal(BatchWorkflow.cancel, "stop")
        stubs.deliveries_released.set()
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(0, 2), (2, 4)]
    assert [f.close_pending_as for f in stubs.inputs("finish_ledger")] == [LedgerStatus.CANCELLED]
    assert (result.status, result.counts.cancelled) == (S.CANCELLED, 4)


async def test_a_temporal_cancellation_while_a_run_hands_over_ends_the_batch(
    temporal: Client,
) -> None:
    # As the signal's test above: the cancellation reached the hand-over's wait for the post,
    # and the run ended Cancelled, its ledger never closed, with no final event. On the dev
    # server: the test server fails a continue-as-new once a cancellation was asked for.
    stubs = StubActivities(recipients=8, deliveries_held=True)
    env = WorkflowEnvironment.from_client(temporal)
    async with stub_worker(env, stubs) as queue:
        handle = await start_batch(
            env,
            queue,
            dispatch=DispatchSettings(chunk_size=2, slice_size=2, chunks_per_run=2),
        )
        await stubs.wait_for(lambda: len(stubs.sent) == 4)
        await asyncio.sleep(1)
        await cancel_through_temporal(handle)
        stubs.deliveries_released.set()
        result = await result_of(handle)
    assert sorted(slices(stubs)) == [(0, 2), (2, 4)]
    assert [f.close_pending_as for f in stubs.inputs("finish_ledger")] == [LedgerStatus.CANCELLED]
    assert (result.status, result.counts.cancelled) == (S.CANCELLED, 4)


async def test_a_webhook_retry_waiting_at_a_hand_over_is_made_by_the_next_run(
    time_skipping: WorkflowEnvironment,
) -> None:
    # The first run's chunks are done; its pause comes while the run waits for a webhook
    # post, which then fails and must wait for its retry. The next run starts paused and
    # records no event: its pump waited for one, and the retry with it, until the resume.
    stubs = StubActivities(recipients=4, deliveries_held=True, undelivered=1)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=2, slice_size=2, chunks_per_run=1),
        )
        first_run = handle.result_run_id
        await stubs.wait_for(lambda: len(stubs.sent) == 2)
        await asyncio.sleep(1)
        await handle.signal(BatchWorkflow.pause)
        stubs.deliveries_released.set()
        await stubs.wait_for(
            lambda: any(c.run_id != first_run for c in stubs.calls["deliver_status_events"])
        )
        assert (await handle.query(BatchWorkflow.progress)).paused
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    assert (result.status, result.counts.successful) == (S.COMPLETED, 4)


async def run_waiting_batch(
    env: WorkflowEnvironment, stubs: StubActivities, dispatch: DispatchSettings
) -> BatchResult:
    """A batch with a send window, whose `stubs.outside_window` rows wait 10 hours for it."""
    stubs.window_opens = (await env.get_current_time()).timestamp() + 10 * 3600
    async with stub_worker(env, stubs) as queue:
        handle = await start_batch(
            env,
            queue,
            dispatch=dispatch,
            timing=Timing(send_window=SendWindow(start="09:00", end="17:00")),
        )
        return await result_of(handle)


async def test_rows_waiting_for_their_window_hold_back_no_later_chunk(
    time_skipping: WorkflowEnvironment,
) -> None:
    # One chunk at a time; the first chunk's rows wait 10 hours for their window, the second
    # chunk's may go now: they go before the first chunk's window opens.
    stubs = StubActivities(recipients=6, outside_window={0, 1, 2})
    dispatch = DispatchSettings(chunk_size=3, slice_size=3, chunk_window=1)
    result = await run_waiting_batch(time_skipping, stubs, dispatch)
    sends = [(call.input.start, call.at) for call in stubs.calls["send_slice"]]
    [later_chunk] = [at for start, at in sends if start == 3]
    waiting = [at for start, at in sends if start == 0]
    assert later_chunk < stubs.window_opens
    # The first chunk's rows: once in the first pass, once in the pass at their opening.
    assert len(waiting) == 2 and waiting[0] < later_chunk and waiting[1] >= stubs.window_opens
    assert stubs.sent == set(range(6))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def test_ranges_waiting_for_their_window_are_carried_over_a_continue_as_new(
    time_skipping: WorkflowEnvironment,
) -> None:
    # 3 chunks of 2 rows, 2 chunks a run: the first run ends with chunk 0's rows waiting, and
    # the next run, after chunk 2, sends them when their window opens.
    stubs = StubActivities(recipients=6, outside_window={0, 1})
    dispatch = DispatchSettings(chunk_size=2, slice_size=2, chunks_per_run=2)
    result = await run_waiting_batch(time_skipping, stubs, dispatch)
    calls = stubs.calls["send_slice"]
    again = [call for call in calls if call.input.start == 0][1:]
    assert len(again) == 1 and again[0].at >= stubs.window_opens
    assert len({call.run_id for call in stubs.calls["record_status"]}) == 2
    assert stubs.sent == set(range(6))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def send_times(stubs: StubActivities) -> dict[int, list[float]]:
    """When each slice was sent, by its first row."""
    times: dict[int, list[float]] = {}
    for call in stubs.calls["send_slice"]:
        times.setdefault(call.input.start, []).append(call.at)
    return times


async def start_spread_with_a_window(
    env: WorkflowEnvironment, stubs: StubActivities, queue: str, dispatch: DispatchSettings
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """`stubs.recipients` rows over 30 hours, with a send window; the window of the rows
    `stubs.outside_window` opens at 3 h."""
    stubs.window_opens = (await env.get_current_time()).timestamp() + 3 * 3600
    return await start_batch(
        env,
        queue,
        dispatch=dispatch,
        timing=Timing(spread_seconds=30 * 3600, send_window=SendWindow(start="09:00", end="17:00")),
    )


@pytest.mark.parametrize("chunk_window", [8, 1])
async def test_a_spread_batchs_rows_waiting_for_their_window_go_as_it_opens_not_after_the_spread(
    time_skipping: WorkflowEnvironment, chunk_window: int
) -> None:
    # 6 rows over 30 hours: a row every 5 hours, each its own chunk (a spread batch with a
    # send window runs chunks of at most an hour of its pace). Row 0's window opens at 3 h.
    stubs = StubActivities(recipients=6, outside_window={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_spread_with_a_window(
            time_skipping, stubs, queue, DispatchSettings(chunk_window=chunk_window)
        )
        result = await result_of(handle)
    times = await send_times(stubs)
    [first, again] = times[0]
    assert first < stubs.window_opens <= again
    if chunk_window > len(times):
        # At its opening, beside the chunks that wait for their rows' times.
        assert again < stubs.window_opens + 60
    else:
        # At the first place after it: the running chunk's (row 1, at 5 h) as it ends,
        # before the next chunk's row (at 10 h).
        assert times[1][0] <= again < times[2][0]
    # Not after the last row (25 h), as when the rows that waited were passed over only once
    # every chunk had ended.
    assert again < times[5][0]
    assert stubs.sent == set(range(6))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def test_a_spread_batchs_waiting_rows_are_carried_over_a_continue_as_new_and_sent_first(
    time_skipping: WorkflowEnvironment,
) -> None:
    # Two chunks a run, a row every 5 hours, row 0's window opening at 3 h: the first run
    # ends as chunk 1 ends (5 h) with row 0's range waiting; the next sends it at once.
    stubs = StubActivities(recipients=6, outside_window={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_spread_with_a_window(
            time_skipping, stubs, queue, DispatchSettings(chunk_window=8, chunks_per_run=2)
        )
        result = await result_of(handle)
    times = await send_times(stubs)
    [_, again] = times[0]
    assert times[1][0] <= again < times[2][0]
    assert len({call.run_id for call in stubs.calls["record_status"]}) >= 2
    assert stubs.sent == set(range(6))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def start_waiting_for_a_place(
    env: WorkflowEnvironment, stubs: StubActivities, queue: str
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """Six rows over 30 hours, one chunk at a time; row 0 waits for its window, open at
    3 h. At 4 h its range waits for the one place among the chunks, which row 1's chunk
    holds while it waits for its row's time (5 h)."""
    handle = await start_spread_with_a_window(env, stubs, queue, DispatchSettings(chunk_window=1))
    # The test server skips time by itself only while a result is awaited.
    await env.sleep(4 * 3600)
    assert slices(stubs) == [(0, 1)]
    return handle


async def test_a_waiting_range_behind_a_paused_batchs_chunk_goes_after_the_resume_first(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, outside_window={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_waiting_for_a_place(time_skipping, stubs, queue)
        await handle.signal(BatchWorkflow.pause)
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        # A day paused: neither the range nor a chunk starts, whatever timers fire.
        await time_skipping.sleep(24 * 3600)
        assert slices(stubs) == [(0, 1)]
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    # Row 1's chunk, then the range (before the next chunk), then the rest.
    assert slices(stubs)[1:4] == [(1, 2), (0, 1), (2, 3)]
    assert stubs.sent == set(range(6))
    assert (result.status, result.counts.successful) == (S.COMPLETED, 6)


async def test_a_batch_cancelled_while_a_waiting_range_waits_for_a_place_sends_it_not(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=6, outside_window={0})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_waiting_for_a_place(time_skipping, stubs, queue)
        await handle.signal(BatchWorkflow.cancel, "not today")
        result = await result_of(handle)
    assert slices(stubs) == [(0, 1)]
    assert stubs.sent == set()
    assert (result.status, result.reason) == (S.CANCELLED, "not today")


def test_the_error_window_keeps_about_its_size_of_the_newest_slices() -> None:
    window = ErrorWindow(200)
    window.add(SendCounts(sent=100, failed=0))
    assert window.error_rate() is None  # fewer messages than the window: no verdict yet
    window.add(SendCounts(sent=20, failed=80, errors={"21612": 60, "30007": 20}))
    assert window.error_rate() == 80 / 200
    assert window.passes(AutoPause(error_rate=0.5)) is None
    # The oldest slice drops once the newer ones fill the window without it.
    window.add(SendCounts(sent=0, failed=100, errors={"21612": 100}))
    assert window.error_rate() == 180 / 200
    paused = window.passes(AutoPause(error_rate=0.5))
    assert paused is not None
    assert (paused.code, paused.error_codes) == ("carrier_error_rate", {"21612": 160, "30007": 20})
    assert "180 of the last 200" in paused.reason
    window.clear()
    assert window.error_rate() is None


async def test_a_batch_pauses_itself_once_its_window_of_errors_passes_the_rate(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities(recipients=8, refused={0, 1, 2, 3})
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_batch(
            time_skipping,
            queue,
            dispatch=DispatchSettings(chunk_size=10, slice_size=2, slices_in_flight=1),
            auto_pause=AutoPause(error_rate=0.5, window=4),
        )
        await stubs.wait_for(lambda: S.PAUSED in stubs.statuses())
        # Paused for an hour: no slice starts after the two whose rows were all refused.
        await time_skipping.sleep(3600)
        assert slices(stubs) == [(0, 2), (2, 4)]
        assert (await handle.query(BatchWorkflow.progress)).paused
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    assert slices(stubs) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    [paused] = [u for u in stubs.inputs("record_status") if u.status == S.PAUSED]
    assert (paused.code, paused.error_codes) == ("carrier_error_rate", {"21612": 4})
    assert result.status == S.COMPLETED


def throttled(reason: str, seen_at: datetime) -> AutoPaused:
    """An account-wide throttling's pause, met at `seen_at`, as another batch passes it on."""
    return AutoPaused(
        code="carrier_throttled",
        reason=reason,
        resume_after_seconds=3600,
        seen_at=seen_at.timestamp(),
    )


async def sending_spread(
    env: WorkflowEnvironment, queue: str, stubs: StubActivities
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """A batch of the stubs' rows spread over ten minutes (its run waits between slices of
    two), once its first slice has gone."""
    handle = await start_batch(
        env,
        queue,
        dispatch=DispatchSettings(chunk_size=10, slice_size=2),
        timing=Timing(spread_seconds=600),
    )
    await stubs.wait_for(lambda: bool(stubs.calls.get("send_slice")))
    return handle


def paused_by(stubs: StubActivities) -> list[StatusUpdate]:
    """The batch's `paused` events."""
    return [u for u in stubs.inputs("record_status") if u.status == S.PAUSED]


async def auto_paused_before_and_after_a_resume(env: WorkflowEnvironment) -> Ran:
    """A batch spread over ten minutes (its run waits between slices), paused and resumed by
    an operator, then told to pause by a throttling met before the resume, then by one met
    after it; resumed again."""
    stubs = StubActivities(recipients=4)
    async with stub_worker(env, stubs) as queue:
        handle = await sending_spread(env, queue, stubs)
        met = await env.get_current_time()
        await env.sleep(1)
        await handle.signal(BatchWorkflow.pause)
        await handle.signal(BatchWorkflow.resume)
        await eventually(lambda: handle.query(BatchWorkflow.progress), lambda p: not p.paused)
        await handle.signal(AUTO_PAUSE_SIGNAL, throttled("before the resume", met))
        now = await env.get_current_time()
        await handle.signal(AUTO_PAUSE_SIGNAL, throttled("after the resume", now))
        await stubs.wait_for(lambda: len(paused_by(stubs)) == 2)
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    return stubs, handle, result


async def test_an_auto_pause_met_before_the_last_resume_is_ignored(
    time_skipping: WorkflowEnvironment,
) -> None:
    """Another batch of the account met a throttling and signalled this one to pause; an
    operator resumed this one before the signal came: it goes on sending. A pause met after
    the resume pauses it."""
    stubs, _, result = await auto_paused_before_and_after_a_resume(time_skipping)
    assert [u.reason for u in paused_by(stubs)] == [None, "after the resume"]
    assert result.status == S.COMPLETED


async def test_an_auto_pause_queued_behind_a_resume_is_taken_as_met_before_it(
    time_skipping: WorkflowEnvironment,
) -> None:
    """An operator's pause, its resume and a pause met before them come at once: the pause
    still signals its chunk as the other two come, and they wait their turn, the resume
    first; the pause met before it is ignored once its turn comes."""
    stubs = StubActivities(recipients=4)
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await sending_spread(time_skipping, queue, stubs)
        met = await time_skipping.get_current_time()
        await time_skipping.sleep(1)
        await handle.signal(BatchWorkflow.pause)
        await handle.signal(BatchWorkflow.resume)
        await handle.signal(AUTO_PAUSE_SIGNAL, throttled("before the resume", met))
        result = await result_of(handle)
    assert [u.reason for u in paused_by(stubs)] == [None]
    assert result.status == S.COMPLETED


CREDENTIALS_REFUSED = AutoPaused(
    code="carrier_authentication_failed", reason="the carrier refused the credentials"
)


async def throttled_then_refused(env: WorkflowEnvironment) -> tuple[Ran, BatchProgress]:
    """A batch spread over ten minutes paused by a throttling for an hour's back-off, then
    told of wrong credentials (another batch met them); two hours on, resumed by an operator.
    Its progress after the two hours, too."""
    stubs = StubActivities(recipients=4)
    async with stub_worker(env, stubs) as queue:
        handle = await sending_spread(env, queue, stubs)
        now = await env.get_current_time()
        await handle.signal(AUTO_PAUSE_SIGNAL, throttled("throttled", now))
        await stubs.wait_for(lambda: len(paused_by(stubs)) == 1)
        await handle.signal(AUTO_PAUSE_SIGNAL, CREDENTIALS_REFUSED)
        await stubs.wait_for(lambda: len(paused_by(stubs)) == 2)
        await env.sleep(7200)
        after_the_back_off = await handle.query(BatchWorkflow.progress)
        await handle.signal(BatchWorkflow.resume)
        result = await result_of(handle)
    return (stubs, handle, result), after_the_back_off


async def test_a_pause_that_waits_for_an_operator_holds_a_batch_backing_off_a_throttling(
    time_skipping: WorkflowEnvironment,
) -> None:
    """The batch records the second pause and stays paused past the hour, until an operator
    resumes it."""
    (stubs, _, result), after_the_back_off = await throttled_then_refused(time_skipping)
    assert [u.code for u in paused_by(stubs)] == ["carrier_throttled", CREDENTIALS_REFUSED.code]
    assert after_the_back_off.paused
    assert result.status == S.COMPLETED


async def throttled_twice(env: WorkflowEnvironment) -> tuple[Ran, BatchProgress]:
    """A batch spread over ten minutes paused by a throttling (a minute's back-off), resumed by
    it, then paused again by a throttling that deferred every request since that resume; its
    progress 90 s into the second back-off too."""
    stubs = StubActivities(recipients=4)

    async def throttled_since(deferred_since: float) -> None:
        now = (await env.get_current_time()).timestamp()
        await handle.signal(
            AUTO_PAUSE_SIGNAL,
            AutoPaused(
                code="carrier_throttled",
                reason=throttled_reason("20429", 60),
                error_codes={"20429": 1},
                resume_after_seconds=60,
                seen_at=now,
                deferred_since=deferred_since,
            ),
        )

    async with stub_worker(env, stubs) as queue:
        handle = await sending_spread(env, queue, stubs)
        await throttled_since((await env.get_current_time()).timestamp() - 120)
        await stubs.wait_for(lambda: len(paused_by(stubs)) == 1)
        await env.sleep(61)
        await eventually(lambda: handle.query(BatchWorkflow.progress), lambda p: not p.paused)
        await throttled_since((await env.get_current_time()).timestamp())
        await stubs.wait_for(lambda: len(paused_by(stubs)) == 2)
        await env.sleep(90)
        during = await handle.query(BatchWorkflow.progress)
        result = await result_of(handle)
    return (stubs, handle, result), during


async def test_a_throttling_that_never_lifted_doubles_the_next_back_off(
    time_skipping: WorkflowEnvironment,
) -> None:
    (stubs, _, result), during = await throttled_twice(time_skipping)
    assert [u.reason for u in paused_by(stubs)] == [
        throttled_reason("20429", 60),
        throttled_reason("20429", 120),
    ]
    assert during.paused
    assert result.status == S.COMPLETED
