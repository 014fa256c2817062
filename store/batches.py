"""Batches: one per uploaded file, with the request that started it and its phase."""

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from store.db import after_key
from workflows.contracts import BatchNotFound
from workflows.statuses import FINAL_BATCH_STATUSES, BatchStatus

_BATCH_COLUMNS = (
    "id, account_id, workflow_id, name, agent_number, request, status, code, reason,"
    " rows_total, recipients, rejected, segments_total, messages_gsm7, messages_ucs2,"
    " created_at, updated_at, finished_at, webhook_disabled_at, campaign_id"
)
# The foreign key of `batches.campaign_id` (migration 130): a campaign deleted before its
# batch was recorded.
CAMPAIGN_KEY = "batches_campaign_id_fkey"


async def create_batch(
    pool: asyncpg.Pool,
    *,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    workflow_id: str,
    name: str | None,
    agent_number: str,
    request: dict[str, Any],
    request_hash: str,
    campaign_id: uuid.UUID | None = None,
) -> tuple[dict, bool]:
    """Insert the batch row; if the file already has one, return it and False."""
    row = await pool.fetchrow(
        "INSERT INTO batches (id, account_id, workflow_id, name, agent_number, request,"
        " request_hash, campaign_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        f" ON CONFLICT (id) DO NOTHING RETURNING {_BATCH_COLUMNS}, request_hash",
        batch_id,
        account_id,
        workflow_id,
        name,
        agent_number,
        request,
        request_hash,
        campaign_id,
    )
    if row is not None:
        return dict(row), True
    existing = await pool.fetchrow(
        f"SELECT {_BATCH_COLUMNS}, request_hash FROM batches WHERE id = $1 AND account_id = $2",
        batch_id,
        account_id,
    )
    return dict(existing), False


async def get_batch(pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID) -> dict | None:
    row = await pool.fetchrow(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = $1 AND account_id = $2",
        batch_id,
        account_id,
    )
    return dict(row) if row else None


async def batch_for_workflow(pool: asyncpg.Pool, batch_id: uuid.UUID) -> dict:
    """The batch row, unfiltered by account: for activities, which act for the workflow.
    Raises BatchNotFound, which fails the activity without retries, when there is none."""
    row = await pool.fetchrow(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = $1", batch_id)
    if row is None:
        raise BatchNotFound(str(batch_id))
    return dict(row)


async def running_batch_ids(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, but: uuid.UUID
) -> list[uuid.UUID]:
    """The account's batches not in a final status, but `but`, oldest first."""
    rows = await pool.fetch(
        "SELECT id FROM batches WHERE account_id = $1 AND id <> $2"
        " AND NOT (status = ANY($3::text[])) ORDER BY created_at, id",
        account_id,
        but,
        list(FINAL_BATCH_STATUSES),
    )
    return [row["id"] for row in rows]


async def disable_webhook(pool: asyncpg.Pool, batch_id: uuid.UUID) -> None:
    """The receiver answered `410 Gone`: post nothing more for this batch."""
    await pool.execute(
        "UPDATE batches SET webhook_disabled_at = coalesce(webhook_disabled_at, now())"
        " WHERE id = $1",
        batch_id,
    )


async def list_batches(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[dict]:
    """Up to `limit` of the account's batches, newest first by (created_at, id), after the
    key `after`."""
    keyset = after_key("created_at, id", after, 3, descending=True)
    rows = await pool.fetch(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE account_id = $1{keyset}"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        account_id,
        limit,
        *(after or ()),
    )
    return [dict(r) for r in rows]


async def restore_status(pool: asyncpg.Pool, batch: Mapping[str, Any]) -> None:
    """Put a batch that a retry set `queued` back as `batch` was (status, code, reason, end),
    when that retry's run did not start; unless a run has moved it on meanwhile."""
    await pool.execute(
        "UPDATE batches SET status = $2, code = $3, reason = $4, finished_at = $5,"
        " updated_at = now() WHERE id = $1 AND status = 'queued'",
        batch["id"],
        batch["status"],
        batch["code"],
        batch["reason"],
        batch["finished_at"],
    )


async def set_status(
    pool: asyncpg.Pool,
    batch_id: uuid.UUID,
    *,
    status: BatchStatus,
    code: str | None = None,
    reason: str | None = None,
) -> None:
    await pool.execute(
        "UPDATE batches SET status = $2, code = $3, reason = $4,"
        " updated_at = now(),"
        " finished_at = CASE WHEN $2 = ANY($5::text[]) THEN now() END"
        " WHERE id = $1",
        batch_id,
        status,
        code,
        reason,
        list(FINAL_BATCH_STATUSES),
    )


async def set_unstarted(
    pool: asyncpg.Pool, batch_id: uuid.UUID, *, unstarted: bool, code: str, reason: str | None
) -> None:
    """Mark a batch whose workflow could not start `failed` with `code` (`unstarted`), only
    while it is still `queued`: a workflow that did start after all has moved it on. Or put
    such a batch back to `queued` (not `unstarted`), for a new attempt to start it."""
    if unstarted:
        await pool.execute(
            "UPDATE batches SET status = 'failed', code = $2, reason = $3, updated_at = now(),"
            " finished_at = now() WHERE id = $1 AND status = 'queued'",
            batch_id,
            code,
            reason,
        )
    else:
        await pool.execute(
            "UPDATE batches SET status = 'queued', code = NULL, reason = NULL,"
            " updated_at = now(), finished_at = NULL"
            " WHERE id = $1 AND status = 'failed' AND code = $2",
            batch_id,
            code,
        )


async def set_validation_counts(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    *,
    rows_total: int,
    recipients: int,
    rejected: int,
    segments_total: int,
    messages_gsm7: int,
    messages_ucs2: int,
) -> None:
    """`rejected` counts rows only; segments and encodings count the messages to be sent."""
    await conn.execute(
        "UPDATE batches SET rows_total = $2, recipients = $3, rejected = $4,"
        " segments_total = $5, messages_gsm7 = $6, messages_ucs2 = $7, updated_at = now()"
        " WHERE id = $1",
        batch_id,
        rows_total,
        recipients,
        rejected,
        segments_total,
        messages_gsm7,
        messages_ucs2,
    )
