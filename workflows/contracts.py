"""The dataclasses workflows and activities exchange, and the ids both sides derive.

New fields always get defaults, so histories of running workflows keep replaying.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError

from workflows.statuses import BatchStatus, ConversationStatus, LedgerStatus

BATCH_STATUS = SearchAttributeKey.for_keyword("BatchStatus")
BATCH_ID = SearchAttributeKey.for_keyword("BatchId")
ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")
AGENT_NUMBER = SearchAttributeKey.for_keyword("AgentNumber")
RECIPIENT_COUNT = SearchAttributeKey.for_int("RecipientCount")

SEARCH_ATTRIBUTES = {
    "BatchStatus": "Keyword",
    "BatchId": "Keyword",
    "AccountId": "Keyword",
    "AgentNumber": "Keyword",
    "RecipientCount": "Int",
}


# Workflow type names, fixed apart from the class names: running workflows and recorded
# histories carry them, and the API starts workflows by them without importing the classes.
BATCH_WORKFLOW = "BatchWorkflow"
CHUNK_WORKFLOW = "ChunkWorkflow"
CONVERSATION_WORKFLOW = "ConversationWorkflow"
CLICK_EVENT_WORKFLOW = "ClickEventWorkflow"


def batch_workflow_id(batch_id: str) -> str:
    return f"sms-batch-{batch_id}"


class BatchNotFound(ApplicationError):
    """An activity's batch row is gone: no retry can bring it back, so none is made, whatever
    the caller's retry policy."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"batch {batch_id} not found", type="BatchNotFound", non_retryable=True)


# A spread batch's chunk holds at most this many rows. A slow spread (a row every 150 s or
# more) sends its rows in slices of one, each a timer and an activity (11 history events):
# 5,000 rows to a chunk reached 44,000 events, near Temporal's limit of 51,200; 500 keep a
# chunk's history under 5,600, below the 10,240 at which Temporal starts warning.
SPREAD_CHUNK_ROWS = 500


@dataclass(kw_only=True)
class DispatchSettings:
    chunk_size: int = 5000
    slice_size: int = 500
    chunk_window: int = 4
    slices_in_flight: int = 2
    chunks_per_run: int = 200
    # A send activity silent this long is presumed dead, and its slice retried elsewhere.
    send_heartbeat_timeout_seconds: float = 30.0
    # The task queue of the send activities; None: the workflow's own (batches started before
    # it, and the fast tests' workers).
    send_task_queue: str | None = None
    # A batch not spread whose rows fit this many send slices runs its chunks' code in its
    # own workflow, without ChunkWorkflows (patch `batch-slices-inline`); 1, as in runs
    # started before it: only a batch that fits one slice (`batch-one-slice-inline`).
    inline_slices: int = 1
    # The slowest rate among the batch's senders (messages a second); None: unlimited, or a
    # run started before it. A large batch's chunks hold at most RATE_CHUNK_SECONDS of it
    # (BatchWorkflow._large_chunk_rows).
    sender_mps: float | None = None


@dataclass(kw_only=True)
class ValidationLimits:
    """The API's limits when it accepted the batch; validation applies these, not the worker's."""

    max_rows: int = 1_000_000
    max_message_chars: int = 1600


@dataclass(frozen=True, kw_only=True)
class ValidationOptions:
    """A batch request's choices for validating its file, and their defaults: the API's
    request model takes its defaults from here."""

    strict: bool = False
    exclude_opt_outs: bool = True
    exclude_duplicates: bool = True
    shorten_urls: bool = False

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> Self:
        """The options of a stored request, which leaves out those at their defaults."""
        return cls(**{f.name: bool(request[f.name]) for f in fields(cls) if f.name in request})


# The options a request gets when it names none.
DEFAULT_VALIDATION = ValidationOptions()


@dataclass(kw_only=True)
class SendWindow:
    """The hours of the recipient's local day a batch may send in, as "HH:MM"; `end` before
    `start` crosses midnight. `timezone` is taken for a number whose zone is not known."""

    start: str
    end: str
    timezone: str = "UTC"


@dataclass(kw_only=True)
class Timing:
    """When a batch may send, as Unix times; 0 means no constraint."""

    schedule_at: float = 0.0
    spread_seconds: float = 0.0
    expire_at: float = 0.0
    send_window: SendWindow | None = None


@dataclass(kw_only=True)
class Pace:
    """When each row of a spread batch goes (row `seq` at `start + seq * interval`), and
    when sending stops for good (`expire_at`); 0 means no constraint."""

    start: float = 0.0
    interval: float = 0.0
    expire_at: float = 0.0
    # Each recipient is sent only inside this window of their local day (None: any time).
    send_window: SendWindow | None = None

    def send_time(self, seq: int) -> float:
        return self.start + seq * self.interval


