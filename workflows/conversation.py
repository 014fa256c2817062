"""ConversationWorkflow: one pair's conversation; sends its messages, keeps its silence timers.

Each run is one conversation. A message of a newer conversation of the pair (`new_conversation`,
or a send after the last one ended) closes this one and continues as new into that one, so the
signal-with-start of a send always lands on the workflow id of its pair.
"""

import asyncio
import uuid
from datetime import timedelta
from typing import NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from workflows.cancellation import shielded
    from workflows.contracts import (
        CONVERSATION_WORKFLOW,
        ConversationEvent,
        ConversationInput,
        ConversationRef,
        ConversationResult,
        ConversationSignal,
        ConversationState,
        EndConversationInput,
        SendMessageInput,
    )
    from workflows.retries import DB_RETRY, EVENT_RETRY, MESSAGE_ATTEMPTS, MESSAGE_RETRY
    from workflows.statuses import ConversationStatus

AGENT = "AGENT"
# Patch id (docs/WORKFLOWS.md): a run that continues as new (the pair's next conversation, or a
# long history) hands its undelivered events to the next run instead of waiting for the
# webhook's retries, and an ended run handles new signals while its last events are retried.
EVENTS_CARRIED_PATCH = "conversation-events-carried-over"
# An agent message the carrier never got (refused, deferred past its attempts, the user opted
# out) starts no silence clock: the user was not written to.
CLOCK_ON_HANDED_OVER_PATCH = "conversation-clock-on-handed-over"
# A run whose queue never empties (a busy pair, a carrier deferring each message) continues as
# new with its queue once it has handled `messages_per_run` messages or Temporal suggests it,
# rather than only once the queue is empty: its history would grow past Temporal's limit.
CONTINUE_WITH_BACKLOG_PATCH = "conversation-continue-with-backlog"
# The silence clock's warning and timeout go out only while the conversation is still active
# in the database: a send that opened the pair's next conversation (closing this one) but
# whose signal never came (503) leaves this run unaware that its conversation was closed.
SILENCE_CHECKS_STATE_PATCH = "conversation-silence-checks-state"
# A message whose send's last attempt failed (not with the carrier's answer) is settled: a claim
# lost in it looked up at the carrier, a message still `queued` failed. It kept the state the
# attempt left, `sending` or `queued`, for good.
SETTLE_UNSENT_PATCH = "conversation-settle-unsent"
# A conversation handed over by the pair's previous run begins with its `active` event even
# if a later send closed it before the run began (two sends opening conversations in quick
# succession while that run was busy): it got neither `active` nor `closed` (its closing send
# found it ended, as this run did).
HANDED_OVER_BEGINS_PATCH = "conversation-handed-over-begins"
# A Temporal cancellation (`temporal workflow cancel`, the web UI's Cancel) closes the
# conversation, with its event, once the send in hand is done: it reached what the run
# awaited, and either ended the run with the conversation left `active` for good (its timers
# gone) or, in a send, was taken for the send's failure, the message left as it was and the
# run going on with no silence clock.
CANCEL_CLOSES_PATCH = "conversation-cancel-closes"
# A warning's or timeout's message id names its silence (`_send_own`), not a random one.
OWN_IDS_NAMED_PATCH = "conversation-own-message-ids-named"
# The silence clock runs only after an agent message, as Bland's `time_out` does ("when the
# user goes silent for this long after an agent message"): a user's message stops it. It
# started over, and the user who had answered got the warning and the timeout.
SILENCE_AFTER_AGENT_PATCH = "conversation-silence-after-agent-only"
# The silence clock starts when the request the carrier took was made (`sent_at`, its claim
# on the database's clock, as a user's message's `received_at` is), not when this run learned
# it: a reply that came in between (a send reconciled for seconds, a worker behind by
# minutes) was taken for one to an earlier message, and the user who had answered got the
# warning.
CLOCK_AT_SENT_PATCH = "conversation-clock-at-sent"
# A run handing over goes on as the pair's next conversation, the oldest of those newer than
# its own: a message of its own (or an older) conversation that came while it closed (a user's
# reply recorded before the next conversation opened, its signal late) was the oldest queued,
# and the next run began that closed conversation again, with `active` and `closed` events.
HAND_OVER_TO_NEWER_PATCH = "conversation-hand-over-to-newer"
# A user's message recorded before the warning or timeout came due, whose signal came while the
# run checked the conversation's state (the timer fired between its record and its signal),
# stops the silence: the user who had answered in time got the warning, or the timeout.
REPLY_BEFORE_DUE_PATCH = "conversation-reply-before-due"
# The outcomes of an agent message that never reached the carrier (`conversation_messages`).
NEVER_SENT = frozenset({"queued", "failed", "skipped"})


