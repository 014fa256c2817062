"""The fast tier for ConversationWorkflow's silence timers: the warning and the timeout on
the time-skipping test server, with stub activities."""

import asyncio
import dataclasses
import uuid

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from tests.support.sending import eventually
from tests.support.workflows import StubActivities, result_of, stub_worker
from workflows.contracts import (
    CONVERSATION_WORKFLOW,
    ConversationEvent,
    ConversationInput,
    ConversationResult,
    ConversationSignal,
    EndConversationInput,
    SendMessageInput,
    SilenceTimers,
    conversation_workflow_id,
)
from workflows.conversation import AGENT, ConversationWorkflow
from workflows.retries import MESSAGE_ATTEMPTS
from workflows.statuses import ConversationStatus

pytestmark = pytest.mark.fast

AGENT_NUMBER = "+15005550006"
USER_NUMBER = "+12015550123"
TIMERS = SilenceTimers(
    warning_time=60, warning_message="Still there?", time_out=300, timeout_message="Bye."
)


def agent_message(
    conversation_id: str, message_id: str = "", timers: SilenceTimers = TIMERS
) -> ConversationSignal:
    """An agent's message of the conversation, setting `timers`."""
    return ConversationSignal(
        conversation_id=conversation_id,
        conversation_seq=1,
        message_id=message_id or str(uuid.uuid4()),
        sender=AGENT,
        timers=timers,
    )


async def start_conversation(
    env: WorkflowEnvironment,
    task_queue: str,
    conversation_id: str,
    first_message_id: str = "",
    *,
    queued: list[ConversationSignal] | None = None,
    messages_per_run: int = ConversationInput.messages_per_run,
) -> WorkflowHandle[ConversationWorkflow, ConversationResult]:
    """A conversation whose first message is the agent's, setting TIMERS (or whose messages
    are `queued` at its start)."""
    account_id = str(uuid.uuid4())
    return await env.client.start_workflow(
        CONVERSATION_WORKFLOW,
        ConversationInput(
            conversation_id=conversation_id,
            conversation_seq=1,
            account_id=account_id,
            agent_number=AGENT_NUMBER,
            user_number=USER_NUMBER,
            pending=queued or [agent_message(conversation_id, first_message_id)],
            messages_per_run=messages_per_run,
        ),
        id=conversation_workflow_id(account_id, AGENT_NUMBER, USER_NUMBER),
        task_queue=task_queue,
        result_type=ConversationResult,
    )


async def agent_writes(
    handle: WorkflowHandle[ConversationWorkflow, ConversationResult], conversation_id: str
) -> None:
    """The agent's next message of the conversation, setting TIMERS."""
    await handle.signal(ConversationWorkflow.message, agent_message(conversation_id))


async def quiet_then_agent_writes(
    env: WorkflowEnvironment,
    stubs: StubActivities,
    handle: WorkflowHandle[ConversationWorkflow, ConversationResult],
    conversation_id: str,
) -> tuple[list[str], float]:
    """3,000 s (ten times TIMERS' timeout) with nothing more from the agent, then its next
    message: the kinds of message sent meanwhile, and when the agent wrote."""
    await env.sleep(3000)
    quiet = [call.input.kind for call in stubs.calls["send_conversation_message"]]
    answered = (await env.get_current_time()).timestamp()
    await agent_writes(handle, conversation_id)
    return quiet, answered


async def user_replies(
    handle: WorkflowHandle[ConversationWorkflow, ConversationResult],
    conversation_id: str,
    received_at: float | None = None,
) -> None:
    await handle.signal(
        ConversationWorkflow.message,
        ConversationSignal(
            conversation_id=conversation_id,
            conversation_seq=1,
            message_id=str(uuid.uuid4()),
            sender=USER_NUMBER,
            received_at=received_at,
        ),
    )