@dataclass(kw_only=True)
class WaitingRange:
    """Seqs [start, end) of a batch, some of whose rows wait for their send window; the first
    of those opens at `opens` (Unix time)."""

    start: int
    end: int
    opens: float


@dataclass(kw_only=True)
class DispatchState:
    """What a BatchWorkflow run hands to the next one when it continues as new."""

    rows_total: int
    recipients: int
    next_chunk: int
    dispatched: int
    event_seq: int
    dispatch_started: float
    status: BatchStatus
    paused: bool = False
    # When the pause the batch is in began (Unix time): a resume moves a spread batch's
    # timeline on by the time it was paused.
    paused_since: float = 0.0
    # When the batch was last resumed (Unix time): an auto-pause met before it is stale.
    resumed_at: float = 0.0
    # When a throttling's back-off last resumed it, and how many back-offs in a row the
    # carrier's throttling has outlasted since (the next one is twice as long).
    backed_off_at: float = 0.0
    back_offs_outlasted: int = 0
    pace: Pace = field(default_factory=Pace)
    # What the `progress` query has counted so far.
    chunks_done: int = 0
    sent: int = 0
    failed: int = 0
    # Seq ranges whose rows wait for their send window, for the passes after the first.
    waiting: list[WaitingRange] = field(default_factory=list)
    # Passes over waiting rows so far: they name their chunks.
    window_passes: int = 0
    # A cancel that came while the run handed over (its chunks done, a webhook post in
    # flight): the next run ends the batch at once.
    cancel_reason: str | None = None
    # Events not yet delivered when the run handed over (a post waiting for its retry): the
    # next run's pump calls the activity at once rather than at its first new event.
    events_unsettled: bool = False
    # Rows a chunk, when not `DispatchSettings.chunk_size` (0): a spread batch with a send
    # window's (BatchWorkflow._window_chunk_rows) or a large batch's
    # (BatchWorkflow._large_chunk_rows), decided as its sending starts.
    chunk_rows: int = 0


@dataclass(kw_only=True)
class AutoPause:
    """A batch pauses itself once carrier errors pass `error_rate` of its last `window`
    messages (sent or failed)."""

    error_rate: float = 0.5
    window: int = 200


@dataclass(kw_only=True)
class AutoPaused:
    """Why a batch paused itself, for its `paused` event: a stable `code`
    (`carrier_error_rate`, `carrier_authentication_failed`, `carrier_throttled`,
    `carrier_unreachable`), the reason in words, the carrier's commonest error codes with
    their counts. `account_wide`: the batch that met the failure pauses the account's other
    running batches too. `resume_after_seconds`: the batch resumes by itself that long after
    the pause (0: it waits for an operator). `seen_at`: when the failure was met (workflow
    time of the run that met it; 0 from an earlier release): a batch resumed since then
    ignores it. `deferred_since`: for a throttling, since when every request of the slice was
    deferred (0: not known)."""

    code: str
    reason: str
    error_codes: dict[str, int] = field(default_factory=dict)
    account_wide: bool = False
    resume_after_seconds: float = 0.0
    seen_at: float = 0.0
    deferred_since: float = 0.0


@dataclass(kw_only=True)
class BatchInput:
    batch_id: str
    account_id: str
    agent_number: str
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    state: DispatchState | None = None
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    # A retry run of a finished batch: these ledger statuses are sent again, no validation.
    retry_statuses: list[LedgerStatus] | None = None
    # A retry run: only rows sent fewer times than this (a Postman retry's limit); None: any.
    retry_attempts_below: int | None = None
    # Events already recorded for this batch by earlier runs: a retry numbers on from there.
    first_event_seq: int = 0
    timing: Timing = field(default_factory=Timing)
    # The file's validation, done by the API as it took the file (Postman uploads of runs
    # started before the upload left the ledger to the workflow): its ledger is written, and
    # the batch starts from it without validating again. No run is started with it now.
    validated: "ValidationResult | None" = None
    # The file is the ledger's rows, validated by the API as it took the upload (a Postman
    # upload, since LOAD_VALIDATED_PATCH): the batch loads them and validates nothing.
    load_validated: bool = False
    # None: the batch never pauses itself on carrier errors (runs started before it too).
    auto_pause: AutoPause | None = None
    # The task queue that builds the ledger of a large file (`Settings.validation_task_queue`,
    # where each worker validates few at once); None: the workflow's own (a small file, and
    # runs started before it).
    validation_task_queue: str | None = None


@dataclass(kw_only=True)
class BatchProgress:
    """The `progress` query's answer: the batch's phase and what its chunks have done."""

    status: BatchStatus
    paused: bool
    cancel_reason: str | None
    rows_total: int
    recipients: int
    dispatched: int
    chunks_total: int
    chunks_done: int
    sent: int
    failed: int


