"""The message ledger: one row per recipient; statuses only move forward."""

import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from workflows.statuses import LedgerStatus

RECIPIENT_COLUMNS = (
    "batch_id",
    "seq",
    "account_id",
    "row_number",
    "to_number",
    "body",
    "status",
    "error_code",
    "encoding",
    "segments",
)
REJECTED_COLUMNS = ("batch_id", "row_number", "account_id", "code", "reason", "value")


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    seq: int
    to_number: str
    body: str


@dataclass(frozen=True, slots=True)
class Outcome:
    seq: int
    status: LedgerStatus
    carrier_sid: str | None = None
    error_code: str | None = None
    error_message: str | None = None


async def clear_validation(conn: asyncpg.Connection, batch_id: uuid.UUID) -> None:
    """Drop what an interrupted validation attempt wrote, so a retry starts clean."""
    await conn.execute("DELETE FROM messages WHERE batch_id = $1", batch_id)
    await conn.execute("DELETE FROM rejected_rows WHERE batch_id = $1", batch_id)


async def clear_ledger(conn: asyncpg.Connection, batch_id: uuid.UUID) -> None:
    """Drop the ledger of a batch that will send nothing; its rejected rows stay."""
    await conn.execute("DELETE FROM messages WHERE batch_id = $1", batch_id)


async def copy_recipients(conn: asyncpg.Connection, records: Iterable[tuple]) -> None:
    await conn.copy_records_to_table("messages", records=records, columns=RECIPIENT_COLUMNS)


async def copy_recipients_csv(conn: asyncpg.Connection, data: bytes) -> None:
    """COPY ledger rows given as CSV, `RECIPIENT_COLUMNS` in order (an unquoted empty
    field is NULL)."""
    await conn.copy_to_table(
        "messages", source=io.BytesIO(data), columns=RECIPIENT_COLUMNS, format="csv"
    )


async def refresh_statistics(pool: asyncpg.Pool) -> None:
    """Re-sample the ledger's statistics after a bulk COPY. Until autovacuum gets to it, the
    planner may think the new rows are not there, and join a slice's outcomes against a
    scan of the whole table instead of the primary key: seconds per slice instead of ms."""
    await pool.execute("ANALYZE messages")


async def copy_rejected(conn: asyncpg.Connection, records: Iterable[tuple]) -> None:
    await conn.copy_records_to_table("rejected_rows", records=records, columns=REJECTED_COLUMNS)


async def claim_slice(
    pool: asyncpg.Pool, batch_id: uuid.UUID, start: int, end: int
) -> list[ClaimedMessage]:
    """The slice's pending rows, for its sender to move to `sending` (mark_sending) in waves
    just before they go on the wire.

    A slice is sent by one activity at a time, so a row already `sending` here was marked by
    an attempt that died: the carrier may have accepted it, and Twilio takes no idempotency
    key, so it becomes `uncertain` instead of being sent again.

    A number that opted out since the batch was validated is skipped (`opted_out`), unless
    the batch was started with `exclude_opt_outs: false`.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE messages SET status = 'uncertain', updated_at = now()"
            " WHERE batch_id = $1 AND seq >= $2 AND seq < $3 AND status = 'sending'",
            batch_id,
            start,
            end,
        )
        await conn.execute(
            "UPDATE messages AS m SET status = 'skipped', error_code = 'opted_out',"
            " updated_at = now() FROM batches AS b"
            " WHERE m.batch_id = $1 AND m.seq >= $2 AND m.seq < $3 AND m.status = 'pending'"
            " AND b.id = m.batch_id"
            " AND coalesce((b.request ->> 'exclude_opt_outs')::boolean, true)"
            " AND EXISTS (SELECT 1 FROM opt_outs AS o"
            " WHERE o.account_id = m.account_id AND o.number = m.to_number)",
            batch_id,
            start,
            end,
        )
        rows = await conn.fetch(
            "SELECT seq, to_number, body FROM messages"
            " WHERE batch_id = $1 AND seq >= $2 AND seq < $3 AND status = 'pending'"
            " ORDER BY seq",
            batch_id,
            start,
            end,
        )
    return [ClaimedMessage(r["seq"], r["to_number"], r["body"]) for r in rows]


async def mark_sending(pool: asyncpg.Pool, batch_id: uuid.UUID, seqs: list[int]) -> set[int]:
    """Move these rows from `pending` to `sending`, counting an attempt; the seqs moved. A row
    no longer `pending` (another attempt's, or settled) is not moved, so it is sent by no one
    else."""
    rows = await pool.fetch(
        "UPDATE messages SET status = 'sending', attempts = attempts + 1, updated_at = now()"
        " WHERE batch_id = $1 AND seq = ANY($2::bigint[]) AND status = 'pending' RETURNING seq",
        batch_id,
        seqs,
    )
    return {r["seq"] for r in rows}


def storable(text: str | None) -> str | None:
    """`text` as PostgreSQL can store it: a carrier's words may hold NUL, which no text
    column takes, and one such message must not fail the statement of its whole slice."""
    return text.replace("\x00", "\ufffd") if text else text


async def record_outcomes(pool: asyncpg.Pool, batch_id: uuid.UUID, outcomes: list[Outcome]) -> None:
    """Write every outcome of a slice in one statement; only rows still `sending` move. Then
    apply the receipts that came before their sids were written.

    The two statements commit one after the other, and a receipt is kept before it is
    applied (receipts.record_receipt): whichever side writes second sees the first, so no
    receipt is lost to the race between them.
    """
    if not outcomes:
        return
    await pool.execute(
        "UPDATE messages AS m SET status = o.status, carrier_sid = o.sid,"
        " error_code = o.code, error_message = o.msg, updated_at = now(),"
        " sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END"
        " FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])"
        " AS o(seq, status, sid, code, msg)"
        " WHERE m.batch_id = $1 AND m.seq = o.seq AND m.status = 'sending'",
        batch_id,
        [o.seq for o in outcomes],
        [o.status for o in outcomes],
        [o.carrier_sid for o in outcomes],
        [o.error_code for o in outcomes],
        [storable(o.error_message) for o in outcomes],
    )
    sids = [o.carrier_sid for o in outcomes if o.carrier_sid]
    if sids:
        await pool.execute(
            "UPDATE messages AS m SET status = r.status, error_code = r.error_code,"
            " updated_at = now() FROM carrier_receipts AS r"
            " WHERE r.carrier_sid = ANY($2::text[]) AND m.carrier_sid = r.carrier_sid"
            " AND m.batch_id = $1 AND receipt_rank(m.status) < receipt_rank(r.status)",
            batch_id,
            sids,
        )


async def close_ledger(
    pool: asyncpg.Pool, batch_id: uuid.UUID, *, pending_as: LedgerStatus | None
) -> None:
    """Give every row a terminal state as the batch ends: a row still `sending` belongs to no
    live attempt (`uncertain`); `pending` rows of a cancelled or expired batch become
    `pending_as`."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE messages SET status = 'uncertain', updated_at = now()"
            " WHERE batch_id = $1 AND status = 'sending'",
            batch_id,
        )
        if pending_as is not None:
            await conn.execute(
                "UPDATE messages SET status = $2, updated_at = now()"
                " WHERE batch_id = $1 AND status = 'pending'",
                batch_id,
                pending_as,
            )


