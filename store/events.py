"""Batch lifecycle events (the `/logs` of a batch) and their webhook delivery attempts."""

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from store.db import rows_affected
from workflows.contracts import StatusUpdate

# A final event's counts, as `messages_<name>`.
FINAL_EVENT_FIELDS = (
    "total",
    "successful",
    "failed",
    "skipped",
    "cancelled",
    "uncertain",
    "expired",
)


def event_payload(
    batch: Mapping[str, Any], update: StatusUpdate, *, waiting_for_window: int | None
) -> dict[str, Any]:
    """What event `update` of `batch` (its row) says, to the log and the status webhook;
    `waiting_for_window`, the rows waiting for their send window, for a batch with one."""
    payload: dict[str, Any] = {
        "batch_id": update.batch_id,
        "workflow_id": update.workflow_id,
        "status": update.status,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    if update.message:
        payload["message"] = update.message
    metadata = (batch["request"].get("global") or {}).get("metadata")
    if metadata:
        payload["metadata"] = metadata
    if update.code:
        payload["code"] = update.code
        payload["reason"] = update.reason
    if update.error_codes is not None:
        payload["error_codes"] = update.error_codes
    if update.counts is not None:
        payload.update(
            {f"messages_{name}": getattr(update.counts, name) for name in FINAL_EVENT_FIELDS}
        )
    if waiting_for_window is not None:
        payload["messages_waiting_for_window"] = waiting_for_window
    return payload


async def append_event(
    pool: asyncpg.Pool | asyncpg.Connection,
    *,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    seq: int,
    run_id: str,
    status: str,
    payload: dict[str, Any],
    posted: bool,
) -> bool:
    """Insert event `seq` of workflow run `run_id`; the same run's seq again (a retried
    activity) is a no-op (False). Where another event holds `seq` (another run's: a reset run
    numbers its events from the reset point again; or one of this run's own that went last
    so), it goes after the batch's last event (an event recorded before runs were kept, its
    run unknown, is taken for this one). An event not `posted` is settled at once, as one with
    no webhook to go to."""
    status = await pool.execute(
        "INSERT INTO batch_events"
        " (batch_id, seq, account_id, status, payload, settled_at, run_id, run_seq)"
        " SELECT $1, CASE WHEN EXISTS (SELECT 1 FROM batch_events WHERE batch_id = $1"
        " AND seq = $2 AND run_id IS NOT NULL AND (run_id <> $7 OR run_seq <> $2))"
        " THEN (SELECT max(seq) + 1 FROM batch_events WHERE batch_id = $1)"
        " ELSE $2 END, $3, $4, $5, CASE WHEN $6 THEN NULL ELSE now() END, $7, $2"
        " WHERE NOT EXISTS (SELECT 1 FROM batch_events WHERE batch_id = $1 AND run_id = $7"
        " AND run_seq = $2)"
        " ON CONFLICT (batch_id, seq) DO NOTHING",
        batch_id,
        seq,
        account_id,
        status,
        payload,
        posted,
        run_id,
    )
    return rows_affected(status) == 1


async def pending_events(pool: asyncpg.Pool, batch_id: uuid.UUID) -> list[dict]:
    """The events not settled yet (neither delivered, given up on nor without a webhook)."""
    rows = await pool.fetch(
        "SELECT seq, account_id, payload, attempts, next_attempt_at FROM batch_events"
        " WHERE batch_id = $1 AND settled_at IS NULL ORDER BY seq",
        batch_id,
    )
    return [dict(r) for r in rows]


async def receiver_failing(pool: asyncpg.Pool, batch_id: uuid.UUID) -> bool:
    """Whether the batch's last settled event that was posted was given up on (never
    delivered). Events settled without a post (progress events, posted only when asked for;
    those with no webhook to go to) tell nothing of the receiver."""
    return bool(
        await pool.fetchval(
            "SELECT delivered_at IS NULL FROM batch_events"
            " WHERE batch_id = $1 AND settled_at IS NOT NULL AND attempts > 0"
            " ORDER BY seq DESC LIMIT 1",
            batch_id,
        )
    )


async def record_delivery(
    pool: asyncpg.Pool,
    *,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    event_seq: int,
    url: str,
    attempt: int,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    next_retry_at: datetime | None,
) -> None:
    """One attempt; the event is settled unless another attempt is due at `next_retry_at`."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO webhook_deliveries (batch_id, event_seq, account_id, url, attempt,"
            " status_code, error, duration_ms, next_retry_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            batch_id,
            event_seq,
            account_id,
            url,
            attempt,
            status_code,
            error,
            duration_ms,
            next_retry_at,
        )
        await conn.execute(
            "UPDATE batch_events SET attempts = $3, next_attempt_at = $5,"
            " delivered_at = CASE WHEN $4 THEN now() ELSE delivered_at END,"
            " settled_at = CASE WHEN $5::timestamptz IS NULL THEN now() END"
            " WHERE batch_id = $1 AND seq = $2",
            batch_id,
            event_seq,
            attempt,
            status_code is not None and 200 <= status_code < 300,
            next_retry_at,
        )


async def settle_unsent(pool: asyncpg.Pool, batch_id: uuid.UUID, event_seq: int) -> None:
    """An event with no webhook to go to (none given, or turned off by a 410) is settled."""
    await pool.execute(
        "UPDATE batch_events SET settled_at = now(), next_attempt_at = NULL"
        " WHERE batch_id = $1 AND seq = $2",
        batch_id,
        event_seq,
    )


async def list_events(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    after_seq: int = 0,
    limit: int | None = None,
) -> list[dict]:
    """The batch's events after `after_seq` in order, up to `limit` of them if given."""
    # `$3::bigint`: a cursor may hold any 64-bit integer, past the range of `seq` (int).
    rows = await pool.fetch(
        "SELECT seq, status, payload, created_at, delivered_at FROM batch_events"
        " WHERE batch_id = $1 AND account_id = $2 AND seq > $3::bigint ORDER BY seq LIMIT $4",
        batch_id,
        account_id,
        after_seq,
        limit,
    )
    return [dict(r) for r in rows]


async def stream_position(
    pool: asyncpg.Pool, batch_id: uuid.UUID
) -> tuple[str, tuple[int, str] | None]:
    """The batch's status now, and its newest event's seq and status (None: no event yet)."""
    row = await pool.fetchrow(
        "SELECT b.status, e.seq, e.status AS event_status FROM batches AS b"
        " LEFT JOIN LATERAL (SELECT seq, status FROM batch_events WHERE batch_id = b.id"
        " ORDER BY seq DESC LIMIT 1) AS e ON true WHERE b.id = $1",
        batch_id,
    )
    newest = None if row["seq"] is None else (row["seq"], row["event_status"])
    return row["status"], newest


async def last_event_seq(pool: asyncpg.Pool, batch_id: uuid.UUID) -> int:
    return await pool.fetchval(
        "SELECT coalesce(max(seq), 0) FROM batch_events WHERE batch_id = $1", batch_id
    )


async def list_deliveries(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID, *, limit: int, after_id: int
) -> list[dict]:
    """Up to `limit` of the batch's delivery attempts, oldest first, after the one `after_id`."""
    rows = await pool.fetch(
        "SELECT id, event_seq, attempt, url, attempted_at, status_code, error, duration_ms,"
        " next_retry_at FROM webhook_deliveries"
        " WHERE batch_id = $1 AND account_id = $2 AND id > $3 ORDER BY id LIMIT $4",
        batch_id,
        account_id,
        after_id,
        limit,
    )
    return [dict(r) for r in rows]
