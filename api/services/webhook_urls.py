"""Refusing, at request time, webhook URLs that Herald must not post to."""

from api.errors import HeraldError
from egress import UnsafeURL, checked_addresses
from settings import Settings


class InvalidWebhookURL(HeraldError):
    code = "INVALID_WEBHOOK_URL"


async def require_safe_webhook(url: str | None, settings: Settings) -> None:
    """400 `INVALID_WEBHOOK_URL` unless every address of `url` may be posted to. Delivery
    checks again (DNS can change); this check tells the caller now rather than never."""
    if url is None:
        return
    try:
        await checked_addresses(url, allow_loopback=settings.allow_loopback_webhooks)
    except UnsafeURL as error:
        raise InvalidWebhookURL(f"webhook URL refused: {error}") from None