@workflow.defn(name=CONVERSATION_WORKFLOW)
class ConversationWorkflow:
    def __init__(self) -> None:
        self._queue: list[ConversationSignal] = []
        self._events: list[ConversationEvent] = []
        self._state = ConversationState()
        self._end_state: ConversationStatus | None = None
        # The post of the first event while it runs; the pump stops (leaving the events) once
        # `_carrying` is set (EVENTS_CARRIED_PATCH).
        self._posting: workflow.ActivityHandle[bool | None] | None = None
        # The last event settled was given up on (none delivered since): each next one gets
        # one post (ConversationEvent.one_post), in the next runs too (`receiver_down`). Runs
        # that recorded no answer never set it.
        self._receiver_down = False
        # When the first post of the event in flight started in this run.
        self._posting_since = 0.0
        self._carrying = False
        self._pump_stopped = False
        # Messages this run has handled (CONTINUE_WITH_BACKLOG_PATCH).
        self._handled = 0
        # A Temporal cancellation came (CANCEL_CLOSES_PATCH): the conversation is closed.
        self._cancelled = False

    @workflow.signal
    def message(self, signal: ConversationSignal) -> None:
        self._queue.append(signal)

    @workflow.run
    async def run(self, input: ConversationInput) -> ConversationResult:
        work = asyncio.create_task(self._run(input))

        async def close() -> None:
            # At the work's next turn, once the send in hand is done. Its end, or its
            # hand-over to the pair's next conversation, if done already, stands.
            self._cancelled = True

        return await shielded(work, CANCEL_CLOSES_PATCH, close)

    async def _run(self, input: ConversationInput) -> ConversationResult:
        self._input = input
        # Messages handed over by the previous run came before any signalled to this one.
        self._queue[:0] = input.pending
        # Events the previous run had not delivered yet come before this run's own.
        self._events[:0] = input.events
        self._receiver_down = input.receiver_down
        # Left running when the run ends: every run waits for its events to be posted first.
        self._pump = asyncio.create_task(self._deliver_events())
        if input.state is not None:
            self._state = input.state
        else:
            await self._begin()
        return await self._converse()

    async def _begin(self) -> None:
        """A run started by a late signal for a conversation that already ended only sends it.
        One the previous run handed over was active when its send opened it: it begins, and
        ends (with its event) when the send that closed it comes, or its silence clock finds
        it closed."""
        state = await self._conversation_state()
        if state != ConversationStatus.ACTIVE and not (
            self._input.handed_over and workflow.patched(HANDED_OVER_BEGINS_PATCH)
        ):
            self._end_state = state
            return
        self._notify(
            ConversationEvent(
                conversation_id=self._input.conversation_id, state=ConversationStatus.ACTIVE
            )
        )

    async def _conversation_state(self) -> ConversationStatus:
        """The conversation's state in the database."""
        return await workflow.execute_activity_method(
            ConversationActivities.conversation_state,
            ConversationRef(conversation_id=self._input.conversation_id),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )

    async def _converse(self) -> ConversationResult:
        own = self._input.conversation_seq
        while True:
            if self._cancelled and self._end_state is None:
                # Its messages already queued are still sent, as an ended run's are.
                await self._end(ConversationStatus.CLOSED)
            if self._queue:
                if (
                    self._end_state is None
                    and (
                        self._handled >= self._input.messages_per_run
                        or workflow.info().is_continue_as_new_suggested()
                    )
                    and workflow.patched(CONTINUE_WITH_BACKLOG_PATCH)
                ):
                    self._continue_as_new(await self._carry_events())
                current = [s for s in self._queue if s.conversation_seq <= own]
                if not current:
                    await self._hand_over()
                self._queue.remove(current[0])
                self._handled += 1
                await self._handle(current[0])
                continue
            if self._end_state is not None or workflow.info().is_continue_as_new_suggested():
                carried: list[ConversationEvent] = []
                if not workflow.patched(EVENTS_CARRIED_PATCH):
                    # Signals may arrive while the last events are posted: handled after them.
                    await workflow.wait_condition(lambda: not self._events)
                elif self._end_state is not None:
                    # The ended run stays only to post its last events; a signal meanwhile
                    # (the pair's next conversation) is handled at once, and the run that
                    # continues takes the events still undelivered along.
                    await workflow.wait_condition(lambda: not self._events or bool(self._queue))
                else:
                    carried = await self._carry_events()
                if self._queue:
                    continue
                if self._end_state is not None:
                    return ConversationResult(
                        conversation_id=self._input.conversation_id, state=self._end_state
                    )
                self._continue_as_new(carried)
            await self._wait_for_silence()

    def _continue_as_new(self, carried: list[ConversationEvent]) -> NoReturn:
        """Go on with this conversation in a new run: its state, the events `carried` and
        the messages still queued."""
        workflow.continue_as_new(
            ConversationInput(
                conversation_id=self._input.conversation_id,
                conversation_seq=self._input.conversation_seq,
                account_id=self._input.account_id,
                agent_number=self._input.agent_number,
                user_number=self._input.user_number,
                pending=list(self._queue),
                state=self._state,
                events=carried,
                messages_per_run=self._input.messages_per_run,
                max_carried_events=self._input.max_carried_events,
                receiver_down=self._receiver_down,
            )
        )

    async def _handle(self, signal: ConversationSignal) -> None:
        live = signal.conversation_seq == self._input.conversation_seq and self._end_state is None
        if signal.sender == AGENT:
            if live and signal.timers is not None:
                self._state.timers = signal.timers
            handed_over, sent_at = await self._send(
                signal.conversation_id,
                SendMessageInput(message_id=signal.message_id, attempts=MESSAGE_ATTEMPTS),
            )
            if (
                live
                and signal.kind == "message"
                and (handed_over or not workflow.patched(CLOCK_ON_HANDED_OVER_PATCH))
            ):
                at = sent_at if sent_at and workflow.patched(CLOCK_AT_SENT_PATCH) else None
                self._restart_clock(signal.message_id, at)
            return
        if live:
            if workflow.patched(SILENCE_AFTER_AGENT_PATCH):
                if not self._answered_before_the_clock(signal):
                    self._stop_clock()
            else:
                self._restart_clock(signal.message_id)
        self._notify(
            ConversationEvent(conversation_id=signal.conversation_id, message_id=signal.message_id)
        )
        if signal.answer_id is not None:
            await self._send(
                signal.conversation_id,
                SendMessageInput(message_id=signal.answer_id, attempts=MESSAGE_ATTEMPTS),
            )

    def _restart_clock(self, after: str, at: float | None = None) -> None:
        """The user's silence starts after message `after`: `at`, when the carrier took it,
        or now."""
        self._state.silent_since = at or workflow.now().timestamp()
        self._state.silent_after = after
        self._state.warned = False

    def _answered_before_the_clock(self, signal: ConversationSignal) -> bool:
        """Whether the user's message was recorded before the silence clock started: it
        answered an earlier agent message, and the silence after the latest goes on."""
        since = self._state.silent_since
        return since is not None and signal.received_at is not None and signal.received_at < since

    def _replied_before(self, due: float) -> bool:
        """Whether a user's message of this conversation recorded before `due` (and since the
        silence began) is queued."""
        return any(
            s.sender != AGENT
            and s.conversation_seq == self._input.conversation_seq
            and s.received_at is not None
            and s.received_at < due
            and not self._answered_before_the_clock(s)
            for s in self._queue
        )

    def _stop_clock(self) -> None:
        """The user has spoken: no silence of theirs until the next agent message."""
        self._state.silent_since = None
        self._state.silent_after = None
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
            await workflow.wait_condition(lambda: bool(self._queue) or self._cancelled)
            return
        at, kind, text = due
        remaining = at - workflow.now().timestamp()
        if remaining > 0:
            try:
                await workflow.wait_condition(
                    lambda: bool(self._queue) or self._cancelled, timeout=remaining
                )
                return
            except TimeoutError:
                pass
        if workflow.patched(SILENCE_CHECKS_STATE_PATCH):
            state = await self._conversation_state()
            if state != ConversationStatus.ACTIVE:
                # Closed without this run hearing of it: no warning or timeout to a user whose
                # conversation is over; its end is told as it is.
                self._ended(state)
                return
            if self._replied_before(at) and workflow.patched(REPLY_BEFORE_DUE_PATCH):
                return
        if kind == "warning":
            self._state.warned = True
        if text:
            await self._send_own(kind, text)
        if kind == "timeout":
            await self._end(ConversationStatus.TIMEOUT)

    async def _send_own(self, kind: str, body: str) -> None:
        # Its id names this silence's warning or timeout by the message the silence came
        # after, as a run made again from this history names it too: a reset of the run (the
        # web UI's Reset) sends it again under the same id, which the send claims once. A
        # random id was new in the reset run (its randomness is its own), and the user got
        # the warning twice. (A silence carried over from a run before `silent_after`: its
        # start.)
        silence = self._state.silent_after or str(self._state.silent_since)
        own_id = (
            uuid.uuid5(uuid.UUID(self._input.conversation_id), f"{kind} {silence}")
            if workflow.patched(OWN_IDS_NAMED_PATCH)
            else workflow.uuid4()
        )
        await self._send(
            self._input.conversation_id,
            SendMessageInput(
                message_id=str(own_id),
                attempts=MESSAGE_ATTEMPTS,
                conversation_id=self._input.conversation_id,
                kind=kind,
                body=body,
            ),
        )

    async def _send(
        self, conversation_id: str, message: SendMessageInput
    ) -> tuple[bool, float | None]:
        """Send the message; whether the carrier may have it (its outcome not NEVER_SENT),
        and when it took it, if known."""
        handed_over, sent_at = False, None
        try:
            result = await workflow.execute_activity_method(
                ConversationActivities.send_conversation_message,
                message,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=MESSAGE_RETRY,
            )
            handed_over, sent_at = result.status not in NEVER_SENT, result.sent_at
        except ActivityError as error:
            # The conversation goes on; what the last attempt left is settled.
            workflow.logger.warning("message %s not sent: %s", message.message_id, error.cause)
            if not isinstance(error.cause, CancelledError) and workflow.patched(
                SETTLE_UNSENT_PATCH
            ):
                settled = await workflow.execute_activity_method(
                    ConversationActivities.settle_unsent_message,
                    message,
                    start_to_close_timeout=timedelta(minutes=2),
                    retry_policy=DB_RETRY,
                )
                handed_over, sent_at = settled.status not in NEVER_SENT, settled.sent_at
        self._notify(
            ConversationEvent(conversation_id=conversation_id, message_id=message.message_id)
        )
        return handed_over, sent_at

    async def _end(self, state: ConversationStatus) -> None:
        """End the conversation in `state`, or tell the state it ended in meanwhile (a send
        that opened the pair's next one closed it while its timeout was being sent)."""
        ended = await workflow.execute_activity_method(
            ConversationActivities.end_conversation,
            EndConversationInput(conversation_id=self._input.conversation_id, state=state),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )
        self._ended(ended or state)

    def _ended(self, state: ConversationStatus) -> None:
        """The conversation is over, in `state`: its event is posted."""
        self._end_state = state
        self._notify(ConversationEvent(conversation_id=self._input.conversation_id, state=state))

    async def _hand_over(self) -> NoReturn:
        """Close this conversation and continue as new as the next one of the pair."""
        if self._end_state is None:
            await self._end(ConversationStatus.CLOSED)
        carried: list[ConversationEvent] = []
        if workflow.patched(EVENTS_CARRIED_PATCH):
            carried = await self._carry_events()
        else:
            await workflow.wait_condition(lambda: not self._events)
        own = self._input.conversation_seq
        following = min(self._queue, key=lambda s: s.conversation_seq)
        if following.conversation_seq <= own and workflow.patched(HAND_OVER_TO_NEWER_PATCH):
            newer = [s for s in self._queue if s.conversation_seq > own]
            following = min(newer, key=lambda s: s.conversation_seq)
        workflow.continue_as_new(
            ConversationInput(
                conversation_id=following.conversation_id,
                conversation_seq=following.conversation_seq,
                handed_over=True,
                account_id=self._input.account_id,
                agent_number=self._input.agent_number,
                user_number=self._input.user_number,
                pending=list(self._queue),
                events=carried,
                messages_per_run=self._input.messages_per_run,
                max_carried_events=self._input.max_carried_events,
                receiver_down=self._receiver_down,
            )
        )

    def _notify(self, event: ConversationEvent) -> None:
        self._events.append(event)

    async def _carry_events(self) -> list[ConversationEvent]:
        """Stop the pump, cancelling the post in flight (its event is posted again by the next
        run, with the same `webhook-id`, its retry schedule going on from its first post);
        the events not delivered, in order, the newest `max_carried_events` of them."""
        self._carrying = True
        if self._posting is not None:
            self._posting.cancel()
            first = self._events[0]
            if first.first_posted_at is None:
                first.first_posted_at = self._posting_since
        await workflow.wait_condition(lambda: self._pump_stopped)
        dropped = len(self._events) - self._input.max_carried_events
        if dropped > 0:
            workflow.logger.warning(
                "%d undelivered events of conversation %s dropped: its webhook keeps failing",
                dropped,
                self._input.conversation_id,
            )
        return self._events[max(dropped, 0) :]

    async def _deliver_events(self) -> None:
        """Post events to the webhook in order, without holding the conversation back."""
        try:
            while True:
                await workflow.wait_condition(lambda: bool(self._events) or self._carrying)
                if self._carrying:
                    return
                self._posting_since = workflow.now().timestamp()
                if self._receiver_down:
                    self._events[0].one_post = True
                self._posting = workflow.start_activity_method(
                    ConversationActivities.post_conversation_event,
                    self._events[0],
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=EVENT_RETRY,
                )
                try:
                    self._receiver_down = await self._posting is False
                except (ActivityError, asyncio.CancelledError) as error:
                    if self._carrying:
                        return
                    workflow.logger.warning("event not posted: %s", error)
                finally:
                    self._posting = None
                self._events.pop(0)
        finally:
            self._pump_stopped = True
