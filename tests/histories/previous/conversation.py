"""ConversationWorkflow: one pair's conversation; sends its messages, keeps its silence timers.

Each run is one conversation. A message of a newer conversation of the pair (`new_conversation`,
or a send after the last one ended) closes this one and continues as new into that one, so the
signal-with-start of a send always lands on the workflow id of its pair.
"""

import asyncio
from datetime import timedelta
from typing import NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from tests.histories.previous.contracts import (
        ConversationEvent,
        ConversationInput,
        ConversationRef,
        ConversationResult,
        ConversationSignal,
        ConversationState,
        EndConversationInput,
        SendMessageInput,
        SendMessageResult,
    )

AGENT = "AGENT"
# A message the carrier keeps deferring is failed after this many attempts (about a minute).
SEND_ATTEMPTS = 6
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=SEND_ATTEMPTS,
)
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
EVENT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)


@workflow.defn
class ConversationWorkflow:
    def __init__(self) -> None:
        self._queue: list[ConversationSignal] = []
        self._events: list[ConversationEvent] = []
        self._state = ConversationState()
        self._end_state: str | None = None

    @workflow.signal
    def message(self, signal: ConversationSignal) -> None:
        self._queue.append(signal)

    @workflow.run
    async def run(self, input: ConversationInput) -> ConversationResult:
        self._input = input
        # Messages handed over by the previous run came before any signalled to this one.
        self._queue[:0] = input.pending
        # Left running when the run ends: every run waits for its events to be posted first.
        self._pump = asyncio.create_task(self._deliver_events())
        if input.state is not None:
            self._state = input.state
        else:
            await self._begin()
        return await self._converse()

    async def _begin(self) -> None:
        """A run started by a late signal for a conversation that already ended only sends it."""
        state: str = await workflow.execute_activity(
            "conversation_state",
            ConversationRef(conversation_id=self._input.conversation_id),
            result_type=str,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )
        if state != "active":
            self._end_state = state
            return
        self._notify(ConversationEvent(conversation_id=self._input.conversation_id, state=state))

    async def _converse(self) -> ConversationResult:
        own = self._input.conversation_seq
        while True:
            if self._queue:
                current = [s for s in self._queue if s.conversation_seq <= own]
                if not current:
                    await self._hand_over()
                self._queue.remove(current[0])
                await self._handle(current[0])
                continue
            if self._end_state is not None or workflow.info().is_continue_as_new_suggested():
                # Signals may arrive while the last events are posted: they are handled first.
                await workflow.wait_condition(lambda: not self._events)
                if self._queue:
                    continue
                if self._end_state is not None:
                    return ConversationResult(
                        conversation_id=self._input.conversation_id, state=self._end_state
                    )
                workflow.continue_as_new(
                    ConversationInput(
                        conversation_id=self._input.conversation_id,
                        conversation_seq=self._input.conversation_seq,
                        account_id=self._input.account_id,
                        agent_number=self._input.agent_number,
                        user_number=self._input.user_number,
                        state=self._state,
                    )
                )
            await self._wait_for_silence()

    async def _handle(self, signal: ConversationSignal) -> None:
        live = signal.conversation_seq == self._input.conversation_seq and self._end_state is None
        if signal.sender == AGENT:
            if live and signal.timers is not None:
                self._state.timers = signal.timers
            await self._send(
                signal.conversation_id,
                SendMessageInput(message_id=signal.message_id, attempts=SEND_ATTEMPTS),
            )
            if live and signal.kind == "message":
                self._restart_clock()
            return
        if live:
            self._restart_clock()
        self._notify(
            ConversationEvent(conversation_id=signal.conversation_id, message_id=signal.message_id)
        )

    def _restart_clock(self) -> None:
        self._state.silent_since = workflow.now().timestamp()
        self._state.warned = False

    def _due(self) -> tuple[float, str, str | None] | None:
        """When user silence calls for Herald's next message: its time, kind and text."""
        timers, since = self._state.timers, self._state.silent_since
        if timers is None or since is None:
            return None
        if timers.warning_time is not None and not self._state.warned:
            return since + timers.warning_time, "warning", timers.warning_message
        if timers.time_out is not None:
            return since + timers.time_out, "timeout", timers.timeout_message
        return None

    async def _wait_for_silence(self) -> None:
        """Wait for the next signal, or send the warning or the timeout when silence is due."""
        due = self._due()
        if due is None:
            await workflow.wait_condition(lambda: bool(self._queue))
            return
        at, kind, text = due
        remaining = at - workflow.now().timestamp()
        if remaining > 0:
            try:
                await workflow.wait_condition(lambda: bool(self._queue), timeout=remaining)
                return
            except TimeoutError:
                pass
        if kind == "warning":
            self._state.warned = True
        if text:
            await self._send_own(kind, text)
        if kind == "timeout":
            await self._end("timeout")

    async def _send_own(self, kind: str, body: str) -> None:
        await self._send(
            self._input.conversation_id,
            SendMessageInput(
                message_id=str(workflow.uuid4()),
                attempts=SEND_ATTEMPTS,
                conversation_id=self._input.conversation_id,
                kind=kind,
                body=body,
            ),
        )

    async def _send(self, conversation_id: str, message: SendMessageInput) -> None:
        try:
            await workflow.execute_activity(
                "send_conversation_message",
                message,
                result_type=SendMessageResult,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=SEND_RETRY,
            )
        except ActivityError as error:
            # The conversation goes on; the message keeps the state its last attempt left.
            workflow.logger.warning("message %s not sent: %s", message.message_id, error.cause)
        self._notify(
            ConversationEvent(conversation_id=conversation_id, message_id=message.message_id)
        )

    async def _end(self, state: str) -> None:
        await workflow.execute_activity(
            "end_conversation",
            EndConversationInput(conversation_id=self._input.conversation_id, state=state),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )
        self._end_state = state
        self._notify(ConversationEvent(conversation_id=self._input.conversation_id, state=state))

    async def _hand_over(self) -> NoReturn:
        """Close this conversation and continue as new as the next one of the pair."""
        if self._end_state is None:
            await self._end("closed")
        await workflow.wait_condition(lambda: not self._events)
        following = min(self._queue, key=lambda s: s.conversation_seq)
        workflow.continue_as_new(
            ConversationInput(
                conversation_id=following.conversation_id,
                conversation_seq=following.conversation_seq,
                account_id=self._input.account_id,
                agent_number=self._input.agent_number,
                user_number=self._input.user_number,
                pending=list(self._queue),
            )
        )

    def _notify(self, event: ConversationEvent) -> None:
        self._events.append(event)

    async def _deliver_events(self) -> None:
        """Post events to the webhook in order, without holding the conversation back."""
        while True:
            await workflow.wait_condition(lambda: bool(self._events))
            try:
                await workflow.execute_activity(
                    "post_conversation_event",
                    self._events[0],
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=EVENT_RETRY,
                )
            except ActivityError as error:
                workflow.logger.warning("event not posted: %s", error.cause)
            self._events.pop(0)
