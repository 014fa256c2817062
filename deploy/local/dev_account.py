"""The development account of the local stack: one API key and one sender number."""

from typing import Any

from store import numbers
from store.accounts import create_account, create_api_key, grant_for_key
from store.db import create_pool, migrate

# Twilio's test "From" number that always succeeds.
DEV_SENDER = "+15005550006"


async def ensure_dev_account(dsn: str, known: dict[str, Any]) -> dict[str, Any]:
    """Reuse the key of the last run (`known`) while it works; otherwise make a new account."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        if known.get("api_key"):
            grant = await grant_for_key(pool, known["api_key"])
            if grant is not None:
                # Registered again only if gone: its webhook, rate and opening message, as
                # the developer set them, outlive a restart.
                if await numbers.get_number(pool, grant.account_id, known["agent_number"]) is None:
                    await numbers.add_number(
                        pool, grant.account_id, known["agent_number"], "sms", None
                    )
                return {"api_key": known["api_key"], "agent_number": known["agent_number"]}
        # The sender belongs to one account: when a lost or revoked key's account still holds
        # it, that account gets a new key rather than a new account without a sender.
        account_id = await numbers.owner_of_number(pool, DEV_SENDER, channel="sms")
        if account_id is None:
            account_id = await create_account(pool, "development")
            await numbers.add_number(pool, account_id, DEV_SENDER, "sms", None)
        key = await create_api_key(pool, account_id)
        return {"api_key": key.key, "agent_number": DEV_SENDER}
    finally:
        await pool.close()
