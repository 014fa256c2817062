"""BatchWorkflow: validates a recipient file, then sends it chunk by chunk.

Recipients live in PostgreSQL; this workflow only moves counts and seq ranges, keeps a
bounded window of ChunkWorkflows, and continues as new before its history grows large.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.chunk import ChunkWorkflow
    from workflows.contracts import (
        ACCOUNT_ID,
        AGENT_NUMBER,
        BATCH_ID,
        BATCH_STATUS,
        RECIPIENT_COUNT,
        BatchCounts,
        BatchInput,
        BatchResult,
        ChunkInput,
        CountInput,
        DeliverEventsInput,
        DispatchState,
        SendCounts,
        StatusUpdate,
        ValidateInput,
        ValidationResult,
    )

DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
VALIDATE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
PROGRESS_EVERY = timedelta(seconds=1)


@workflow.defn
class BatchWorkflow:
    def __init__(self) -> None:
        self._events_recorded = 0
        self._events_delivered = 0
        self._closing = False
        self._chunks_in_flight = 0
        self._last_progress = 0.0
        self._status = ""
        # Chunks finish concurrently; events must still get consecutive seqs, in order.
        self._report_lock = asyncio.Lock()

    @workflow.run
    async def run(self, input: BatchInput) -> BatchResult:
        self._input = input
        state = input.state
        if state is None:
            workflow.upsert_search_attributes(
                [
                    BATCH_ID.value_set(input.batch_id),
                    ACCOUNT_ID.value_set(input.account_id),
                    AGENT_NUMBER.value_set(input.agent_number),
                ]
            )
        else:
            self._events_recorded = self._events_delivered = state.event_seq
            self._status = state.status
        pump = asyncio.create_task(self._deliver_events())
        try:
            if state is None:
                state = await self._validate()
                if isinstance(state, BatchResult):
                    return state
            result = await self._dispatch(state)
            if result is None:
                await self._drain(pump)
                workflow.continue_as_new(
                    BatchInput(
                        batch_id=input.batch_id,
                        account_id=input.account_id,
                        agent_number=input.agent_number,
                        dispatch=input.dispatch,
                        state=state,
                        limits=input.limits,
                    )
                )
            return result
        finally:
            await self._drain(pump)

    async def _validate(self) -> DispatchState | BatchResult:
        await self._report("validating")
        validation: ValidationResult = await workflow.execute_activity(
            "validate_recipients",
            ValidateInput(batch_id=self._input.batch_id, limits=self._input.limits),
            result_type=ValidationResult,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=VALIDATE_RETRY,
        )
        workflow.upsert_search_attributes([RECIPIENT_COUNT.value_set(validation.recipients)])
        if validation.code is not None:
            return await self._finish_failed(validation.code, validation.reason, validation)
        sendable = validation.recipients - validation.skipped
        if sendable == 0:
            return await self._finish_failed(
                "no_valid_recipients", "no row of the file can be sent", validation
            )
        await self._report(
            "dispatching",
            message=f"Requested: {validation.rows_total}. Validated: {sendable}.",
        )
        chunk_size = self._input.dispatch.chunk_size
        chunks = -(-validation.recipients // chunk_size)
        status = "in_progress_chunked" if chunks > 1 else "in_progress"
        await self._report(status)
        return DispatchState(
            rows_total=validation.rows_total,
            recipients=validation.recipients,
            next_chunk=0,
            dispatched=0,
            event_seq=self._events_recorded,
            dispatch_started=workflow.now().timestamp(),
            status=status,
        )

    async def _dispatch(self, state: DispatchState) -> BatchResult | None:
        """Run the remaining chunks; None when this run should continue as new first."""
        dispatch = self._input.dispatch
        chunks = -(-state.recipients // dispatch.chunk_size)
        started_here = 0
        tasks = []
        while state.next_chunk < chunks:
            if (
                started_here >= dispatch.chunks_per_run
                or workflow.info().is_continue_as_new_suggested()
            ):
                await asyncio.gather(*tasks)
                state.event_seq = self._events_recorded
                return None
            await workflow.wait_condition(lambda: self._chunks_in_flight < dispatch.chunk_window)
            index = state.next_chunk
            state.next_chunk += 1
            started_here += 1
            self._chunks_in_flight += 1
            tasks.append(asyncio.create_task(self._run_chunk(state, index)))
        await asyncio.gather(*tasks)
        return await self._finish(state)

    async def _run_chunk(self, state: DispatchState, index: int) -> None:
        dispatch = self._input.dispatch
        start = index * dispatch.chunk_size
        end = min(start + dispatch.chunk_size, state.recipients)
        try:
            await workflow.execute_child_workflow(
                ChunkWorkflow.run,
                ChunkInput(
                    batch_id=self._input.batch_id,
                    agent_number=self._input.agent_number,
                    start=start,
                    end=end,
                    slice_size=dispatch.slice_size,
                    slices_in_flight=dispatch.slices_in_flight,
                ),
                id=f"{workflow.info().workflow_id}/chunk-{index}",
                result_type=SendCounts,
            )
        finally:
            self._chunks_in_flight -= 1
        state.dispatched += end - start
        now = workflow.now().timestamp()
        if now - self._last_progress >= PROGRESS_EVERY.total_seconds():
            self._last_progress = now
            elapsed = max(now - state.dispatch_started, 0.001)
            await self._report(
                state.status,
                message=(
                    f"Requested: {state.rows_total}. Validated: {state.recipients}. "
                    f"Dispatched: {state.dispatched}. MPS: {state.dispatched / elapsed:.1f}."
                ),
            )

    async def _finish(self, state: DispatchState) -> BatchResult:
        counts: BatchCounts = await workflow.execute_activity(
            "count_outcomes",
            CountInput(batch_id=self._input.batch_id),
            result_type=BatchCounts,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=DB_RETRY,
        )
        if counts.successful == 0:
            return await self._report_final(
                "failed", counts, code="all_sends_failed", reason="no message was accepted"
            )
        partial = counts.failed + counts.skipped + counts.uncertain + counts.cancelled
        return await self._report_final("completed_partial" if partial else "completed", counts)

    async def _finish_failed(
        self, code: str, reason: str | None, validation: ValidationResult
    ) -> BatchResult:
        counts = BatchCounts(
            total=validation.rows_total,
            skipped=validation.rows_total,
        )
        return await self._report_final("failed", counts, code=code, reason=reason)

    async def _report_final(
        self,
        status: str,
        counts: BatchCounts,
        *,
        code: str | None = None,
        reason: str | None = None,
    ) -> BatchResult:
        await self._report(status, code=code, reason=reason, counts=counts)
        return BatchResult(status=status, counts=counts, code=code, reason=reason)

    async def _report(
        self,
        status: str,
        *,
        message: str | None = None,
        code: str | None = None,
        reason: str | None = None,
        counts: BatchCounts | None = None,
    ) -> None:
        """Record a lifecycle event (batch row, search attribute, log) and queue its webhook."""
        async with self._report_lock:
            await self._record(status, message, code, reason, counts)

    async def _record(
        self,
        status: str,
        message: str | None,
        code: str | None,
        reason: str | None,
        counts: BatchCounts | None,
    ) -> None:
        seq = self._events_recorded + 1
        if status != self._status:
            self._status = status
            workflow.upsert_search_attributes([BATCH_STATUS.value_set(status)])
        await workflow.execute_activity(
            "record_status",
            StatusUpdate(
                batch_id=self._input.batch_id,
                workflow_id=workflow.info().workflow_id,
                event_seq=seq,
                status=status,
                message=message,
                code=code,
                reason=reason,
                counts=counts,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )
        self._events_recorded = seq

    async def _deliver_events(self) -> None:
        """Post recorded events to the status webhook in order, without holding sends back."""
        while True:
            await workflow.wait_condition(
                lambda: self._events_delivered < self._events_recorded or self._closing
            )
            if self._events_delivered >= self._events_recorded:
                return
            target = self._events_recorded
            await workflow.execute_activity(
                "deliver_status_events",
                DeliverEventsInput(batch_id=self._input.batch_id),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )
            self._events_delivered = target

    async def _drain(self, pump: asyncio.Task[None]) -> None:
        self._closing = True
        await pump
