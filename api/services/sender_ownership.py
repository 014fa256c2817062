"""Whether the carrier account owns a sender number, asked before the number is registered."""

from api.errors import HeraldError
from settings import Settings


class SenderNotOwned(HeraldError):
    code = "SENDER_NOT_OWNED"


class CarrierUnavailable(HeraldError):
    status_code = 503
    code = "CARRIER_UNAVAILABLE"


async def require_carrier_owns(
    number: str,
    channel: str,
    settings: Settings,
    credentials: tuple[str, str] | None = None,
) -> None:
    """Refuse an SMS sender the carrier account does not own (Twilio's IncomingPhoneNumbers,
    filtered by the number). Registration is rare, so each check has a client of its own.

    `credentials`, the account's own subaccount (SID, token), are asked instead of the
    service's, always: an account that set them sends through them."""
    # WhatsApp senders are approved per business profile, not listed as incoming numbers.
    if channel != "sms" or (credentials is None and not settings.checks_sender_ownership):
        return
    # The twilio client (and aiohttp) load at the first check, not with the API (~25 MB).
    import aiohttp
    from twilio.base.exceptions import TwilioException
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    http = AsyncTwilioHttpClient(timeout=settings.carrier_timeout_seconds)
    client = Client(
        *(
            credentials
            or (settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value())
        ),
        http_client=http,
    )
    client.api.base_url = settings.carrier_url.rstrip("/")
    try:
        owned = await client.api.account.incoming_phone_numbers.list_async(
            phone_number=number, limit=20
        )
    except TwilioException as error:
        # A refused page (bad credentials, an outage) says nothing about the number.
        raise CarrierUnavailable(
            f"the carrier could not say whether it owns {number} ({error})"
        ) from error
    except (aiohttp.ClientError, TimeoutError) as error:
        raise CarrierUnavailable(f"the carrier could not be reached ({error!r})") from error
    finally:
        await http.close()
    # The filter also matches partial numbers: only an exact one counts.
    if not any(n.phone_number == number for n in owned):
        raise SenderNotOwned(f"{number} is not a number of the carrier account")
