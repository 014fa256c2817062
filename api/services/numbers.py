"""The account's sender numbers."""

import uuid

import asyncpg

from activities.recipients.phones import to_e164
from api.errors import HeraldError
from api.models import NumberRequest, NumberUpdate
from api.services.sender_ownership import require_carrier_owns
from api.services.webhook_urls import require_safe_webhook
from settings import Settings
from store import numbers


class InvalidPhoneNumber(HeraldError):
    code = "INVALID_PHONE_NUMBER"


class NumberNotFound(HeraldError):
    status_code = 404
    code = "NUMBER_NOT_FOUND"


class SenderTaken(HeraldError):
    status_code = 409
    code = "SENDER_TAKEN"


async def add_number(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: NumberRequest
) -> dict:
    number = to_e164(body.number, require_valid=False)
    if number is None:
        raise InvalidPhoneNumber(f"{body.number!r} is not a phone number")
    mps = body.mps if "mps" in body.model_fields_set else settings.default_sender_mps
    webhook = str(body.webhook) if body.webhook else None
    await require_safe_webhook(webhook, settings)
    await require_carrier_owns(number, body.channel, settings)
    row = await numbers.add_number(pool, account_id, number, body.channel, mps, webhook)
    if row is None:
        raise SenderTaken(f"{number} is registered by another account")
    return row


async def update_number(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, number: str, body: NumberUpdate
) -> dict:
    normalised = to_e164(number, require_valid=False) or number
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    await require_safe_webhook(changes.get("webhook"), settings)
    row = await numbers.update_number(pool, account_id, normalised, changes)
    if row is None:
        raise NumberNotFound(f"{number} is not a sender of this account")
    return row


async def list_numbers(pool: asyncpg.Pool, account_id: uuid.UUID) -> list[dict]:
    return await numbers.list_numbers(pool, account_id)


async def delete_number(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> str:
    """The number removed, normalised as the account's senders hold it."""
    normalised = to_e164(number, require_valid=False) or number
    if not await numbers.delete_number(pool, account_id, normalised):
        raise NumberNotFound(f"{number} is not a sender of this account")
    return normalised
