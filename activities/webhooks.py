"""Posting events to callers' webhooks, signed as Standard Webhooks specifies."""

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from activities.providers.twilio import retry_after_seconds
from store.accounts import WEBHOOK_SECRET_PREFIX


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    status_code: int | None
    error: str | None
    duration_ms: int
    # A 429's or 503's `Retry-After`, in seconds: the receiver's own word on when to come back.
    retry_after: float | None = None


# The answers whose `Retry-After` a retry waits for (RFC 9110: 503, and 429 of RFC 6585),
# at most this long: a receiver cannot hold its events for days.
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_SECONDS = 3600.0


def signature(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret, space-separated: during a
    rotation a receiver holding either secret can verify."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(
            hmac.new(
                base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX)),
                signed,
                hashlib.sha256,
            ).digest()
        ).decode()
        for secret in secrets
    )


async def post_event(
    http: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    webhook_id: str | None = None,
    secrets: Sequence[str] = (),
    within_seconds: float,
) -> DeliveryAttempt:
    """One POST, signed when given an id and secrets; any answer or failure is returned,
    never raised, so a bad receiver cannot fail the batch. Done with once its status line is
    read, or after `within_seconds` in all (the client's timeouts are per step: a receiver
    dribbling its answer would hold the post, and a large or compressed answer, read whole,
    the worker's memory)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    if webhook_id is not None and secrets:
        # The attempt's time, not the event's: receivers reject stale timestamps (replays).
        timestamp = int(time.time())
        headers |= {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secrets, webhook_id, timestamp, body),
        }
    started = time.monotonic()
    status: int | None = None
    retry_after: float | None = None
    try:
        async with (
            asyncio.timeout(within_seconds),
            http.stream("POST", url, content=body, headers=headers) as response,
        ):
            status = response.status_code
            if status in RETRY_AFTER_STATUSES:
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
    except TimeoutError:
        # Late while the answer, read, was being closed: answered all the same.
        if status is None:
            elapsed = int((time.monotonic() - started) * 1000)
            late = f"TimeoutError: no answer within {within_seconds:g} s"
            return DeliveryAttempt(None, late, elapsed)
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as error:
        # UnicodeError: a host no request can be made to (an IDNA 2008 refusal, raised as the
        # request is built), stored before the URL check refused such names.
        elapsed = int((time.monotonic() - started) * 1000)
        return DeliveryAttempt(None, f"{type(error).__name__}: {error}"[:500], elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    failure = None if 200 <= status < 300 else f"HTTP {status}"
    return DeliveryAttempt(status, failure, elapsed, retry_after)


def retry_delay(
    attempt: DeliveryAttempt, number: int, *, schedule: Sequence[float], jitter: float
) -> float | None:
    """Seconds until attempt `number + 1` of an event, on the webhook retry `schedule`, or
    later if the receiver's `Retry-After` says so (up to MAX_RETRY_AFTER_SECONDS); None when
    it is settled: delivered, gone (410), or out of retries."""
    if attempt.error is None or attempt.status_code == 410 or number > len(schedule):
        return None
    delay = _jittered(schedule[number - 1], jitter)
    if attempt.retry_after is not None:
        delay = max(delay, min(attempt.retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def posts_by(elapsed: float, schedule: Sequence[float]) -> int:
    """How many posts the retry `schedule` (before jitter) makes of an event in the `elapsed`
    seconds since its first: that one, and one as each delay passes."""
    made, at = 1, 0.0
    for delay in schedule:
        at += delay
        if at > elapsed:
            break
        made += 1
    return made


def _jittered(delay: float, jitter: float) -> float:
    """`delay` spread by up to `jitter` of itself either way, so that receivers coming back
    from an outage are not hit by every batch's retries at the same instant."""
    return delay * random.uniform(1 - jitter, 1 + jitter)
