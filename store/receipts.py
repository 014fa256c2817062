"""Delivery receipts from the carrier: they move a message forward by rank, never back."""

import asyncpg

# The statuses a receipt can end a message in. `sent` and the carrier's in-between statuses
# (queued, sending, ...) rank no higher than a recorded message: they cost no query.
FINAL_RECEIPTS = ("delivered", "undelivered", "failed")


async def record_receipt(
    pool: asyncpg.Pool, carrier_sid: str, status: str, error_code: str | None
) -> None:
    """Keep a message's first final receipt and apply it, if it moves the message forward.

    A final receipt is first kept, in its own statement, so that whichever of it and the
    send's outcome is written second sees the other (see messages.record_outcomes). Only the
    kept receipt is ever applied: a repeated, replayed or later receipt of the same message
    changes nothing, and applying the kept one again only finishes a post that failed between
    the two statements.
    """
    if status not in FINAL_RECEIPTS:
        return
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status, error_code) VALUES ($1, $2, $3)"
        " ON CONFLICT (carrier_sid) DO NOTHING",
        carrier_sid,
        status,
        error_code,
    )
    await pool.execute(
        "UPDATE messages AS m SET status = r.status, error_code = r.error_code,"
        " updated_at = now() FROM carrier_receipts AS r"
        " WHERE r.carrier_sid = $1 AND m.carrier_sid = r.carrier_sid"
        " AND receipt_rank(m.status) < receipt_rank(r.status)",
        carrier_sid,
    )
    await apply_conversation_receipt(pool, carrier_sid)


async def apply_conversation_receipt(pool: asyncpg.Pool, carrier_sid: str) -> None:
    """Move the conversation message sent as `carrier_sid` to its kept final receipt."""
    await pool.execute(
        "UPDATE conversation_messages AS m SET status = r.status, error_code = r.error_code,"
        " updated_at = now() FROM carrier_receipts AS r"
        " WHERE r.carrier_sid = $1 AND m.carrier_sid = r.carrier_sid AND m.sender = 'AGENT'"
        " AND receipt_rank(m.status) < receipt_rank(r.status)",
        carrier_sid,
    )
