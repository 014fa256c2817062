"""The local stack's development account, as a restart of `make run` finds it again."""

import asyncpg

from deploy.local.dev_account import ensure_dev_account
from store import numbers
from store.accounts import create_account, create_api_key
from tests.support.builders import unique_numbers


async def test_a_restart_keeps_the_senders_settings_and_registers_it_again_only_if_gone(
    postgres_dsn: str, pool: asyncpg.Pool
) -> None:
    account_id = await create_account(pool, "development")
    key = await create_api_key(pool, account_id)
    sender = unique_numbers(1)[0]
    await numbers.add_number(
        pool, account_id, sender, "sms", 5.0, "https://example.com/replies", opening_message="Hi"
    )
    known = {"api_key": key.key, "agent_number": sender}

    again = await ensure_dev_account(postgres_dsn, known)
    kept = await numbers.get_number(pool, account_id, sender)
    await numbers.delete_number(pool, account_id, sender, final=[])
    await ensure_dev_account(postgres_dsn, known)
    registered = await numbers.get_number(pool, account_id, sender)

    assert again == known
    assert kept is not None
    assert (kept["mps"], kept["webhook"], kept["opening_message"]) == (
        5.0,
        "https://example.com/replies",
        "Hi",
    )
    assert registered is not None and registered["webhook"] is None
