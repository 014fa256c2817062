"""Rows Herald needs only for a while, deleted once they are done with (`prune`)."""

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from store.carrier_accounts import KEPT_RETIRED_TOKENS
from store.db import rows_affected

# A final receipt kept for a message whose sid was not written yet (or a conversation's):
# its sid is written within minutes (the send's outcome), or as its batch ends
# (reconciliation, up to `spread_hours`' 7 days after the send). Well past that, nothing
# can take it.
KEPT_RECEIPTS = timedelta(days=30)


# Unused files deleted by one statement: at most 40 MiB each.
FILES_PER_DELETE = 10


@dataclass(frozen=True)
class Pruned:
    receipts: int
    idempotency_keys: int
    retired_tokens: int
    unused_files: int


async def prune(pool: asyncpg.Pool, unused_files_after: timedelta) -> Pruned:
    """Delete the kept receipts older than KEPT_RECEIPTS, the carrier tokens retired longer
    ago than KEPT_RETIRED_TOKENS, the idempotency keys past their expiry (a request with
    an expired key claims it anew: the row only waits to be overwritten), and the files
    attached longer ago than `unused_files_after` that no batch was made from (each upload
    was kept for good). Each a read of its table, which holds no ledger rows (a file's
    content is stored apart from its row): about once an hour."""
    receipts = await pool.execute(
        "DELETE FROM carrier_receipts WHERE received_at < now() - $1::interval", KEPT_RECEIPTS
    )
    keys = await pool.execute("DELETE FROM idempotency_keys WHERE expires_at < now()")
    retired = await pool.execute(
        "DELETE FROM retired_carrier_accounts WHERE retired_at < now() - $1::interval",
        KEPT_RETIRED_TOKENS,
    )
    return Pruned(
        receipts=rows_affected(receipts),
        idempotency_keys=rows_affected(keys),
        retired_tokens=rows_affected(retired),
        unused_files=await _prune_unused_files(pool, unused_files_after),
    )


async def _prune_unused_files(pool: asyncpg.Pool, older_than: timedelta) -> int:
    """Delete the unused files, FILES_PER_DELETE at a time, each its own transaction: a
    file's delete reads and logs its whole content (up to 40 MiB), so all of them in one
    statement held their locks, and a replica's log, for as long as that took. A file
    another process is deleting, or a batch is being made from, is skipped (SKIP LOCKED)."""
    deleted = 0
    while True:
        done = await pool.execute(
            "DELETE FROM files WHERE id IN (SELECT f.id FROM files AS f"
            " WHERE f.created_at < now() - $1::interval"
            " AND NOT EXISTS (SELECT 1 FROM batches WHERE batches.id = f.id)"
            " LIMIT $2 FOR UPDATE SKIP LOCKED)",
            older_than,
            FILES_PER_DELETE,
        )
        deleted += (now := rows_affected(done))
        if now < FILES_PER_DELETE:
            return deleted