async def reopen(pool: asyncpg.Pool, batch_id: uuid.UUID, statuses: list[LedgerStatus]) -> int:
    """Put rows in `statuses` back to `pending` for another attempt; how many were."""
    result = await pool.execute(
        "UPDATE messages SET status = 'pending', updated_at = now()"
        " WHERE batch_id = $1 AND status = ANY($2::text[])",
        batch_id,
        statuses,
    )
    return int(result.split()[-1])


async def count_in_statuses(pool: asyncpg.Pool, batch_id: uuid.UUID, statuses: list[str]) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM messages WHERE batch_id = $1 AND status = ANY($2::text[])",
        batch_id,
        statuses,
    )


async def count_by_status(pool: asyncpg.Pool, batch_id: uuid.UUID) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM messages WHERE batch_id = $1 GROUP BY status",
        batch_id,
    )
    return {r["status"]: r["n"] for r in rows}


async def list_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    after_seq: int,
) -> list[dict]:
    rows = await pool.fetch(
        "SELECT m.seq, m.row_number, m.to_number, m.body, m.encoding, m.segments, m.status,"
        " m.carrier_sid, m.error_code, m.error_message, m.attempts, m.created_at, m.sent_at,"
        " m.updated_at, r.reference FROM messages m"
        " LEFT JOIN message_references r"
        " ON r.batch_id = m.batch_id AND r.row_number = m.row_number"
        " WHERE m.batch_id = $1 AND m.account_id = $2 AND m.seq > $3"
        " AND ($4::text IS NULL OR m.status = $4) ORDER BY m.seq LIMIT $5",
        batch_id,
        account_id,
        after_seq,
        status,
        limit,
    )
    return [dict(r) for r in rows]


async def add_references(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    references: Iterable[tuple[int, str]],
) -> None:
    """The caller's references of a new batch's rows, as (row_number, reference)."""
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "message_references",
            records=[(batch_id, number, account_id, ref) for number, ref in references],
            columns=("batch_id", "row_number", "account_id", "reference"),
        )


async def ledger_footprint(pool: asyncpg.Pool) -> tuple[int, int]:
    """Rows in the whole ledger and its size on disk (table, indexes and TOAST), in bytes."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, pg_total_relation_size('messages') AS size FROM messages"
    )
    return row["n"], row["size"]


async def list_rejected(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    limit: int,
    after_row: int,
) -> list[dict]:
    rows = await pool.fetch(
        "SELECT row_number, value, code, reason FROM rejected_rows"
        " WHERE batch_id = $1 AND account_id = $2 AND row_number > $3"
        " ORDER BY row_number LIMIT $4",
        batch_id,
        account_id,
        after_row,
        limit,
    )
    return [dict(r) for r in rows]
