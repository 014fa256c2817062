"""Every API process prunes what Herald keeps only for a while (store.housekeeping): at its
start, then about once an hour. Several processes pruning at once delete each row once."""

import asyncio

import asyncpg
import structlog

from store import housekeeping
from store.db import UNAVAILABLE

log = structlog.get_logger(__name__)

PRUNE_EVERY_SECONDS = 3600.0
# After a database failure.
RETRY_SECONDS = 60.0


async def keep_house(pool: asyncpg.Pool) -> None:
    """Prune until cancelled."""
    while True:
        try:
            pruned = await housekeeping.prune(pool)
        except (asyncpg.PostgresError, *UNAVAILABLE) as error:
            log.warning("housekeeping failed; retrying", error=repr(error))
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if pruned.receipts or pruned.idempotency_keys:
            log.info(
                "pruned",
                receipts=pruned.receipts,
                idempotency_keys=pruned.idempotency_keys,
            )
        await asyncio.sleep(PRUNE_EVERY_SECONDS)
