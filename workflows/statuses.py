"""The statuses of batches, ledger rows and conversations, shared by workflows, store and API.

Each is a `StrEnum`: a member is the very string stored in PostgreSQL, sent in webhooks and
carried in workflow histories, so naming them here changes no payload.
"""

from enum import StrEnum


class BatchStatus(StrEnum):
    """A batch's phase: `batches.status`, its events and the `BatchStatus` search attribute."""

    QUEUED = "queued"
    VALIDATING = "validating"
    WAITING_FOR_SCHEDULED_MESSAGES = "waiting_for_scheduled_messages"
    DISPATCHING = "dispatching"
    IN_PROGRESS = "in_progress"
    IN_PROGRESS_CHUNKED = "in_progress_chunked"
    PAUSED = "paused"
    COMPLETED = "completed"
    COMPLETED_PARTIAL = "completed_partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A batch in one of these has ended: only a retry runs it again.
FINAL_BATCH_STATUSES = (
    BatchStatus.COMPLETED,
    BatchStatus.COMPLETED_PARTIAL,
    BatchStatus.FAILED,
    BatchStatus.CANCELLED,
)


class LedgerStatus(StrEnum):
    """A ledger row's status (`messages.status`); statuses only move forward."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    UNCERTAIN = "uncertain"
    EXPIRED = "expired"


class ConversationStatus(StrEnum):
    """A conversation's `state`: active until closed by a newer one or timed out."""

    ACTIVE = "active"
    CLOSED = "closed"
    TIMEOUT = "timeout"
