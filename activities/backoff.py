"""When a slice the carrier deferred is tried again: Retry-After, backoff and jitter."""

import random
from datetime import timedelta

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

# The first backoff window; it doubles with each attempt in a row that the carrier deferred
# whole, up to the maximum. An attempt that got anything through starts over from the first.
FIRST_WINDOW_SECONDS = 1.0
MAX_WINDOW_SECONDS = 30.0
# A Retry-After beyond this is taken as this: no carrier header holds a slice for hours.
MAX_RETRY_AFTER_SECONDS = 600.0

_rng = random.Random()


def retry_delay(stalls: int, retry_after: float | None, rng: random.Random = _rng) -> float:
    """Seconds until the next attempt: at least the carrier's Retry-After and half the backoff
    window, plus a random part of the other half.

    Temporal's retry policy has no jitter: slices deferred together by one burst of 429s would
    all come back at the same instant and meet the same limit again. The random part spreads
    them over the window.
    """
    window = min(MAX_WINDOW_SECONDS, FIRST_WINDOW_SECONDS * 2**stalls)
    floor = max(min(retry_after or 0.0, MAX_RETRY_AFTER_SECONDS), window / 2)
    return floor + rng.uniform(0, window / 2)


def carrier_deferred(message: str, delay: float | None) -> ApplicationError:
    """The failure that has Temporal try a deferred send again after `delay` seconds (its
    own schedule when None): benign, for the carrier's throttling is expected, and Temporal
    logs any other failed attempt as a warning with its traceback, one per slice in a
    throttling storm."""
    return ApplicationError(
        message,
        type="CarrierDeferred",
        next_retry_delay=None if delay is None else timedelta(seconds=delay),
        category=ApplicationErrorCategory.BENIGN,
    )
