"""Requests from the carrier: Twilio signs each with `X-Twilio-Signature`; 403 when it fails."""

from typing import Annotated

from fastapi import Depends, Request
from twilio.request_validator import RequestValidator

from api.deps import AppSettings
from api.errors import HeraldError


class InvalidSignature(HeraldError):
    status_code = 403
    code = "INVALID_SIGNATURE"


async def signed_form(request: Request, settings: AppSettings) -> dict[str, str]:
    """The form of a carrier webhook whose `X-Twilio-Signature` checks out.

    Twilio signs the URL it called, which is Herald's public URL of the endpoint: behind a
    proxy that is not the URL this process sees, so it is rebuilt from settings.
    """
    form = await request.form()
    params = {key: value for key, value in form.items() if isinstance(value, str)}
    url = settings.api_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("X-Twilio-Signature")
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    if not signature or not validator.validate(url, params, signature):
        raise InvalidSignature("X-Twilio-Signature is missing or does not match this request")
    return params


SignedForm = Annotated[dict[str, str], Depends(signed_form)]
