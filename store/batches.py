"""Batches: one per uploaded file, with the request that started it and its phase."""

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from store.db import after_key, rows_affected
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
# A batch's reference to its file: a file deleted (unused for too long) as its batch is made.
FILE_KEY = "batches_id_fkey"
# The code of a batch `end_unstarted` ended: its workflow never started.
NOT_STARTED = "not_started"
# A batch with no event but those of its ends as unstarted: no workflow of it ever ran.
_NO_EVENT_BUT_UNSTARTED = (
    "NOT EXISTS (SELECT 1 FROM batch_events AS e WHERE e.batch_id = b.id"
    f" AND e.payload->>'code' IS DISTINCT FROM '{NOT_STARTED}')"
)


def batch_senders(agent_number: str, request: Mapping[str, Any]) -> set[str]:
    """Every sender a batch sends from: its own, its rows' (`senders`), its lists'."""
    return {
        agent_number,
        *(request.get("senders") or {}).values(),
        *(
            source["agent_number"]
            for source in request.get("lists") or []
            if "agent_number" in source
        ),
    }


def _holding_senders(account: str, senders: str) -> tuple[str, str]:
    """A statement's WITH clause that holds the account's rows of `senders` (FOR KEY SHARE:
    a sender's removal, `numbers.delete_number`, waits for the statement's transaction), and
    its condition that every one of them is still there. `account` and `senders` are the
    statement's parameters ($n)."""
    return (
        "WITH held AS (SELECT number FROM sender_numbers"
        f" WHERE account_id = {account} AND number = ANY({senders}::text[]) FOR KEY SHARE) ",
        f"(SELECT count(*) FROM held) = cardinality({senders}::text[])",
    )


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
) -> tuple[dict, bool] | None:
    """Insert the batch row; if the file already has one, return it and False. None, nothing
    inserted, when the account no longer holds one of the batch's senders (`batch_senders`):
    the statement holds them (FOR KEY SHARE) while it inserts, so a sender's removal
    (`numbers.delete_number`) either comes first or finds the batch."""
    senders = sorted(batch_senders(agent_number, request))
    holding, all_held = _holding_senders("$2", "$9")
    row = await pool.fetchrow(
        f"{holding} INSERT INTO batches (id, account_id, workflow_id, name, agent_number,"
        " request, request_hash, campaign_id) SELECT $1, $2, $3, $4, $5, $6, $7, $8"
        f" WHERE {all_held}"
        f" ON CONFLICT (id) DO NOTHING RETURNING {_BATCH_COLUMNS}, request_hash",
        batch_id,
        account_id,
        workflow_id,
        name,
        agent_number,
        request,
        request_hash,
        campaign_id,
        senders,
    )
    if row is not None:
        return dict(row), True
    existing = await pool.fetchrow(
        f"SELECT {_BATCH_COLUMNS}, request_hash FROM batches WHERE id = $1 AND account_id = $2",
        batch_id,
        account_id,
    )
    return (dict(existing), False) if existing is not None else None


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


async def restore_status(pool: asyncpg.Pool, batch: Mapping[str, Any], queued_at: datetime) -> None:
    """Put a batch that a retry set `queued` (at `queued_at`, `queue_for_retry`) back as
    `batch` was (status, code, reason, end), when that retry's run did not start; unless
    anything moved it on meanwhile (a run, or another retry that queued it again)."""
    await pool.execute(
        "UPDATE batches SET status = $2, code = $3, reason = $4, finished_at = $5,"
        " updated_at = now() WHERE id = $1 AND status = 'queued' AND updated_at = $6",
        batch["id"],
        batch["status"],
        batch["code"],
        batch["reason"],
        batch["finished_at"],
        queued_at,
    )


async def queue_for_retry(pool: asyncpg.Pool, batch: Mapping[str, Any]) -> datetime | None:
    """Set a batch `queued` for its retry's run, if it is still as `batch` read it (status
    and last change); when (for `restore_status`), or None when another request changed it
    meanwhile (a retry at the same time: one of them queues it, the other would put back
    the status it read, final, under the first one's run), or when the account no longer
    holds one of its senders: they are held as `create_batch` holds a new batch's, so a
    sender's removal either comes first or finds the batch queued."""
    senders = sorted(batch_senders(batch["agent_number"], batch["request"]))
    holding, all_held = _holding_senders("$4", "$5")
    queued_at: datetime | None = await pool.fetchval(
        f"{holding} UPDATE batches SET status = 'queued', code = NULL, reason = NULL,"
        " finished_at = NULL, updated_at = clock_timestamp()"
        f" WHERE id = $1 AND status = $2 AND updated_at = $3 AND {all_held}"
        " RETURNING updated_at",
        batch["id"],
        batch["status"],
        batch["updated_at"],
        batch["account_id"],
        senders,
    )
    return queued_at