@dataclass(kw_only=True)
class BatchCounts:
    total: int = 0
    successful: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    uncertain: int = 0
    expired: int = 0


@dataclass(kw_only=True)
class BatchResult:
    status: BatchStatus
    counts: BatchCounts
    code: str | None = None
    reason: str | None = None


@dataclass(kw_only=True)
class ValidateInput:
    batch_id: str
    limits: ValidationLimits = field(default_factory=ValidationLimits)


@dataclass(kw_only=True)
class ValidationResult:
    rows_total: int
    recipients: int
    rejected: int
    skipped: int
    code: str | None = None
    reason: str | None = None


@dataclass(kw_only=True)
class StatusUpdate:
    batch_id: str
    workflow_id: str
    event_seq: int
    status: BatchStatus
    message: str | None = None
    code: str | None = None
    reason: str | None = None
    counts: BatchCounts | None = None
    # A `paused` event of a batch that paused itself: the carrier's commonest error codes.
    error_codes: dict[str, int] | None = None
    # A repeat of the batch's phase with its progress in `message`: posted to the status
    # webhook only when the request asks (`status_webhook_progress`), as Bland's contract
    # posts once per phase.
    progress: bool = False


@dataclass(kw_only=True)
class RunningBatchesInput:
    """The account's batches not yet in a final status, but `batch_id`'s own."""

    account_id: str
    batch_id: str


@dataclass(kw_only=True)
class DeliverEventsInput:
    batch_id: str


@dataclass(kw_only=True)
class DeliverEventsResult:
    """`retry_in` seconds until the next attempt is due; None once every event is settled."""

    retry_in: float | None = None


@dataclass(kw_only=True)
class ChunkInput:
    batch_id: str
    agent_number: str
    start: int
    end: int
    slice_size: int
    slices_in_flight: int
    pace: Pace = field(default_factory=Pace)
    send_heartbeat_timeout_seconds: float = 30.0
    # Empty in chunks started before it was passed down: their sends read the batch row.
    account_id: str = ""
    # Rows outside their send window are left `pending` and counted in the result (the batch
    # passes over them again) rather than waited for in the chunk.
    hand_back_waiting: bool = False
    auto_pause: AutoPause | None = None
    # Where its send activities go (DispatchSettings.send_task_queue); None: the chunk's own.
    send_task_queue: str | None = None


@dataclass(kw_only=True)
class SendSliceInput:
    batch_id: str
    agent_number: str
    start: int
    end: int
    pace: Pace = field(default_factory=Pace)
    # Empty in sends scheduled before it was passed down: they read the batch row.
    account_id: str = ""


@dataclass(kw_only=True)
class SendCounts:
    sent: int = 0
    failed: int = 0
    # Rows of the slice (or of the chunk, for one that hands them back) left `pending`
    # outside their send window, and when the first of them opens (Unix time); the chunk
    # sends the slice again then, or the batch the chunk's range.
    waiting: int = 0
    next_window: float = 0.0
    # The failed rows by carrier error code.
    errors: dict[str, int] = field(default_factory=dict)
    # A carrier error that refuses every message of the account (20003: its credentials), or
    # a throttling (20429) or outage (`connect`, 5xx) that deferred every request of the slice
    # for longer than the retry window, met by this slice: the slice stopped there, its unsent
    # rows back to `pending`.
    account_failure: str | None = None
    # For a throttling: seconds the account's batches stay paused before they resume by
    # themselves (0: until an operator resumes them).
    resume_after: float = 0.0
    # For a throttling or an outage: since when every request of the slice was deferred
    # (Unix time).
    deferred_since: float = 0.0


@dataclass(kw_only=True)
class FinishInput:
    batch_id: str
    # The terminal status of rows still `pending` (a cancelled or expired batch), if any.
    close_pending_as: LedgerStatus | None = None


@dataclass(kw_only=True)
class ReconcileInput:
    batch_id: str
    account_id: str
    agent_number: str
    # Cancelled or expired: rows still `pending` are closed, not sent.
    stopped: bool = False


@dataclass(kw_only=True)
class ReconcileResult:
    """Uncertain rows settled: `sent` (the carrier has them), `reopened` (it never got them;
    `pending` again, within seqs [first_seq, end_seq)) or left `unresolved`."""

    sent: int = 0
    reopened: int = 0
    unresolved: int = 0
    first_seq: int = 0
    end_seq: int = 0


@dataclass(kw_only=True)
class ReopenInput:
    batch_id: str
    statuses: list[LedgerStatus]
    # Only rows sent fewer times than this (the ledger's `attempts`); None: any.
    attempts_below: int | None = None


