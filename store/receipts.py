"""Delivery receipts from the carrier: they move a message forward by rank, never back."""

import asyncpg

# The statuses a receipt can end a message in. `sent` and the carrier's in-between statuses
# (queued, sending, ...) rank no higher than a recorded message: they cost no query.
FINAL_RECEIPTS = ("delivered", "undelivered", "failed")


async def record_receipt(
    pool: asyncpg.Pool, carrier_sid: str, status: str, error_code: str | None
) -> None:
    """Apply a receipt to its message, if it moves it forward.

    A final receipt is first kept, in its own statement, so that whichever of it and the
    send's outcome is written second sees the other (see messages.record_outcomes).
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
        "UPDATE messages SET status = $2, error_code = $3, updated_at = now()"
        " WHERE carrier_sid = $1 AND receipt_rank(status) < receipt_rank($2)",
        carrier_sid,
        status,
        error_code,
    )
