"""Delivery receipts: the carrier's status callbacks."""

import asyncpg

from store import receipts


async def record_receipt(
    pool: asyncpg.Pool, carrier_sid: str, status: str, error_code: str | None
) -> None:
    """Apply the receipt to its message, or keep it until the send is recorded."""
    await receipts.record_receipt(pool, carrier_sid, status, error_code)
