"""What long activities heartbeat, typed: one small dataclass per activity.

On the wire each is the bare number the activity has always sent, so an attempt reads the
details an attempt on an older worker left, and an older worker reads these. Only a slice's
heartbeat is read back (by its next attempt); the others show progress in the UI.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from temporalio import activity


@dataclass(frozen=True, kw_only=True)
class SliceHeartbeat:
    """send_slice: attempts in a row that the carrier deferred whole, for the next attempt's
    backoff."""

    stalls: int = 0

    def send(self) -> None:
        activity.heartbeat(self.stalls)

    @classmethod
    def from_details(cls, details: Sequence[Any]) -> Self:
        """What an attempt left in its final heartbeat; nothing (first attempt, or one that
        crashed) reads as no stall."""
        stalls = details[0] if details and isinstance(details[0], int) else 0
        return cls(stalls=stalls)

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