@dataclass(kw_only=True)
class ReopenResult:
    reopened: int
    rows_total: int
    recipients: int


def click_event_workflow_id(code: str) -> str:
    """One workflow per short link: its first click's event, posted once."""
    return f"click-event-{code}"


@dataclass(kw_only=True)
class ClickEventInput:
    """The short link whose first click is to be posted to its batch's status webhook."""

    code: str


def conversation_workflow_id(account_id: str, agent_number: str, user_number: str) -> str:
    """One workflow id per (account, sender, user); each conversation of the pair is a run."""
    return (
        f"sms-conversation-{account_id}-{agent_number.removeprefix('+')}"
        f"-{user_number.removeprefix('+')}"
    )


@dataclass(kw_only=True)
class SilenceTimers:
    """Seconds of user silence before the warning and before the timeout, and their texts."""

    time_out: float | None = None
    timeout_message: str | None = None
    warning_time: float | None = None
    warning_message: str | None = None


@dataclass(kw_only=True)
class ConversationSignal:
    """A message recorded by the API (an agent send, a user reply), for the workflow to act on."""

    conversation_id: str
    # Conversations of a pair are ordered by seq: a higher one replaces the running one.
    conversation_seq: int
    message_id: str
    sender: str
    kind: str = "message"
    # A send that sets timers replaces the conversation's; None keeps them.
    timers: SilenceTimers | None = None
    # A user's message that asks for an answer (HELP): the agent message that answers it,
    # recorded with it and sent once it is handled. One signal for both, so that the answer
    # reaches the workflow whenever the message does.
    answer_id: str | None = None
    # A user's message: when it was recorded (Unix seconds, the database's clock). One recorded
    # before the silence clock started answered an earlier agent message (it came while the
    # latest was being sent, or was handed over late): it does not stop the clock.
    received_at: float | None = None


@dataclass(kw_only=True)
class ConversationState:
    """What a run hands to the next when the same conversation continues as new."""

    timers: SilenceTimers | None = None
    silent_since: float | None = None
    # The message that started the silence: it names the silence's warning and timeout.
    silent_after: str | None = None
    warned: bool = False


@dataclass(kw_only=True)
class ConversationInput:
    conversation_id: str
    conversation_seq: int
    account_id: str
    agent_number: str
    user_number: str
    pending: list[ConversationSignal] = field(default_factory=list)
    # None: the conversation starts with this run.
    state: ConversationState | None = None
    # Opened by a send the pair's previous run handed over (the send that opened it closed
    # that run's): it was active then, whatever this run finds when it begins.
    handed_over: bool = False
    # Webhook events the previous run of the pair had not delivered, in order: posted first.
    events: list["ConversationEvent"] = field(default_factory=list)
    # Messages a run handles before it continues as new with the rest still queued (about 15
    # history events each: 500 keep a run under Temporal's 10,240-event warning).
    messages_per_run: int = 500
    # Undelivered events a run carries on at most (a receiver failing for hours, its posts
    # one at a time): the oldest beyond are dropped, so that the next run's input stays well
    # under Temporal's payload limit however long a pair's receiver fails.
    max_carried_events: int = 500
    # The previous run's last event settled was given up on (ConversationEvent.one_post).
    receiver_down: bool = False


@dataclass(kw_only=True)
class ConversationResult:
    conversation_id: str
    state: ConversationStatus


@dataclass(kw_only=True)
class SendMessageInput:
    message_id: str
    # Attempts the workflow's retry policy allows: the last one fails a deferred message.
    attempts: int
    # Set for messages the workflow writes itself (warning, timeout): the API stores its own.
    conversation_id: str | None = None
    kind: str = "message"
    body: str | None = None


@dataclass(kw_only=True)
class SendMessageResult:
    status: str
    error_code: str | None = None
    # When the request the carrier took was made (Unix seconds, the database's clock: its
    # claim); None when the carrier has not taken it, and in results recorded before it was
    # kept.
    sent_at: float | None = None


@dataclass(kw_only=True)
class EndConversationInput:
    conversation_id: str
    state: ConversationStatus


@dataclass(kw_only=True)
class ConversationEvent:
    """One webhook event: a message (`message_id`) or a change of state (`state`)."""

    conversation_id: str
    message_id: str | None = None
    state: ConversationStatus | None = None
    # When its first post started (seconds since the epoch), once a run has carried it on
    # undelivered: the next run's posts go on with the retry schedule from there.
    first_posted_at: float | None = None
    # Posted once, with no retry: an event before it was given up on, and none delivered
    # since (the receiver is down; a schedule for each event in turn would take days).
    one_post: bool = False


@dataclass(kw_only=True)
class ConversationRef:
    conversation_id: str
