"""Requests from the carrier: Twilio signs each with `X-Twilio-Signature`; 403 when it fails."""

import base64
import binascii
import hmac
import re
import uuid
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import Depends, Request
from twilio.request_validator import RequestValidator

from api.deps import AppSettings, Pool
from api.errors import HeraldError, InvalidRequest
from api.input_checks import require_storable_fields
from api.models import ACCOUNT_SID_PATTERN
from api.seeded_hmac import SeededHmac
from api.services.carrier_account import signing_tokens

URLENCODED = "application/x-www-form-urlencoded"
# Starlette's own limit for a form.
MAX_FIELDS = 1000
ACCOUNT_SID = re.compile(ACCOUNT_SID_PATTERN)


class InvalidSignature(HeraldError):
    status_code = 403
    code = "INVALID_SIGNATURE"


@dataclass(frozen=True, kw_only=True)
class CarrierForm:
    params: dict[str, str]
    # Signed with an account's own subaccount token: the accounts whose token it was, the
    # only ones the webhook may concern. None: signed with the service's token.
    signers: frozenset[uuid.UUID] | None = None


async def form_params(request: Request) -> dict[str, str]:
    """The form's fields; an urlencoded body (the carrier's) is parsed in a third of the
    time `request.form()` takes."""
    if request.headers.get("content-type", "").startswith(URLENCODED):
        return urlencoded_params(await request.body())
    form = await request.form(max_fields=MAX_FIELDS)
    params = {key: value for key, value in form.items() if isinstance(value, str)}
    # Not the carrier's encoding, and not checked by `InputChecks`, which reads JSON and
    # urlencoded bodies only: a NUL here would reach PostgreSQL.
    require_storable_fields(params.items())
    return params


def urlencoded_params(body: bytes) -> dict[str, str]:
    """The fields of an urlencoded body, as `dict(parse_qsl(..., keep_blank_values=True))`
    reads them, in a third of its time (the carrier posts two or three per message)."""
    text = body.decode("latin-1")
    if text.count("&") >= MAX_FIELDS:
        raise InvalidRequest(f"More than {MAX_FIELDS} form fields")
    if _is_plain(text):
        return _plain_params(text)
    params: dict[str, str] = {}
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        params[_unquoted(name)] = _unquoted(value)
    return params


def storable_params(body: bytes) -> dict[str, str]:
    """`urlencoded_params` of `body`, refused as `require_storable_fields` refuses a field no
    column can store. A carrier's body (no escape but `%2B`) is checked whole: its names and
    values are its own text, read as latin-1, which holds no lone surrogate, so a NUL is the
    one thing in it no column stores."""
    text = body.decode("latin-1")
    if text.count("&") < MAX_FIELDS and _is_plain(text) and "\x00" not in text:
        return _plain_params(text)
    params = urlencoded_params(body)
    require_storable_fields(params.items())
    return params


def _is_plain(text: str) -> bool:
    """Whether `text` holds no escape but a number's `+` (%2B), which no field's `&` or `=`
    can be mistaken for once it is unquoted: the whole body is unquoted at once."""
    return "+" not in text and text.count("%") == text.count("%2B")


def _plain_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for field in text.replace("%2B", "+").split("&"):
        if field:
            name, _, value = field.partition("=")
            params[name] = value
    return params


def _unquoted(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    # A phone number's `+` (%2B) is the only escape in most of the carrier's values.
    if "+" not in text and text.count("%") == text.count("%2B"):
        return text.replace("%2B", "+")
    return unquote_plus(text)


def signed_with(token: str, url: str, params: dict[str, str], signature: str) -> bool:
    """Whether `signature` is Twilio's HMAC-SHA1 of exactly `url` and `params` with `token`.

    The common case, computed once: RequestValidator.validate computes it for the URL with
    and without its port, which costs a status callback a third of its time at full rate.
    """
    digest = hmac.digest(token.encode(), url.encode() + _signed_params(params), "sha1")
    return hmac.compare_digest(base64.b64encode(digest).decode(), signature)


class UrlSignatures:
    """`signed_with` for requests to one URL with one token, as the receipts listener checks
    every status callback: the HMAC's states seeded with the token and the URL once
    (api/seeded_hmac.py)."""

    def __init__(self, token: str, url: str) -> None:
        self._hmac = SeededHmac(token.encode(), url.encode())

    def signed(self, params: dict[str, str], signature: str, query: bytes = b"") -> bool:
        """Whether `signature` is Twilio's for a request of `params` to the URL, with `query`
        if given."""
        signed = _signed_params(params)
        digest = self._hmac.digest(b"?" + query + signed if query else signed)
        expected = binascii.b2a_base64(digest, newline=False)
        return hmac.compare_digest(expected, signature.encode())


def _signed_params(params: dict[str, str]) -> bytes:
    """What Twilio signs of `params`, after the URL: each name and value, in name order."""
    return "".join(map("".join, sorted(params.items()))).encode()


async def signed_form(
    request: Request, settings: AppSettings, pool: Pool, *, receipts: bool = False
) -> CarrierForm:
    """The form of a carrier webhook whose `X-Twilio-Signature` checks out (`verified`).

    Twilio signs the URL it called, which is Herald's public URL of the endpoint: behind a
    proxy that is not the URL this process sees, so it is rebuilt from settings.
    """
    params = await form_params(request)
    url = public_url(settings, request.url.path, request.url.query)
    signature = request.headers.get("X-Twilio-Signature")
    return await verified(settings, pool, url, params, signature, receipts=receipts)


def public_url(settings: AppSettings, path: str, query: str) -> str:
    """The URL the carrier called (and signed) for a request to `path` with `query`."""
    url = settings.api_url.rstrip("/") + path
    return url + "?" + query if query else url


async def verified(
    settings: AppSettings,
    pool: Pool,
    url: str,
    params: dict[str, str],
    signature: str | None,
    *,
    receipts: bool = False,
) -> CarrierForm:
    """`params` if `signature` is Twilio's for `url` and them: with the service's token, or
    for a webhook of an account's own subaccount (its `AccountSid`), that subaccount's; for a
    delivery receipt (`receipts`), also a token the account replaced or removed lately, with
    which the messages it sent were sent (carrier_accounts.KEPT_RETIRED_TOKENS). An inbound
    message never: a token given up no longer speaks for the account's numbers."""
    # Twilio's signature is base64: anything else (compare_digest refuses non-ASCII) fails.
    if not signature or not signature.isascii():
        raise InvalidSignature("X-Twilio-Signature is missing or does not match this request")
    token = settings.twilio_auth_token.get_secret_value()
    if signed_with(token, url, params, signature) or RequestValidator(token).validate(
        url, params, signature
    ):
        return CarrierForm(params=params)
    # Only a SID's form is looked up: a flood of posts naming anything else reads no database.
    account_sid = params.get("AccountSid")
    if account_sid is not None and not ACCOUNT_SID.match(account_sid):
        account_sid = None
    signers = frozenset(
        account_id
        for account_id, token in (
            await signing_tokens(pool, account_sid, retired=receipts) if account_sid else []
        )
        if RequestValidator(token).validate(url, params, signature)
    )
    if not signers:
        raise InvalidSignature("X-Twilio-Signature is missing or does not match this request")
    return CarrierForm(params=params, signers=signers)


SignedForm = Annotated[CarrierForm, Depends(signed_form)]
