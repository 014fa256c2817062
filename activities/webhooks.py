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

from store.accounts import WEBHOOK_SECRET_PREFIX


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    status_code: int | None
    error: str | None
    duration_ms: int


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
    try:
        async with (
            asyncio.timeout(within_seconds),
            http.stream("POST", url, content=body, headers=headers) as response,
        ):
            status = response.status_code
    except TimeoutError:
        # Late while the answer, read, was being closed: answered all the same.
        if status is None:
            elapsed = int((time.monotonic() - started) * 1000)
            late = f"TimeoutError: no answer within {within_seconds:g} s"
            return DeliveryAttempt(None, late, elapsed)
    except httpx.HTTPError as error:
        elapsed = int((time.monotonic() - started) * 1000)
        return DeliveryAttempt(None, f"{type(error).__name__}: {error}"[:500], elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    failure = None if 200 <= status < 300 else f"HTTP {status}"
    return DeliveryAttempt(status, failure, elapsed)


def retry_delay(
    attempt: DeliveryAttempt, number: int, *, schedule: Sequence[float], jitter: float
) -> float | None:
    """Seconds until attempt `number + 1` of an event, on the webhook retry `schedule`; None
    when it is settled: delivered, gone (410), or out of retries."""
    if attempt.error is None or attempt.status_code == 410 or number > len(schedule):
        return None
    return _jittered(schedule[number - 1], jitter)


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
