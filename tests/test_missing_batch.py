"""A workflow whose batch row is gone fails at once, instead of retrying its activities
forever."""

import asyncio
import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

from settings import Settings
from tests.support.stack import SENDER
from workflows.contracts import (
    BATCH_WORKFLOW,
    CHUNK_WORKFLOW,
    BatchInput,
    BatchResult,
    ChunkInput,
    SendCounts,
    batch_workflow_id,
)

# Without the non-retryable error, the first activity retries forever: this is far more
# than a first attempt needs.
FAILS_WITHIN_SECONDS = 20


def assert_batch_not_found(failure: WorkflowFailureError) -> None:
    """An activity's non-retryable BatchNotFound; a local activity's (the batch's database
    steps, patch batch-local-db-steps) reaches the workflow as the error itself."""
    cause: BaseException | None = failure.cause
    if isinstance(cause, ActivityError):
        assert cause.retry_state == RetryState.NON_RETRYABLE_FAILURE
        cause = cause.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("BatchNotFound", True)


async def test_a_batch_without_its_row_fails_at_once(
    temporal: Client, settings: Settings, worker: None
) -> None:
    batch_id = str(uuid.uuid4())
    with pytest.raises(WorkflowFailureError) as failure:
        async with asyncio.timeout(FAILS_WITHIN_SECONDS):
            await temporal.execute_workflow(
                BATCH_WORKFLOW,
                BatchInput(batch_id=batch_id, account_id=str(uuid.uuid4()), agent_number=SENDER),
                id=batch_workflow_id(batch_id),
                task_queue=settings.task_queue,
                result_type=BatchResult,
            )
    assert_batch_not_found(failure.value)


async def test_a_slice_of_a_batch_without_its_row_fails_at_once(
    temporal: Client, settings: Settings, worker: None
) -> None:
    batch_id = str(uuid.uuid4())
    # No `account_id`, as in chunks started by older workflow code: the send reads the row.
    with pytest.raises(WorkflowFailureError) as failure:
        async with asyncio.timeout(FAILS_WITHIN_SECONDS):
            await temporal.execute_workflow(
                CHUNK_WORKFLOW,
                ChunkInput(
                    batch_id=batch_id,
                    agent_number=SENDER,
                    start=0,
                    end=10,
                    slice_size=10,
                    slices_in_flight=1,
                ),
                id=f"{batch_workflow_id(batch_id)}/chunk-0",
                task_queue=settings.task_queue,
                result_type=SendCounts,
            )
    assert_batch_not_found(failure.value)
