"""The Twilio carrier client: the official `twilio` package over its aiohttp client.

The API base URL is a setting, so the same code talks to Twilio or to the local emulator.
"""

from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import ClientConnectorError, ClientError
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client


class Verdict(StrEnum):
    SENT = "sent"
    RETRY = "retry"  # not accepted, safe to send again later
    FAILED = "failed"  # permanent for this message
    UNCERTAIN = "uncertain"  # the request may have reached the carrier: never resent blindly


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


class _HeaderAwareHttpClient(AsyncTwilioHttpClient):
    """Keeps the `Retry-After` of the last response in the calling task's context,
    because `TwilioRestException` drops the response headers."""

    async def request(self, *args: object, **kwargs: object) -> Response:
        response = await super().request(*args, **kwargs)
        value = response.headers.get("Retry-After") if response.headers else None
        _retry_after.set(float(value) if value and value.isdigit() else None)
        return response


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
    def __init__(self, *, account_sid: str, auth_token: str, api_url: str, timeout: float) -> None:
        self._http = _HeaderAwareHttpClient(timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._client.api.base_url = api_url.rstrip("/")

    async def send(
        self, *, to: str, from_: str, body: str, status_callback: str | None
    ) -> SendResult:
        try:
            message = await self._client.messages.create_async(
                to=to, from_=from_, body=body, status_callback=status_callback or values.unset
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