async def test_silence_brings_the_warning_then_the_timeout(
    time_skipping: WorkflowEnvironment,
) -> None:
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id)
        result = await result_of(handle)
    sends: list[SendMessageInput] = stubs.inputs("send_conversation_message")
    assert [(s.kind, s.body) for s in sends] == [
        ("message", None),
        ("warning", "Still there?"),
        ("timeout", "Bye."),
    ]
    first, warning, timeout = (call.at for call in stubs.calls["send_conversation_message"])
    assert first + 60 <= warning < first + 62
    assert first + 300 <= timeout < first + 302
    ended: list[EndConversationInput] = stubs.inputs("end_conversation")
    assert [e.state for e in ended] == [ConversationStatus.TIMEOUT]
    events: list[ConversationEvent] = stubs.inputs("post_conversation_event")
    assert events[-1].state == ConversationStatus.TIMEOUT
    assert result == ConversationResult(
        conversation_id=conversation_id, state=ConversationStatus.TIMEOUT
    )


async def test_a_user_reply_stops_the_silence_until_the_next_agent_message(
    time_skipping: WorkflowEnvironment,
) -> None:
    """Bland's timers run when the user goes silent after an agent message: a user who has
    answered gets no warning and no timeout, however long the agent takes; the agent's next
    message starts the clock again."""
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        await time_skipping.sleep(40)
        await user_replies(handle, conversation_id)
        # Ten times the timeout: no warning, no timeout, as the user spoke last.
        quiet, answered = await quiet_then_agent_writes(
            time_skipping, stubs, handle, conversation_id
        )
        result = await result_of(handle)
    assert quiet == ["message"]
    calls = stubs.calls["send_conversation_message"]
    assert [call.input.kind for call in calls] == ["message", "message", "warning", "timeout"]
    # Both timers count from the agent's answer.
    assert answered + 60 <= calls[2].at < answered + 62
    assert answered + 300 <= calls[3].at < answered + 302
    assert result.state == ConversationStatus.TIMEOUT


async def test_a_reply_recorded_before_the_agents_latest_message_does_not_stop_its_clock(
    time_skipping: WorkflowEnvironment,
) -> None:
    """A reply to the agent's first message, handed over only after the agent's second was
    sent (it came while that one was on its way, or its signal was late): the user has not
    answered the second, whose warning and timeout still come."""
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        await time_skipping.sleep(20)
        replied = (await time_skipping.get_current_time()).timestamp()
        await time_skipping.sleep(20)
        await agent_writes(handle, conversation_id)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 2)
        second = (await time_skipping.get_current_time()).timestamp()
        await user_replies(handle, conversation_id, received_at=replied)
        result = await result_of(handle)
    calls = stubs.calls["send_conversation_message"]
    assert [call.input.kind for call in calls] == ["message", "message", "warning", "timeout"]
    assert second + 58 <= calls[2].at < second + 62
    assert result.state == ConversationStatus.TIMEOUT


async def test_a_reply_that_came_after_the_carrier_took_the_message_stops_its_clock(
    time_skipping: WorkflowEnvironment,
) -> None:
    """The carrier took the agent's message and the user answered before the run learned it
    was sent (its send reconciled for seconds, or a worker was behind): the reply answers
    that message, so no warning and no timeout. The clock started when the run learned it,
    after the reply, which was taken for one to an earlier message."""
    first = str(uuid.uuid4())
    stubs = StubActivities(held_messages={first})
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id, first)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        taken = stubs.calls["send_conversation_message"][0].at
        await user_replies(handle, conversation_id, received_at=taken + 0.001)
        await asyncio.sleep(0.2)  # the run learns of the send later than the reply came
        stubs.release.set()
        quiet, _ = await quiet_then_agent_writes(time_skipping, stubs, handle, conversation_id)
        result = await result_of(handle)
    assert quiet == ["message"]
    assert result.state == ConversationStatus.TIMEOUT


async def test_an_agent_message_the_carrier_refused_starts_no_silence(
    time_skipping: WorkflowEnvironment,
) -> None:
    refused = str(uuid.uuid4())
    stubs = StubActivities(refused_messages={refused})
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id, refused)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        # Ten times the timeout: no warning, no timeout, as the user was never written to.
        quiet, answered = await quiet_then_agent_writes(
            time_skipping, stubs, handle, conversation_id
        )
        result = await result_of(handle)
    assert quiet == ["message"]
    calls = stubs.calls["send_conversation_message"]
    assert [call.input.kind for call in calls] == ["message", "message", "warning", "timeout"]
    assert answered + 60 <= calls[2].at < answered + 62
    assert result.state == ConversationStatus.TIMEOUT


