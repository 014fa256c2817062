"""The Twilio carrier client: the official `twilio` package, over aiohttp.

The API base URL is a setting, so the same code talks to Twilio or to the local emulator.
"""

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlencode

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientTimeout,
    TCPConnector,
    encode_basic_auth,
)
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client


class Verdict(StrEnum):
    SENT = "sent"
    RETRY = "retry"  # not accepted, safe to send again later
    FAILED = "failed"  # permanent for this message
    UNCERTAIN = "uncertain"  # the request may have reached the carrier: never resent blindly
    EXPIRED = "expired"  # never sent: the batch's `expire_at` passed first


@dataclass(frozen=True, slots=True)
class SendResult:
    verdict: Verdict
    sid: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None


# Twilio error codes that fail one message for good; anything else unknown is permanent too,
# except HTTP statuses listed in RETRYABLE_HTTP_STATUSES.
PERMANENT_ERRORS: dict[int, str] = {
    21211: "invalid 'To' number",
    21212: "invalid 'From' number",
    21408: "no permission to send to this region",
    21606: "'From' number not owned by the account",
    21610: "recipient unsubscribed (STOP)",
    21612: "carrier cannot route to this number",
    21614: "'To' number is not a mobile number",
}
# Throttling (20429) and server errors: the carrier did not take the message.
RETRYABLE_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRYABLE_ERRORS = frozenset({20429, 20500, 20503, 21611})

_retry_after: ContextVar[float | None] = ContextVar("retry_after", default=None)
_log = logging.getLogger(__name__)


class CarrierHttpClient(AsyncHttpClient):
    """twilio's HTTP seam, on one aiohttp session: the official client builds and parses every
    request; this only moves bytes.

    Against twilio's own AsyncTwilioHttpClient it form-encodes each body once (no aiohttp
    FormData), logs nothing per request, and keeps the `Retry-After` of the last response in
    the calling task's context, because `TwilioRestException` drops the response headers.
    """

    def __init__(self, *, timeout: float, connections: int) -> None:
        super().__init__(logger=_log, is_async=True, timeout=timeout)
        self._session = ClientSession(
            connector=TCPConnector(limit=connections),
            timeout=ClientTimeout(total=timeout),
        )

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the seam's signature is twilio's
        allow_redirects: bool = False,
    ) -> Response:
        headers = dict(headers or {})
        body = None
        if data is not None:
            body = urlencode(data, doseq=True).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if auth is not None:
            headers["Authorization"] = encode_basic_auth(*auth)
        async with self._session.request(
            method,
            url,
            params=params,
            data=body,
            headers=headers,
            allow_redirects=allow_redirects,
            timeout=ClientTimeout(total=timeout) if timeout else None,
        ) as response:
            text = await response.text()
        value = response.headers.get("Retry-After")
        _retry_after.set(float(value) if value and value.isdigit() else None)
        return Response(response.status, text, response.headers)

    async def close(self) -> None:
        await self._session.close()


def classify(error: TwilioRestException) -> SendResult:
    code = error.code if isinstance(error.code, int) else None
    retry_after = _retry_after.get()
    if error.status in RETRYABLE_HTTP_STATUSES or code in RETRYABLE_ERRORS:
        return SendResult(
            verdict=Verdict.RETRY,
            error_code=str(code or error.status),
            error_message=error.msg,
            retry_after=retry_after,
        )
    return SendResult(
        verdict=Verdict.FAILED,
        error_code=str(code or error.status),
        error_message=PERMANENT_ERRORS.get(code or 0, error.msg),
    )


class TwilioCarrier:
    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_url: str,
        timeout: float,
        connections: int = 100,
    ) -> None:
        self._http = CarrierHttpClient(timeout=timeout, connections=connections)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._client.api.base_url = api_url.rstrip("/")

    async def send(
        self,
        *,
        to: str,
        from_: str,
        body: str,
        status_callback: str | None,
        content_sid: str | None = None,
        content_variables: str | None = None,
    ) -> SendResult:
        """Send one message; `content_sid` names a content template, whose variables are a
        JSON object as a string. An empty `body` is left out, as a template needs none."""
        try:
            message = await self._client.messages.create_async(
                to=to,
                from_=from_,
                body=body or values.unset,
                status_callback=status_callback or values.unset,
                content_sid=content_sid or values.unset,
                content_variables=content_variables or values.unset,
            )
        except TwilioRestException as error:
            return classify(error)
        except ClientConnectorError as error:
            return SendResult(verdict=Verdict.RETRY, error_code="connect", error_message=str(error))
        except (TimeoutError, ClientError, OSError) as error:
            return SendResult(
                verdict=Verdict.UNCERTAIN, error_code="no_answer", error_message=repr(error)
            )
        return SendResult(verdict=Verdict.SENT, sid=message.sid)

    async def close(self) -> None:
        await self._http.close()
