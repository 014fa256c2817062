"""What a conversation's run hands the next of undelivered webhook events, on the real Temporal
dev server with stub activities: a receiver that never answers holds every event undelivered.
(The time-skipping server of the fast tier keeps time from skipping for good once a run ends
with one of its activities still running, as here.)"""

import uuid

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.support.workflows import StubActivities, stub_worker
from tests.test_conversation_workflow_fast import agent_message
from workflows.contracts import (
    CONVERSATION_WORKFLOW,
    ConversationInput,
    ConversationResult,
    conversation_workflow_id,
)


async def test_a_run_carries_on_the_newest_undelivered_events_up_to_its_limit(
    temporal: Client,
) -> None:
    # A receiver that never answers: each run carried every event on, and a pair's backlog
    # grew run after run towards Temporal's payload limit.
    stubs = StubActivities(events_held=True)
    conversation_id, account_id = str(uuid.uuid4()), str(uuid.uuid4())
    queued = [agent_message(conversation_id) for _ in range(8)]
    env = WorkflowEnvironment.from_client(temporal)
    async with stub_worker(env, stubs) as queue:
        handle = await temporal.start_workflow(
            CONVERSATION_WORKFLOW,
            ConversationInput(
                conversation_id=conversation_id,
                conversation_seq=1,
                account_id=account_id,
                agent_number="+15005550006",
                user_number="+12015550123",
                pending=queued,
                messages_per_run=5,
                max_carried_events=3,
            ),
            id=conversation_workflow_id(account_id, "+15005550006", "+12015550123"),
            task_queue=queue,
            result_type=ConversationResult,
        )
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) > 5)
        history = await temporal.get_workflow_handle(handle.id).fetch_history()
        stubs.events_released.set()
        await handle.terminate()

    started = history.events[0].workflow_execution_started_event_attributes
    [carried] = await temporal.data_converter.decode(started.input.payloads, [ConversationInput])
    assert isinstance(carried, ConversationInput)
    # The first run's six (its `active`, then five messages'): the newest three carried on.
    assert [e.message_id for e in carried.events] == [q.message_id for q in queued[2:5]]
    assert carried.max_carried_events == 3
