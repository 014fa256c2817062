"""Posting a batch's status events to the caller's webhook."""

import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    status_code: int | None
    error: str | None
    duration_ms: int


async def post_event(http: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> DeliveryAttempt:
    """One POST; any answer or failure is returned, never raised, so a bad receiver
    cannot fail the batch."""
    started = time.monotonic()
    try:
        response = await http.post(url, json=payload)
    except httpx.HTTPError as error:
        elapsed = int((time.monotonic() - started) * 1000)
        return DeliveryAttempt(None, f"{type(error).__name__}: {error}"[:500], elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    error = None if response.is_success else f"HTTP {response.status_code}"
    return DeliveryAttempt(response.status_code, error, elapsed)
