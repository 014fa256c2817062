"""Delivery receipts from the carrier: they move a message forward by rank, never back.

A final receipt is first appended to `receipt_queue` (one INSERT for many receipts), then
applied in batches by `apply_queued`, which any number of API processes run at once. The
first final receipt of a message is the one kept (`carrier_receipts`) and the only one ever
applied: a repeated, replayed or later receipt of the same message changes nothing.
"""

from dataclasses import dataclass

import asyncpg

# The statuses a receipt can end a message in. `sent` and the carrier's in-between statuses
# (queued, sending, ...) rank no higher than a recorded message: they cost no query.
FINAL_RECEIPTS = ("delivered", "undelivered", "failed")


@dataclass(frozen=True, slots=True)
class Receipt:
    carrier_sid: str
    status: str
    error_code: str | None


def first_receipts(sids: str) -> str:
    """SQL: the first final receipt of each carrier sid in the text[] expression `sids`: the
    kept one, else the first still queued.

    A batch of the queue is moved to `carrier_receipts` in one transaction, so any statement
    sees each receipt in exactly one of the two tables: a send's outcome written while its
    receipt waits in the queue is moved by it all the same (see messages.record_outcomes).
    """
    return (
        "(SELECT carrier_sid, status, error_code FROM carrier_receipts"
        f" WHERE carrier_sid = ANY({sids})"
        " UNION ALL"
        " (SELECT DISTINCT ON (q.carrier_sid) q.carrier_sid, q.status, q.error_code"
        f" FROM receipt_queue AS q WHERE q.carrier_sid = ANY({sids}) AND NOT EXISTS"
        " (SELECT FROM carrier_receipts AS k WHERE k.carrier_sid = q.carrier_sid)"
        " ORDER BY q.carrier_sid, q.id))"
    )


async def queue_receipts(
    pool: asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    receipts: list[Receipt],
) -> None:
    """Append the final ones of `receipts` to the queue, in order, in one statement."""
    final = [r for r in receipts if r.status in FINAL_RECEIPTS]
    if not final:
        return
    await pool.execute(
        "INSERT INTO receipt_queue (carrier_sid, status, error_code)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
        [r.carrier_sid for r in final],
        [r.status for r in final],
        [r.error_code for r in final],
    )


async def apply_queued(pool: asyncpg.Pool, limit: int) -> list[int]:
    """Apply at most `limit` queued receipts, the oldest first; return the queue ids taken.

    Rows another process has claimed are skipped, so processes share the queue and apply
    each receipt once. The claim, the keeping and the moves commit together: a failure puts
    the receipts back in the queue, and applying them again changes nothing twice.
    """
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetch(
            "DELETE FROM receipt_queue WHERE id IN (SELECT id FROM receipt_queue"
            " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " RETURNING id, carrier_sid, status, error_code, received_at",
            limit,
        )
        if not claimed:
            return []
        first: dict[str, asyncpg.Record] = {}
        for row in sorted(claimed, key=lambda r: r["id"]):
            first.setdefault(row["carrier_sid"], row)
        sids = list(first)
        await conn.execute(
            "INSERT INTO carrier_receipts (carrier_sid, status, error_code, received_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
            " ON CONFLICT (carrier_sid) DO NOTHING",
            sids,
            [r["status"] for r in first.values()],
            [r["error_code"] for r in first.values()],
            [r["received_at"] for r in first.values()],
        )
        await conn.execute(
            "UPDATE messages AS m SET status = r.status, error_code = r.error_code,"
            " updated_at = now() FROM carrier_receipts AS r"
            " WHERE r.carrier_sid = ANY($1::text[]) AND m.carrier_sid = r.carrier_sid"
            " AND receipt_rank(m.status) < receipt_rank(r.status)",
            sids,
        )
        await _apply_to_conversations(conn, sids)
    return [r["id"] for r in claimed]


async def apply_conversation_receipt(pool: asyncpg.Pool, carrier_sid: str) -> None:
    """Move the conversation message sent as `carrier_sid` to its first final receipt."""
    async with pool.acquire() as conn:
        await _apply_to_conversations(conn, [carrier_sid])


async def _apply_to_conversations(conn: asyncpg.Connection, sids: list[str]) -> None:
    await conn.execute(
        "UPDATE conversation_messages AS m SET status = r.status, error_code = r.error_code,"
        f" updated_at = now() FROM {first_receipts('$1::text[]')} AS r"
        " WHERE m.carrier_sid = r.carrier_sid AND m.sender = 'AGENT'"
        " AND receipt_rank(m.status) < receipt_rank(r.status)",
        sids,
    )
