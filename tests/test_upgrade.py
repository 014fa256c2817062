"""An upgrade in the middle of a batch: the batch starts on a worker running the recorded
release's workflow code (tests/histories/previous/), that worker stops while chunks are sending,
and a worker running the current code replays what the first one did and finishes the batch."""

import asyncio
import secrets

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from settings import Settings
from tests.histories.previous import WORKFLOWS as PREVIOUS_WORKFLOWS
from tests.histories.scenarios import run_chain
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import assert_each_row_once, ledger_rows
from tests.support.sending import eventually
from tests.support.stack import WAIT_SECONDS, Account, Configure, WebhookReceiver, api_client
from worker import herald_worker
from workflows.contracts import batch_workflow_id

RECIPIENTS = 60
# Six chunks, two a run: the current code takes over runs, chunks and continue-as-new alike.
UPGRADE = {
    "chunk_size": 10,
    "slice_size": 5,
    "chunk_window": 2,
    "slices_in_flight": 1,
    "chunks_per_run": 2,
    # The stopped worker's sends are retried, and its workflows taken over, within seconds.
    "send_heartbeat_timeout_seconds": 3.0,
    "sticky_timeout_seconds": 1.0,
}
# Slow enough that the batch is far from done when the first worker stops.
SLOW_CARRIER_MS = 300
SENT_BEFORE_UPGRADE = 10


async def test_a_batch_started_on_the_previous_release_finishes_on_the_current_code(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    own = settings.model_copy(
        update={"task_queue": f"herald-upgrade-{secrets.token_hex(4)}", **UPGRADE}
    )
    async with api_client(own) as api:
        async with herald_worker(temporal, own, PREVIOUS_WORKFLOWS) as previous, previous:
            file_id, marker = await start_marked_batch(
                api, account, webhooks, unique_numbers(RECIPIENTS)
            )
            sent_before = await eventually(
                lambda: emulator_messages(emulator_url, body_contains=marker),
                lambda found: len(found) >= SENT_BEFORE_UPGRADE,
            )
        async with herald_worker(temporal, own) as current, current:
            events = await webhooks.wait_for(marker, *FINAL)
            # The run closes after its final event is posted, on this worker.
            async with asyncio.timeout(WAIT_SECONDS):
                task_failures = await failed_workflow_tasks(temporal, batch_workflow_id(file_id))
        rows = await ledger_rows(api, account, file_id)
    received = await emulator_messages(emulator_url, body_contains=marker)

    statuses = assert_each_row_once(rows, received, RECIPIENTS)
    assert len(sent_before) < RECIPIENTS
    # Rows the stopped worker had on the wire may end `uncertain` (its slice retried on the
    # new worker finds them `sending`), as after a crash; every other row is sent.
    assert set(statuses) <= {"sent", "uncertain"}
    assert statuses["uncertain"] <= UPGRADE["slice_size"] * 2
    final = events[-1]
    assert final["status"] == ("completed_partial" if statuses["uncertain"] else "completed")
    assert (final["messages_successful"], final["messages_uncertain"]) == (
        statuses["sent"],
        statuses["uncertain"],
    )
    assert task_failures == []


async def failed_workflow_tasks(temporal: Client, workflow_id: str) -> list[str]:
    """The failures of workflow tasks in every run of the batch and of its chunks: a replay
    of the earlier code's history that the current code could not follow shows here."""
    chunks = [f"{workflow_id}/chunk-{index}" for index in range(RECIPIENTS // 10)]
    failures = []
    for history_of in [workflow_id, *chunks]:
        for history in await run_chain(temporal, history_of):
            failures += [
                event.workflow_task_failed_event_attributes.failure.message
                for event in history.events
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            ]
    return failures
