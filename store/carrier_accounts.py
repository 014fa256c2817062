"""An account's own carrier credentials (a Twilio subaccount), used instead of the service's."""

import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, kw_only=True)
class CarrierCredentials:
    account_sid: str
    auth_token: str


async def set_carrier_account(
    pool: asyncpg.Pool, account_id: uuid.UUID, credentials: CarrierCredentials
) -> None:
    await pool.execute(
        """INSERT INTO carrier_accounts (account_id, account_sid, auth_token)
           VALUES ($1, $2, $3)
           ON CONFLICT (account_id) DO UPDATE
           SET account_sid = EXCLUDED.account_sid, auth_token = EXCLUDED.auth_token,
               updated_at = now()""",
        account_id,
        credentials.account_sid,
        credentials.auth_token,
    )


async def carrier_account(pool: asyncpg.Pool, account_id: uuid.UUID) -> CarrierCredentials | None:
    row = await pool.fetchrow(
        "SELECT account_sid, auth_token FROM carrier_accounts WHERE account_id = $1", account_id
    )
    if row is None:
        return None
    return CarrierCredentials(account_sid=row["account_sid"], auth_token=row["auth_token"])


async def carrier_credentials(pool: asyncpg.Pool, account_id: uuid.UUID) -> tuple[str, str] | None:
    """The account's own (account SID, auth token), as the carrier client takes them; None
    when it sends with the service's."""
    own = await carrier_account(pool, account_id)
    return (own.account_sid, own.auth_token) if own else None


async def delete_carrier_account(pool: asyncpg.Pool, account_id: uuid.UUID) -> bool:
    status = await pool.execute("DELETE FROM carrier_accounts WHERE account_id = $1", account_id)
    return bool(status != "DELETE 0")


async def tokens_for_sid(pool: asyncpg.Pool, account_sid: str) -> list[tuple[uuid.UUID, str]]:
    """(account, auth token) of every account that set this subaccount SID."""
    rows = await pool.fetch(
        "SELECT account_id, auth_token FROM carrier_accounts WHERE account_sid = $1", account_sid
    )
    return [(row["account_id"], row["auth_token"]) for row in rows]