async def set_status(
    pool: asyncpg.Pool | asyncpg.Connection,
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
    pool: asyncpg.Pool, batch_id: uuid.UUID, *, code: str, reason: str | None
) -> None:
    """Mark a batch whose workflow could not start `failed` with `code`, only while it is
    still `queued`: a workflow that did start after all has moved it on."""
    await pool.execute(
        "UPDATE batches SET status = 'failed', code = $2, reason = $3, updated_at = now(),"
        " finished_at = now() WHERE id = $1 AND status = 'queued'",
        batch_id,
        code,
        reason,
    )


async def requeue_unstarted(pool: asyncpg.Pool, batch: Mapping[str, Any], *, code: str) -> bool:
    """Put a batch that `set_unstarted` (or housekeeping) ended with `code` back to `queued`,
    for a new attempt to start it; False when it is no longer so (another attempt requeued it)
    or the account no longer holds one of its senders. They are held as `create_batch` holds
    a new batch's: a sender's removal either comes first or finds the batch queued."""
    senders = sorted(batch_senders(batch["agent_number"], batch["request"]))
    holding, all_held = _holding_senders("$3", "$4")
    status = await pool.execute(
        f"{holding} UPDATE batches SET status = 'queued', code = NULL, reason = NULL,"
        " updated_at = now(), finished_at = NULL"
        f" WHERE id = $1 AND status = 'failed' AND code = $2 AND {all_held}",
        batch["id"],
        code,
        batch["account_id"],
        senders,
    )
    return rows_affected(status) == 1


async def keep_queued(pool: asyncpg.Pool, batch_id: uuid.UUID) -> bool:
    """Note that a request is about to start a batch `queued` with no code (a repeat of the
    request whose API process stopped before the start), so that housekeeping, which may have
    found no workflow for it a moment ago, no longer ends it (`end_unstarted` wants it
    untouched for a while); False when it is no longer such a batch (housekeeping ended it,
    or a workflow moved it on)."""
    status = await pool.execute(
        "UPDATE batches SET updated_at = now()"
        " WHERE id = $1 AND status = 'queued' AND code IS NULL",
        batch_id,
    )
    return rows_affected(status) == 1


async def unstarted_batches(pool: asyncpg.Pool, older_than: timedelta) -> list[dict]:
    """Batches `queued` for longer than `older_than` whose workflow never recorded an event:
    left so by an API process that stopped between recording the batch and starting its
    workflow, if Temporal has no such workflow (for the caller to ask). A batch that has
    run, and a retry left `queued` alike, has its runs' events (`/retry` starts it again).
    One read of `batches`, by its housekeeping: about once an hour."""
    rows = await pool.fetch(
        "SELECT id, account_id, workflow_id, request FROM batches AS b"
        " WHERE status = 'queued' AND updated_at < now() - $1::interval"
        f" AND {_NO_EVENT_BUT_UNSTARTED} ORDER BY created_at",
        older_than,
    )
    return [dict(r) for r in rows]


async def end_unstarted(
    pool: asyncpg.Pool,
    batch_id: uuid.UUID,
    *,
    older_than: timedelta,
    code: str,
    reason: str,
    event: dict[str, Any],
) -> bool:
    """Mark an unstarted batch (`unstarted_batches`) `failed` with `code`, and record its
    final `event` in its log, settled (no workflow posts it); False, nothing changed, if it
    is no longer such a batch (another API process ended it, or a start moved it on).
    One statement: both or neither."""
    status = await pool.execute(
        "WITH ended AS (UPDATE batches AS b SET status = 'failed', code = $2, reason = $3,"
        " updated_at = now(), finished_at = now()"
        " WHERE id = $1 AND status = 'queued' AND updated_at < now() - $4::interval"
        f" AND {_NO_EVENT_BUT_UNSTARTED} RETURNING id, account_id)"
        " INSERT INTO batch_events (batch_id, seq, account_id, status, payload, settled_at)"
        " SELECT id, (SELECT coalesce(max(seq), 0) + 1 FROM batch_events WHERE batch_id = $1),"
        " account_id, 'failed', $5, now() FROM ended",
        batch_id,
        code,
        reason,
        older_than,
        event,
    )
    return rows_affected(status) == 1


async def set_validation_counts(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    *,
    rows_total: int,
    recipients: int,
    rejected: int,
    skipped: int,
    segments_total: int,
    messages_gsm7: int,
    messages_ucs2: int,
) -> None:
    """`rejected` counts rows only; segments and encodings count the messages to be sent."""
    await conn.execute(
        "UPDATE batches SET rows_total = $2, recipients = $3, rejected = $4,"
        " segments_total = $5, messages_gsm7 = $6, messages_ucs2 = $7, validated_skipped = $8,"
        " updated_at = now() WHERE id = $1",
        batch_id,
        rows_total,
        recipients,
        rejected,
        segments_total,
        messages_gsm7,
        messages_ucs2,
        skipped,
    )


async def validated_skipped(pool: asyncpg.Pool, batch_id: uuid.UUID) -> int | None:
    """The rows the batch's validation skipped; None if it was validated before they were
    kept (migration 380)."""
    skipped: int | None = await pool.fetchval(
        "SELECT validated_skipped FROM batches WHERE id = $1", batch_id
    )
    return skipped
