"""The account's sender numbers."""

from fastapi import APIRouter

from api.deps import AccountId, AppSettings, Pool
from api.errors import HeraldError
from api.models import Envelope, ErrorEnvelope, NumberRequest, NumberUpdate, SenderNumber
from api.services.sender_ownership import require_carrier_owns
from api.services.webhook_urls import require_safe_webhook
from phones import to_e164
from store import numbers

router = APIRouter(tags=["numbers"])


class InvalidPhoneNumber(HeraldError):
    code = "INVALID_PHONE_NUMBER"


class NumberNotFound(HeraldError):
    status_code = 404
    code = "NUMBER_NOT_FOUND"


class SenderTaken(HeraldError):
    status_code = 409
    code = "SENDER_TAKEN"


@router.post(
    "/v1/sms/numbers",
    status_code=201,
    response_model=Envelope[SenderNumber],
    responses={409: {"model": ErrorEnvelope}, 503: {"model": ErrorEnvelope}},
)
async def add_number(
    account_id: AccountId, pool: Pool, settings: AppSettings, body: NumberRequest
) -> dict:
    """Register a sending number (E.164) for this account, with its rate limit; registering
    it again changes it. A number another account holds is refused until that one deletes it."""
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
    return {"data": row}


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
