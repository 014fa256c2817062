"""The account's sender numbers."""

import uuid
from datetime import datetime

import asyncpg

from activities.recipients.phones import is_sender_id, to_sender
from api import pagination
from api.errors import HeraldError
from api.models import NumberRequest, NumberUpdate, SenderNumberList
from api.services.sender_ownership import require_carrier_owns
from api.services.webhook_urls import require_safe_webhook
from settings import Settings
from store import carrier_accounts, numbers
from workflows.statuses import FINAL_BATCH_STATUSES


class InvalidPhoneNumber(HeraldError):
    code = "INVALID_PHONE_NUMBER"


class InvalidSenderId(HeraldError):
    code = "INVALID_SENDER_ID"


class NumberNotFound(HeraldError):
    status_code = 404
    code = "NUMBER_NOT_FOUND"


class SenderInUse(HeraldError):
    status_code = 409
    code = "SENDER_IN_USE"


class SenderTaken(HeraldError):
    status_code = 409
    code = "SENDER_TAKEN"


async def add_number(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: NumberRequest
) -> dict:
    number = to_sender(body.number)
    if number is None:
        raise InvalidPhoneNumber(
            f"{body.number!r} is neither a phone number nor a sender ID"
            " (1 to 11 letters, digits or spaces, at least one letter)"
        )
    mps = body.mps if "mps" in body.model_fields_set else settings.default_sender_mps
    webhook = str(body.webhook) if body.webhook else None
    kind = "sender_id" if is_sender_id(number) else "number"
    if kind == "sender_id":
        _require_sms_only(number, body.channel, webhook)
    else:
        await require_safe_webhook(webhook, settings)
        # The carrier lists the numbers it owns; a sender ID is the carrier account's setting.
        credentials = await carrier_accounts.carrier_credentials(pool, account_id)
        await require_carrier_owns(number, body.channel, settings, credentials)
    row = await numbers.add_number(
        pool, account_id, number, body.channel, mps, webhook, kind, body.opening_message
    )
    if row is None:
        holder = await numbers.sender_id_holder(pool, number) if kind == "sender_id" else None
        if holder is not None and holder[0] == account_id:
            raise SenderTaken(
                f"this account holds {number!r} as {holder[1]!r}: sender IDs are one sender"
                " whatever their case (PATCH or DELETE it as registered)"
            )
        raise SenderTaken(
            f"{number} is registered by another account"
            + (" (sender IDs are one sender whatever their case)" if kind == "sender_id" else "")
        )
    return row


def _require_sms_only(sender_id: str, channel: str, webhook: str | None) -> None:
    """A sender ID only sends SMS: WhatsApp needs a number, and no one can reply to an ID, so
    it has no conversations to post to a webhook."""
    if channel != "sms":
        raise InvalidSenderId(f"sender ID {sender_id!r} can only send SMS, not {channel}")
    if webhook is not None:
        raise InvalidSenderId(f"sender ID {sender_id!r} receives no replies: it takes no webhook")


async def update_number(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, number: str, body: NumberUpdate
) -> dict:
    normalised = to_sender(number) or number
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    if is_sender_id(normalised):
        _require_sms_only(normalised, "sms", changes.get("webhook"))
    await require_safe_webhook(changes.get("webhook"), settings)
    row = await numbers.update_number(pool, account_id, normalised, changes)
    if row is None:
        raise NumberNotFound(f"{number} is not a sender of this account")
    return row


async def list_numbers(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, cursor: str | None
) -> SenderNumberList:
    """A page of the account's senders, oldest first."""
    after = pagination.decode(cursor, (datetime, str), of="numbers")
    rows = await numbers.list_numbers(pool, account_id, limit=limit + 1, after=after)
    kept, next_cursor = pagination.page(
        rows, limit, lambda r: (r["created_at"], r["number"]), of="numbers"
    )
    return SenderNumberList(numbers=kept, next_cursor=next_cursor)


async def delete_number(pool: asyncpg.Pool, account_id: uuid.UUID, number: str) -> str:
    """The number removed, normalised as the account's senders hold it."""
    normalised = to_sender(number) or number
    removal = await numbers.delete_number(
        pool, account_id, normalised, final=list(FINAL_BATCH_STATUSES)
    )
    if removal.busy:
        raise SenderInUse(
            f"{normalised} sends for batches that have not ended: "
            f"{', '.join(str(b) for b in removal.busy)}; cancel them or wait for them to end"
        )
    if not removal.found:
        raise NumberNotFound(f"{number} is not a sender of this account")
    return normalised
