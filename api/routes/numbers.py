"""The account's sender numbers."""

from fastapi import APIRouter

from activities.recipients.phones import to_e164
from api.deps import AccountId, AppSettings, Pool
from api.models import Envelope, NumberRequest, NumberUpdate, SenderNumber
from api.services.numbers import InvalidPhoneNumber, NumberNotFound
from api.services.webhook_urls import require_safe_webhook
from store import numbers

router = APIRouter(tags=["numbers"])


@router.post("/v1/sms/numbers", status_code=201, response_model=Envelope[SenderNumber])
async def add_number(
    account_id: AccountId, pool: Pool, settings: AppSettings, body: NumberRequest
) -> dict:
    """Register a sending number (E.164) for this account, with its rate limit."""
    number = to_e164(body.number, require_valid=False)
    if number is None:
        raise InvalidPhoneNumber(f"{body.number!r} is not a phone number")
    mps = body.mps if "mps" in body.model_fields_set else settings.default_sender_mps
    webhook = str(body.webhook) if body.webhook else None
    await require_safe_webhook(webhook, settings)
    return {"data": await numbers.add_number(pool, account_id, number, body.channel, mps, webhook)}


@router.patch("/v1/sms/numbers/{number}", response_model=Envelope[SenderNumber])
async def update_number(
    account_id: AccountId, pool: Pool, settings: AppSettings, number: str, body: NumberUpdate
) -> dict:
    """Change a number's rate limit and/or webhook; sends already paced keep their times."""
    normalised = to_e164(number, require_valid=False) or number
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    await require_safe_webhook(changes.get("webhook"), settings)
    row = await numbers.update_number(pool, account_id, normalised, changes)
    if row is None:
        raise NumberNotFound(f"{number} is not a sender of this account")
    return {"data": row}


@router.get("/v1/sms/numbers", response_model=Envelope[list[SenderNumber]])
async def list_numbers(account_id: AccountId, pool: Pool) -> dict:
    return {"data": await numbers.list_numbers(pool, account_id)}


@router.delete("/v1/sms/numbers/{number}", response_model=Envelope[dict[str, str]])
async def delete_number(account_id: AccountId, pool: Pool, number: str) -> dict:
    """Unregister a number; batches already running keep sending from it."""
    normalised = to_e164(number, require_valid=False) or number
    if not await numbers.delete_number(pool, account_id, normalised):
        raise NumberNotFound(f"{number} is not a sender of this account")
    return {"data": {"deleted": normalised}}