async def run_with_a_failing_first_message(
    env: WorkflowEnvironment,
) -> tuple[StubActivities, WorkflowHandle[ConversationWorkflow, ConversationResult]]:
    """A conversation whose first message's send fails every attempt other than by the
    carrier's answer (as when its workers die), then the agent's next message (handled once
    that send has ended; its silence timers then end the run), run to its end."""
    stubs = StubActivities(failing_messages={str(uuid.uuid4())})
    conversation_id = str(uuid.uuid4())
    [failing] = stubs.failing_messages
    async with stub_worker(env, stubs) as queue:
        handle = await start_conversation(env, queue, conversation_id, failing)
        await agent_writes(handle, conversation_id)
        await result_of(handle)
    return stubs, handle


async def test_a_message_whose_every_attempt_failed_is_settled_not_left_as_it_was(
    time_skipping: WorkflowEnvironment,
) -> None:
    # What the last attempt left (a claim lost, or the message still queued) is settled once,
    # after the last attempt.
    stubs, handle = await run_with_a_failing_first_message(time_skipping)
    result = await result_of(handle)
    [failing] = stubs.failing_messages
    calls = stubs.calls["send_conversation_message"]
    attempts = [call for call in calls if call.input.message_id == failing]
    [settled] = stubs.calls["settle_unsent_message"]
    assert len(attempts) == MESSAGE_ATTEMPTS
    assert settled.input.message_id == failing
    assert settled.at >= max(call.at for call in attempts)
    assert result.state == ConversationStatus.TIMEOUT


async def test_a_backlog_that_never_empties_continues_as_new_with_it(temporal: Client) -> None:
    """Twelve messages queued at once, five a run: each run continues as new with the rest
    still queued (its history bounded), and every message is sent once, in order. On the dev
    server, with timers of seconds: a run continuing as new cancels the post of its event in
    flight, and the test server keeps time from skipping for good once that post ends."""
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    timers = SilenceTimers(
        warning_time=1, warning_message="Still there?", time_out=2, timeout_message="Bye."
    )
    queued = [agent_message(conversation_id, timers=timers) for _ in range(12)]
    env = WorkflowEnvironment.from_client(temporal)
    async with stub_worker(env, stubs) as queue:
        handle = await start_conversation(
            env, queue, conversation_id, queued=queued, messages_per_run=5
        )
        result = await result_of(handle)
        first_run = await temporal.get_workflow_handle(
            handle.id, run_id=handle.first_execution_run_id
        ).fetch_history()

    sends: list[SendMessageInput] = stubs.inputs("send_conversation_message")
    assert [s.message_id for s in sends if s.kind == "message"] == [q.message_id for q in queued]
    assert [s.kind for s in sends][-2:] == ["warning", "timeout"]
    sent_by_first = [
        e
        for e in first_run.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == "send_conversation_message"
    ]
    assert len(sent_by_first) == 5
    assert first_run.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
    assert result.state == ConversationStatus.TIMEOUT


async def test_a_conversation_closed_without_the_run_hearing_of_it_gets_no_warning(
    time_skipping: WorkflowEnvironment,
) -> None:
    """A send opened the pair's next conversation (closing this one in the database) but its
    signal never came (503): the silence clock of the closed one sends nothing, and its end
    is told as closed, not as a timeout."""
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        stubs.closed_conversations.add(conversation_id)
        result = await result_of(handle)

    assert [s.kind for s in stubs.inputs("send_conversation_message")] == ["message"]
    events: list[ConversationEvent] = stubs.inputs("post_conversation_event")
    assert events[-1].state == ConversationStatus.CLOSED
    assert result == ConversationResult(
        conversation_id=conversation_id, state=ConversationStatus.CLOSED
    )


