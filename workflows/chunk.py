"""ChunkWorkflow: sends one range of a batch's ledger, a few slices at a time."""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import ChunkInput, SendCounts, SendSliceInput

SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[
        # The batch row or its ledger is gone: retrying cannot bring it back.
        "BatchNotFound",
    ],
)


@workflow.defn
class ChunkWorkflow:
    def __init__(self) -> None:
        self._in_flight = 0
        self._counts = SendCounts()

    @workflow.run
    async def run(self, input: ChunkInput) -> SendCounts:
        tasks = []
        for start in range(input.start, input.end, input.slice_size):
            await workflow.wait_condition(lambda: self._in_flight < input.slices_in_flight)
            end = min(start + input.slice_size, input.end)
            self._in_flight += 1
            tasks.append(asyncio.create_task(self._send(input, start, end)))
        await asyncio.gather(*tasks)
        return self._counts

    async def _send(self, input: ChunkInput, start: int, end: int) -> None:
        try:
            counts: SendCounts = await workflow.execute_activity(
                "send_slice",
                SendSliceInput(
                    batch_id=input.batch_id, agent_number=input.agent_number, start=start, end=end
                ),
                result_type=SendCounts,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=SEND_RETRY,
            )
        finally:
            self._in_flight -= 1
        self._counts.sent += counts.sent
        self._counts.failed += counts.failed
