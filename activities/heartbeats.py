"""What long activities heartbeat, typed: one small dataclass per activity.

On the wire each is the bare number the activity has always sent, so an attempt reads the
details an attempt on an older worker left, and an older worker reads these. A slice's and a
conversation event's heartbeats are read back (by their next attempt); the others show
progress in the UI.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from temporalio import activity

# Often enough that a cancellation (delivered in a heartbeat's reply, which the worker lets
# through at least once a second: `max_heartbeat_throttle_interval` in worker.py) is seen
# within a second or so.
HEARTBEAT_SECONDS = 0.5


async def heartbeat_until_cancelled(beat: Callable[[], None] = activity.heartbeat) -> None:
    """Heartbeat every HEARTBEAT_SECONDS until this task is cancelled, by `beat` (without
    details unless it sends some): an activity runs it beside work that may not heartbeat
    for a while, so that a cancellation reaches it at once. The first one after
    HEARTBEAT_SECONDS, not at the start: one asked for just after the activity started has
    nothing to carry (the SDK sends the first at once and the next a throttle interval
    later, so this is one round trip fewer, each a write of the Temporal server's, for half
    the slices)."""
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        beat()


@dataclass(frozen=True, kw_only=True)
class SliceHeartbeat:
    """send_slice: attempts in a row that the carrier deferred whole, for the next attempt's
    backoff, and when the first of them started (Unix time; 0 when unknown), for the retry
    window; and what the attempts the carrier deferred sent and failed (the failed by error
    code), for the attempt that ends the slice to count with its own: each attempt sends only
    the rows the ones before left. On the wire: the stalls, then the time, then the sent, the
    failed and the errors (details that older workers neither send nor read)."""

    stalls: int = 0
    deferred_since: float = 0.0
    sent: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def send(self) -> None:
        activity.heartbeat(self.stalls, self.deferred_since, self.sent, self.failed, self.errors)

    @classmethod
    def from_details(cls, details: Sequence[Any]) -> Self:
        """What an attempt left in its final heartbeat; nothing (first attempt, or one that
        crashed) reads as no stall and nothing sent."""
        stalls = details[0] if details and isinstance(details[0], int) else 0
        since = details[1] if len(details) > 1 and isinstance(details[1], int | float) else 0.0
        sent, failed = (
            (details[2], details[3])
            if len(details) > 3 and isinstance(details[2], int) and isinstance(details[3], int)
            else (0, 0)
        )
        errors = details[4] if len(details) > 4 and isinstance(details[4], dict) else {}
        return cls(
            stalls=stalls,
            deferred_since=float(since),
            sent=sent,
            failed=failed,
            errors={str(code): count for code, count in errors.items() if isinstance(count, int)},
        )

    @classmethod
    def last(cls) -> Self:
        return cls.from_details(activity.info().heartbeat_details)


@dataclass(frozen=True, kw_only=True)
class ValidationHeartbeat:
    """validate_recipients: rows of the file read so far."""

    rows: int

    def send(self) -> None:
        activity.heartbeat(self.rows)


@dataclass(frozen=True, kw_only=True)
class DeliveryHeartbeat:
    """deliver_status_events: the seq of the event being posted."""

    event_seq: int

    def send(self) -> None:
        activity.heartbeat(self.event_seq)


@dataclass(frozen=True, kw_only=True)
class EventPostHeartbeat:
    """post_conversation_event: the posts made so far, which place the next one on the webhook
    retry schedule (an attempt that failed before posting, on the database, is none)."""

    posts: int

    def send(self) -> None:
        activity.heartbeat(self.posts)

    @classmethod
    def last(cls) -> Self:
        details = activity.info().heartbeat_details
        return cls(posts=details[0] if details and isinstance(details[0], int) else 0)