async def test_a_run_reset_to_before_its_warning_sends_it_under_the_same_id(
    temporal: Client,
) -> None:
    """Reset (the web UI's Reset) to the workflow task that started the silence clock, the
    run sends the warning again: under a new random id it was a second message, which the
    user got; under the same one the send claims it once (a message not `queued` is not
    sent again). On the dev server: the test server resets no workflow."""
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    first = ConversationSignal(
        conversation_id=conversation_id,
        conversation_seq=1,
        message_id=str(uuid.uuid4()),
        sender=AGENT,
        timers=SilenceTimers(warning_time=1, warning_message="Still there?", time_out=600),
    )

    def warnings() -> list[SendMessageInput]:
        sent: list[SendMessageInput] = stubs.inputs("send_conversation_message")
        return [m for m in sent if m.kind == "warning"]

    env = WorkflowEnvironment.from_client(temporal)
    async with stub_worker(env, stubs) as queue:
        handle = await start_conversation(env, queue, conversation_id, queued=[first])
        await stubs.wait_for(lambda: len(warnings()) == 1)
        events = list((await handle.fetch_history()).events)
        # The workflow task that took the first message's outcome and started the clock.
        send = next(
            e.event_id
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name
            == "send_conversation_message"
        )
        sent = next(
            i
            for i, e in enumerate(events)
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            and e.activity_task_completed_event_attributes.scheduled_event_id == send
        )
        clock = next(
            e for e in events[sent:] if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        await temporal.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=temporal.namespace,
                workflow_execution=WorkflowExecution(
                    workflow_id=handle.id, run_id=handle.result_run_id or ""
                ),
                reason="operator",
                workflow_task_finish_event_id=clock.event_id,
                request_id=str(uuid.uuid4()),
            )
        )
        await stubs.wait_for(lambda: len(warnings()) == 2)
        await temporal.get_workflow_handle(handle.id).terminate("done")

    assert len({m.message_id for m in warnings()}) == 1


async def test_a_temporal_cancellation_closes_a_waiting_conversation(
    time_skipping: WorkflowEnvironment,
) -> None:
    """The web UI's Cancel (`temporal workflow cancel`) of a conversation waiting for the
    user's reply: the run ended Cancelled, the conversation left `active` for good, its
    timers gone with the run. It is closed, with its event, and no warning goes."""
    stubs = StubActivities()
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id)
        await stubs.wait_for(lambda: bool(stubs.calls.get("post_conversation_event")))
        await handle.cancel()
        result = await result_of(handle)
    ended: list[EndConversationInput] = stubs.inputs("end_conversation")
    sent: list[SendMessageInput] = stubs.inputs("send_conversation_message")
    events: list[ConversationEvent] = stubs.inputs("post_conversation_event")
    assert result.state == ConversationStatus.CLOSED
    assert [e.state for e in ended] == [ConversationStatus.CLOSED]
    assert [m.kind for m in sent] == ["message"]
    assert events[-1].state == ConversationStatus.CLOSED


async def test_a_temporal_cancellation_during_a_send_lets_it_end_then_closes(
    time_skipping: WorkflowEnvironment,
) -> None:
    """Cancelled while its first message's send is retried: the cancellation was taken for
    the send's failure, the message was never settled (left `queued` or `sending` for good)
    and the run went on with no silence clock. The send runs to its end, is settled, and the
    conversation is closed."""
    stubs = StubActivities(failing_messages={str(uuid.uuid4())})
    [failing] = stubs.failing_messages
    conversation_id = str(uuid.uuid4())
    async with stub_worker(time_skipping, stubs) as queue:
        handle = await start_conversation(time_skipping, queue, conversation_id, failing)
        await stubs.wait_for(lambda: bool(stubs.calls.get("send_conversation_message")))
        await handle.cancel()
        result = await result_of(handle)
    attempts = stubs.inputs("send_conversation_message")
    settled: list[SendMessageInput] = stubs.inputs("settle_unsent_message")
    assert len(attempts) == MESSAGE_ATTEMPTS
    assert [m.message_id for m in settled] == [failing]
    assert result.state == ConversationStatus.CLOSED


