"""What Herald keeps only for a while is pruned by every API process as it starts (then
hourly): receipts kept past KEPT_RECEIPTS and expired idempotency keys; nothing younger."""

import secrets
from datetime import timedelta

import asyncpg

from settings import Settings
from store import idempotency
from store.housekeeping import KEPT_RECEIPTS
from tests.support.sending import eventually
from tests.support.stack import Account, api_client


async def test_an_api_process_prunes_old_kept_receipts_and_expired_keys_as_it_starts(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    old, fresh = (f"SM{secrets.token_hex(16)}" for _ in range(2))
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status, received_at)"
        " VALUES ($1, 'delivered', now() - $3::interval), ($2, 'delivered', now())",
        old,
        fresh,
        KEPT_RECEIPTS + timedelta(hours=1),
    )
    expired, live = secrets.token_hex(8), secrets.token_hex(8)
    for key, ttl in ((expired, timedelta(seconds=-1)), (live, timedelta(hours=1))):
        assert await idempotency.claim(pool, account.account_id, key, "hash", ttl=ttl)

    async def left() -> tuple[set[str], set[str]]:
        receipts = await pool.fetch(
            "SELECT carrier_sid FROM carrier_receipts WHERE carrier_sid = ANY($1::text[])",
            [old, fresh],
        )
        keys = await pool.fetch(
            "SELECT key FROM idempotency_keys WHERE account_id = $1 AND key = ANY($2::text[])",
            account.account_id,
            [expired, live],
        )
        return {r["carrier_sid"] for r in receipts}, {r["key"] for r in keys}

    assert await left() == ({old, fresh}, {expired, live})
    async with api_client(settings):
        remaining = await eventually(left, lambda found: old not in found[0])

    assert remaining == ({fresh}, {live})
