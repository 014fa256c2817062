"""An account's own carrier credentials (a Twilio subaccount), used instead of the service's."""

import uuid
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from store.db import rows_affected

# How long a token the account replaced or removed still verifies the carrier's webhooks of
# its subaccount: the messages its slices sent with it (a running slice keeps the
# credentials it started with) get their receipts, which can come hours after the send.
KEPT_RETIRED_TOKENS = timedelta(days=3)


@dataclass(frozen=True, kw_only=True)
class CarrierCredentials:
    account_sid: str
    auth_token: str


async def set_carrier_account(
    pool: asyncpg.Pool, account_id: uuid.UUID, credentials: CarrierCredentials
) -> None:
    """Set the account's own credentials; those they replace are retired (KEPT_RETIRED_TOKENS)."""
    await pool.execute(
        """WITH replaced AS (
               INSERT INTO retired_carrier_accounts (account_id, account_sid, auth_token)
               SELECT account_id, account_sid, auth_token FROM carrier_accounts
               WHERE account_id = $1 AND (account_sid, auth_token) <> ($2, $3)
           )
           INSERT INTO carrier_accounts (account_id, account_sid, auth_token)
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
    """Remove the account's own credentials (retired: KEPT_RETIRED_TOKENS); whether it had
    any."""
    status = await pool.execute(
        "WITH gone AS (DELETE FROM carrier_accounts WHERE account_id = $1"
        " RETURNING account_id, account_sid, auth_token)"
        " INSERT INTO retired_carrier_accounts (account_id, account_sid, auth_token)"
        " SELECT * FROM gone",
        account_id,
    )
    return rows_affected(status) > 0


async def tokens_for_sid(
    pool: asyncpg.Pool, account_sid: str, *, retired: bool
) -> list[tuple[uuid.UUID, str]]:
    """(account, auth token) of every account that set this subaccount SID; with `retired`,
    also of those that replaced or removed it within KEPT_RETIRED_TOKENS."""
    rows = await pool.fetch(
        "SELECT account_id, auth_token FROM carrier_accounts WHERE account_sid = $1"
        " UNION SELECT account_id, auth_token FROM retired_carrier_accounts"
        " WHERE $3 AND account_sid = $1 AND retired_at > now() - $2::interval",
        account_sid,
        KEPT_RETIRED_TOKENS,
        retired,
    )
    return [(row["account_id"], row["auth_token"]) for row in rows]