async def late_reply_while_handing_over(
    env: WorkflowEnvironment,
) -> tuple[StubActivities, WorkflowHandle[ConversationWorkflow, ConversationResult], str, str]:
    """Conversation 1's agent message, then a send opening conversation 2; while the run
    closes conversation 1 (its end held), the user's reply to it comes, its signal late.
    Timers of seconds: on the dev server (a hand-over cancels its event post in flight)."""
    stubs = StubActivities(ends_held=True)
    closing, following = str(uuid.uuid4()), str(uuid.uuid4())
    timers = SilenceTimers(
        warning_time=1, warning_message="Still there?", time_out=2, timeout_message="Bye."
    )
    async with stub_worker(env, stubs) as queue:
        handle = await start_conversation(
            env, queue, closing, queued=[agent_message(closing, timers=timers)]
        )
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        opening = dataclasses.replace(agent_message(following, timers=timers), conversation_seq=2)
        await handle.signal(ConversationWorkflow.message, opening)
        await stubs.wait_for(lambda: bool(stubs.inputs("end_conversation")))
        stubs.closed_conversations.add(closing)
        await user_replies(handle, closing)
        stubs.ends_released.set()
        await result_of(handle)
    return stubs, handle, closing, following


async def test_a_late_reply_to_the_closing_conversation_does_not_reopen_it(
    temporal: Client,
) -> None:
    """The run goes on as conversation 2, and the reply is told as conversation 1's: that
    conversation began and ended once."""
    env = WorkflowEnvironment.from_client(temporal)
    stubs, handle, closing, following = await late_reply_while_handing_over(env)
    result = await handle.result()
    events: list[ConversationEvent] = stubs.inputs("post_conversation_event")
    states = [(e.conversation_id, e.state) for e in events if e.state is not None]
    assert states[:2] == [
        (closing, ConversationStatus.ACTIVE),
        (closing, ConversationStatus.CLOSED),
    ]
    assert [c for c, _ in states[2:]] == [following, following]
    assert sum(e.conversation_id == closing and e.message_id is not None for e in events) == 2
    assert (result.conversation_id, result.state) == (following, ConversationStatus.TIMEOUT)


async def reply_signalled_after_its_due(
    env: WorkflowEnvironment,
) -> tuple[StubActivities, WorkflowHandle[ConversationWorkflow, ConversationResult]]:
    """An agent message; its warning's timer fires, and while the run checks the state (held)
    the user's reply, recorded a second before, is signalled; then a Temporal cancellation."""
    stubs = StubActivities(state_checks_held={2})
    conversation_id = str(uuid.uuid4())
    async with stub_worker(env, stubs) as queue:
        handle = await start_conversation(env, queue, conversation_id)
        await stubs.wait_for(lambda: len(stubs.inputs("send_conversation_message")) == 1)
        # Past the warning (60 s), not the timeout (300 s); held at the state check.
        skipping = asyncio.create_task(env.sleep(120))
        await stubs.wait_for(lambda: len(stubs.inputs("conversation_state")) == 2)
        due = (await env.get_current_time()).timestamp()
        await user_replies(handle, conversation_id, received_at=due - 1)
        await eventually(handle.fetch_history, lambda history: signalled(history, "message"))
        stubs.release.set()
        await skipping
        await handle.cancel()
        await result_of(handle)
    return stubs, handle


async def test_a_reply_recorded_before_the_warning_was_due_stops_it_though_its_signal_is_late(
    time_skipping: WorkflowEnvironment,
) -> None:
    """The warning's timer fired between the user's reply being recorded and its signal: the
    signal came while the run checked the conversation's state. No warning goes."""
    stubs, handle = await reply_signalled_after_its_due(time_skipping)
    result = await handle.result()
    sent: list[SendMessageInput] = stubs.inputs("send_conversation_message")
    assert [m.kind for m in sent] == ["message"]
    assert result.state == ConversationStatus.CLOSED


def signalled(history: WorkflowHistory, name: str) -> bool:
    """Whether the run has been sent a signal `name`."""
    return any(
        e.workflow_execution_signaled_event_attributes.signal_name == name for e in history.events
    )
