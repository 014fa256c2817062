"""An account's own carrier credentials (a Twilio subaccount): set, read masked, removed."""

import uuid

import asyncpg

from api.errors import HeraldError
from api.models import CarrierAccountRequest
from store import carrier_accounts


class CarrierAccountNotSet(HeraldError):
    status_code = 404
    code = "CARRIER_ACCOUNT_NOT_SET"


def _masked(credentials: carrier_accounts.CarrierCredentials) -> dict[str, str]:
    token = credentials.auth_token
    return {"account_sid": credentials.account_sid, "auth_token": "*" * 8 + token[-4:]}


async def set_carrier_account(
    pool: asyncpg.Pool, account_id: uuid.UUID, body: CarrierAccountRequest
) -> dict[str, str]:
    credentials = carrier_accounts.CarrierCredentials(
        account_sid=body.account_sid, auth_token=body.auth_token.get_secret_value()
    )
    await carrier_accounts.set_carrier_account(pool, account_id, credentials)
    return _masked(credentials)


async def get_carrier_account(pool: asyncpg.Pool, account_id: uuid.UUID) -> dict[str, str]:
    credentials = await carrier_accounts.carrier_account(pool, account_id)
    if credentials is None:
        raise CarrierAccountNotSet("the account sends with the service's carrier credentials")
    return _masked(credentials)


async def delete_carrier_account(pool: asyncpg.Pool, account_id: uuid.UUID) -> None:
    if not await carrier_accounts.delete_carrier_account(pool, account_id):
        raise CarrierAccountNotSet("the account sends with the service's carrier credentials")


async def signing_tokens(
    pool: asyncpg.Pool, account_sid: str, *, retired: bool
) -> list[tuple[uuid.UUID, str]]:
    """(account, auth token) pairs a carrier webhook naming this subaccount SID may be
    signed with; with `retired`, those replaced or removed lately too."""
    return await carrier_accounts.tokens_for_sid(pool, account_sid, retired=retired)
