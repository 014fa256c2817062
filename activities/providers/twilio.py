"""The Twilio carrier client: the official `twilio` package, over a lean HTTP/1.1 client.

The API base URL is a setting, so the same code talks to Twilio or to the local emulator.
"""

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import quote_plus, urlencode

import orjson
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from activities.providers.http1 import ConnectFailed, Http1Pool, NoAnswer, NotSent
from activities.providers.in_flight import InFlightLimit, StoppedWaiting
from activities.providers.sids import MESSAGE_SID


class Verdict(StrEnum):
    SENT = "sent"
    RETRY = "retry"  # not accepted, safe to send again later
    FAILED = "failed"  # permanent for this message
    UNCERTAIN = "uncertain"  # the carrier may have created it: never resent blindly
    EXPIRED = "expired"  # never sent: the batch's `expire_at` passed first


@dataclass(frozen=True, slots=True)
class CarrierOutcome:
    """What one kind of carrier answer means for its message."""

    verdict: Verdict
    description: str
    # The recipient unsubscribed at the carrier: later batches of the account must skip it.
    opts_out: bool = False


# Every carrier answer Herald tells apart, keyed as the ledger's `error_code` records it: Twilio
# error codes, then HTTP statuses (for an error body whose code is not listed), then failures
# of the connection itself. A server error but 503's (unavailable: turned away before any
# work) may come after the carrier created the message: Twilio says a POST that sends an SMS is
# not idempotent, and one retried after a 500 can reach the user twice
# (https://www.twilio.com/docs/api/errors/20500). Such a message is `uncertain`, as one with no
# answer is: the carrier's list says whether it has it (activities/reconciliation.py).
OUTCOMES: Mapping[str, CarrierOutcome] = MappingProxyType(
    {
        "20003": CarrierOutcome(Verdict.FAILED, "authentication failed: check SID and token"),
        "20429": CarrierOutcome(Verdict.RETRY, "too many requests: throttled by the carrier"),
        "20500": CarrierOutcome(
            Verdict.UNCERTAIN, "carrier internal error: it may have been accepted"
        ),
        "20503": CarrierOutcome(Verdict.RETRY, "carrier temporarily unavailable"),
        "21211": CarrierOutcome(Verdict.FAILED, "invalid 'To' number"),
        "21212": CarrierOutcome(Verdict.FAILED, "invalid 'From' number"),
        "21408": CarrierOutcome(Verdict.FAILED, "no permission to send to this region"),
        "21602": CarrierOutcome(Verdict.FAILED, "message body is required"),
        "21603": CarrierOutcome(Verdict.FAILED, "'From' number is required"),
        "21604": CarrierOutcome(Verdict.FAILED, "'To' number is required"),
        "21606": CarrierOutcome(Verdict.FAILED, "'From' number not owned by the account"),
        "21610": CarrierOutcome(Verdict.FAILED, "recipient unsubscribed (STOP)", opts_out=True),
        "21611": CarrierOutcome(Verdict.RETRY, "the 'From' number's queue is full"),
        "21612": CarrierOutcome(Verdict.FAILED, "carrier cannot route to this number"),
        "21614": CarrierOutcome(Verdict.FAILED, "'To' number is not a mobile number"),
        "21617": CarrierOutcome(Verdict.FAILED, "message body exceeds 1600 characters"),
        "429": CarrierOutcome(Verdict.RETRY, "too many requests"),
        "500": CarrierOutcome(Verdict.UNCERTAIN, "carrier server error: it may have been accepted"),
        "502": CarrierOutcome(
            Verdict.UNCERTAIN, "bad gateway in front of the carrier: it may have been accepted"
        ),
        "503": CarrierOutcome(Verdict.RETRY, "carrier unavailable"),
        "504": CarrierOutcome(
            Verdict.UNCERTAIN, "gateway timeout in front of the carrier: it may have been accepted"
        ),
        "connect": CarrierOutcome(
            Verdict.RETRY, "no connection to the carrier: the request was not sent"
        ),
        "no_answer": CarrierOutcome(
            Verdict.UNCERTAIN, "no answer after the request was sent: it may have been accepted"
        ),
        "unreadable_answer": CarrierOutcome(
            Verdict.UNCERTAIN, "an answer that could not be read: it may have been accepted"
        ),
    }
)
# The carrier throttling the account: too many of its requests at once (Twilio 20429), or a
# bare 429. Never processed, so safe to send again; each lowers the account's InFlightLimit.
THROTTLES = frozenset({"20429", "429"})
# What a request to the carrier answers (TwilioCarrier._placed).
T = TypeVar("T")
# Refusals listed neither by code nor by status: a server error may have created the message
# (above); anything else will not pass.
UNLISTED_SERVER_ERROR = CarrierOutcome(Verdict.UNCERTAIN, "carrier server error")
UNLISTED_REFUSAL = CarrierOutcome(Verdict.FAILED, "refused by the carrier")


@dataclass(frozen=True, slots=True)
class SendResult:
    verdict: Verdict
    sid: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    opts_out: bool = False
    # The carrier answered with a server error (5xx): it is in trouble, whatever the verdict.
    server_error: bool = False


def refusal_outcome(code: int | None, status: int) -> tuple[str, CarrierOutcome | None]:
    """The ledger code of a refusal (its Twilio code, else its HTTP status) and its row of
    OUTCOMES (by code, else by status); None when neither is listed."""
    by_code = OUTCOMES.get(str(code)) if code is not None else None
    return str(code or status), by_code or OUTCOMES.get(str(status))


def transport_result(key: str, error: BaseException) -> SendResult:
    outcome = OUTCOMES[key]
    return SendResult(verdict=outcome.verdict, error_code=key, error_message=repr(error))


_retry_after: ContextVar[float | None] = ContextVar("retry_after", default=None)
# The `ready` check of the request the calling task is making (TwilioCarrier._placed): twilio's
# client passes nothing of its own through to the seam.
_ready: ContextVar[Callable[[], Awaitable[bool]] | None] = ContextVar("ready", default=None)
_log = logging.getLogger(__name__)


class CarrierHttpClient(AsyncHttpClient):
    """twilio's HTTP seam, on Herald's lean HTTP/1.1 pool: the official client builds every
    request and reads every refusal (an accepting answer's sid: `CarrierClient.created_sid`);
    this only moves bytes.

    Against twilio's own AsyncTwilioHttpClient (aiohttp) it costs about a third of the CPU
    per message, logs nothing per request, and keeps the `Retry-After` of the last response
    in the calling task's context, because `TwilioRestException` drops the response headers.
    """

    def __init__(self, *, timeout: float, connections: int) -> None:
        super().__init__(logger=_log, is_async=True, timeout=timeout)
        self._pool = Http1Pool(connections=connections, timeout=timeout)

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
        body = b""
        if data is not None:
            body = form_body(data).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if auth is not None:
            headers["Authorization"] = basic_auth(*auth)
        answer = await self._pool.request(
            method,
            url,
            headers=headers,
            body=body,
            params=params,
            time_limit=timeout,
            ready=_ready.get(),
        )
        _retry_after.set(retry_after_seconds(answer.headers.get("retry-after")))
        return Response(answer.status, answer.body.decode(), answer.headers)

    async def close(self) -> None:
        await self._pool.close()


class CarrierClient(Client):
    """twilio's Client, with the per-request work that never changes done once: its
    `get_headers` formats the User-Agent from `platform` calls on every request, and its
    `copy_non_none_values` walks the form recursively though a message's form is flat
    strings. Same headers, same form, same request as twilio's own."""

    def __init__(self, account_sid: str, auth_token: str, http_client: AsyncHttpClient) -> None:
        super().__init__(account_sid, auth_token, http_client=http_client)
        fixed = super().get_headers("GET", {})
        # The headers twilio sets on every request whatever the caller passed.
        self._fixed_headers = {
            name: fixed[name] for name in ("User-Agent", "X-Twilio-Client", "Accept-Charset")
        }
        # The API's base URL and the Messages URL made from it (`_messages_url`).
        self._messages_at: tuple[str, str] | None = None

    def get_headers(self, method: str, headers: dict[str, str] | None) -> dict[str, str]:
        built = dict(headers) if headers else {}
        built.update(self._fixed_headers)
        if method in ("POST", "PUT"):
            built.setdefault("Content-Type", "application/x-www-form-urlencoded")
        built.setdefault("Accept", "application/json")
        return built

    def copy_non_none_values(self, data: Any) -> Any:
        if type(data) is MessageForm:
            return data  # made of strings alone (message_form): nothing to walk
        if type(data) is dict and all(type(value) is str for value in data.values()):
            return data  # flat strings: nothing None, nothing nested
        return super().copy_non_none_values(data)

    def create_message_request(self, form: "MessageForm") -> Coroutine[Any, Any, Response]:
        """twilio's request of `messages.create_async` for `form`, through the same Version
        and its `request_async` (its URL made as its Domain makes it); not awaited here, so
        that the caller awaits twilio's own coroutine, one layer fewer on every step of the
        send. With `created` or `created_sid` on its answer, this is `create_async` without
        its MessageInstance: the answer's thirty-odd fields, three of them dates, are not
        parsed into an object of which only the sid is read, and the form is the message's
        few fields (`message_form`), not twilio's twenty-six filtered on every call."""
        return self.request_async(
            "POST", self._messages_url(), data=form, headers=dict(_CREATE_HEADERS)
        )

    def created(self, response: Response) -> Any:
        """The answer to `create_message_request` as twilio's `_parse_create` reads it: the
        JSON, or a `TwilioRestException` raised for a refusal."""
        messages = self.messages
        return messages._version._parse_create("POST", messages._uri, response)

    def created_sid(self, response: Response) -> object:
        """`accepted_sid(self.created(response))`: the sid of an accepting answer, None when
        the JSON is no object, or a refusal raised. An accepting answer with a string sid is
        read by orjson, in a quarter of the json module's time; anything else (a refusal,
        an empty body, a JSON orjson reads otherwise or not at all: NaN, a lone surrogate,
        a huge integer; no sid, or one not a string) by twilio's own `_parse_create`."""
        if 200 <= response.status_code < 300 and response.text:
            try:
                sid = accepted_sid(orjson.loads(response.text))
            except orjson.JSONDecodeError:
                sid = None
            if type(sid) is str:
                return sid
        return accepted_sid(self.created(response))

    def _messages_url(self) -> str:
        """The URL twilio's `messages.create_async` posts to (its Version's `absolute_url`),
        made again only when the API's base URL has changed since the last."""
        base_url = self.api.base_url
        if self._messages_at is None or self._messages_at[0] is not base_url:
            version = self.messages._version
            url = version.domain.absolute_url(version.relative_uri(self.messages._uri))
            self._messages_at = (base_url, url)
        return self._messages_at[1]


# Each ASCII character as `quote_plus` writes it, where that is not the character itself.
_FORM_ASCII = {
    chr(code): quote_plus(chr(code)) for code in range(128) if quote_plus(chr(code)) != chr(code)
}
_FORM_SAFE = frozenset(chr(code) for code in range(128)) - _FORM_ASCII.keys()


def form_field(text: str) -> str:
    """`text` as `quote_plus` writes it. ASCII text by one `str.replace` for each character
    it has that is written otherwise: `%` first and the space (to `+`) after `+`, so that no
    character written is written again; an E.164 number by its `+` alone."""
    if not text.isascii():
        return quote_plus(text)
    if text[:1] == "+" and text[1:].isdigit():
        return "%2B" + text[1:]
    written = set(text).difference(_FORM_SAFE)
    if not written:
        return text
    for first in ("%", "+"):
        if first in written:
            written.discard(first)
            text = text.replace(first, _FORM_ASCII[first])
    space = " " in written
    written.discard(" ")
    for character in written:
        text = text.replace(character, _FORM_ASCII[character])
    return text.replace(" ", "+") if space else text


# The encoded form of field names, and of the values of fields that repeat from one message
# to the next (a slice sends from one number; its callback URL but for its query, which
# `_encoded_url` writes apart): encoded once each.
_REPEATING_FIELDS = frozenset({"From", "ContentSid"})
_encoded: dict[str, str] = {}
MAX_ENCODED = 4096


def _encoded_once(text: str) -> str:
    encoded = _encoded.get(text)
    if encoded is None:
        if len(_encoded) >= MAX_ENCODED:
            _encoded.clear()
        encoded = _encoded[text] = form_field(text)
    return encoded


def _encoded_url(url: str) -> str:
    """`form_field(url)`, its part before the query encoded once (`_encoded_once`): a batch
    message's StatusCallback differs from the next one's by its query alone (its ledger key,
    receipts.keyed_url), which is short. quote_plus writes each character on its own, so the
    two parts are written as the whole is."""
    base, mark, query = url.partition("?")
    return _encoded_once(base) + "%3F" + form_field(query) if mark else _encoded_once(url)


def form_body(data: Mapping[str, object]) -> str:
    """`urlencode(data, doseq=True)`, in a third of its time when every value is a string
    (a message's form always is); lists and other values go to urlencode."""
    fields = []
    for key, value in data.items():
        if not isinstance(value, str):
            return urlencode(data, doseq=True)
        if key == "StatusCallback":
            encoded = _encoded_url(value)
        elif key in _REPEATING_FIELDS:
            encoded = _encoded_once(value)
        else:
            encoded = form_field(value)
        fields.append(f"{_encoded_once(key)}={encoded}")
    return "&".join(fields)


@lru_cache(maxsize=1024)
def basic_auth(user: str, password: str) -> str:
    """The Authorization header of these credentials (computed once for each pair)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A `Retry-After` header in seconds: it holds either seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max((moment - (now or datetime.now(UTC))).total_seconds(), 0.0)


def classify(error: TwilioRestException) -> SendResult:
    code = error.code if isinstance(error.code, int) else None
    ledger_code, outcome = refusal_outcome(code, error.status)
    if outcome is None:
        # Unlisted: the carrier's own words say more than a generic description.
        outcome = UNLISTED_SERVER_ERROR if error.status >= 500 else UNLISTED_REFUSAL
        message = error.msg or outcome.description
    else:
        message = outcome.description
    return SendResult(
        verdict=outcome.verdict,
        error_code=ledger_code,
        error_message=message,
        retry_after=_retry_after.get() if outcome.verdict is Verdict.RETRY else None,
        opts_out=outcome.opts_out,
        server_error=error.status >= 500,
    )


@dataclass(frozen=True, slots=True)
class CarrierMessage:
    """A message as the carrier's list shows it."""

    sid: str
    body: str
    created: datetime


def accepted_sid(payload: Any) -> object:
    """The `sid` of an accepting answer's JSON, which should be an object; None when it is
    something else (a list, a string...)."""
    return payload.get("sid") if isinstance(payload, dict) else None


class MessageForm(dict[str, str]):
    """A message's form as `message_form` makes it: strings alone, none of them None."""


def message_form(
    *,
    to: str,
    from_: str,
    body: str,
    status_callback: str | None,
    content_sid: str | None,
    content_variables: str | None,
) -> MessageForm:
    """A message's fields as twilio's `messages.create` names and orders them, the empty ones
    left out (as `values.unset` leaves them out there)."""
    form = MessageForm(To=to)
    if status_callback:
        form["StatusCallback"] = status_callback
    if content_variables:
        form["ContentVariables"] = content_variables
    form["From"] = from_
    if body:
        form["Body"] = body
    if content_sid:
        form["ContentSid"] = content_sid
    return form


# The headers `messages.create_async` passes.
_CREATE_HEADERS = MappingProxyType(
    {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
)


MAX_SUBACCOUNT_CLIENTS = 1000


@dataclass(frozen=True, slots=True)
class _Account:
    """A carrier account's client, and the limit of its requests in flight."""

    client: CarrierClient
    in_flight: InFlightLimit


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
        self._connections = connections
        self._api_url = api_url.rstrip("/")
        self._service = self._new_account(account_sid, auth_token)
        # Accounts with their own credentials (Twilio subaccounts): one client each, all on
        # the same connection pool, so a subaccount costs no connections of its own; and
        # each its own limit of requests in flight, as Twilio limits each account's.
        self._subaccounts: dict[tuple[str, str], _Account] = {}

    def _new_account(self, account_sid: str, auth_token: str) -> _Account:
        client = CarrierClient(account_sid, auth_token, self._http)
        client.api.base_url = self._api_url
        return _Account(client, InFlightLimit(ceiling=self._connections))

    def _account(self, credentials: tuple[str, str] | None) -> _Account:
        if credentials is None:
            return self._service
        account = self._subaccounts.get(credentials)
        if account is None:
            if len(self._subaccounts) >= MAX_SUBACCOUNT_CLIENTS:
                # A changed token leaves its old client behind: start over rather than grow.
                self._subaccounts.clear()
            account = self._subaccounts[credentials] = self._new_account(*credentials)
        return account

    def in_flight_limit(self, credentials: tuple[str, str] | None = None) -> InFlightLimit:
        """The limit of the account's requests in flight from this worker."""
        return self._account(credentials).in_flight

    def in_flight_by_account(self) -> dict[str, tuple[int, int]]:
        """Each account's (limit, requests in flight), by account SID; for the metrics
        server's thread, so the subaccounts are copied before they are read."""
        return {
            account.client.account_sid: (account.in_flight.limit, account.in_flight.in_flight)
            for account in [self._service, *list(self._subaccounts.values())]
        }

    async def send(
        self,
        *,
        to: str,
        from_: str,
        body: str,
        status_callback: str | None,
        content_sid: str | None = None,
        content_variables: str | None = None,
        credentials: tuple[str, str] | None = None,
        stopping: asyncio.Event | None = None,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> SendResult:
        """Send one message; `content_sid` names a content template, whose variables are a
        JSON object as a string. An empty `body` is left out, as a template needs none.
        `credentials`, an (account SID, auth token) pair, send it through that account
        instead of the service's. Raises StoppedWaiting, the message unsent, when
        `stopping` is set while it waits for a place in the account's limit, or when
        `ready`, awaited once it has its place and its connection, just before it is
        written, is False; NotSent when `ready` fails."""
        account = self._account(credentials)
        form = message_form(
            to=to,
            from_=from_,
            body=body,
            status_callback=status_callback,
            content_sid=content_sid,
            content_variables=content_variables,
        )
        client = account.client

        async def created() -> object:
            return client.created_sid(await client.create_message_request(form))

        try:
            sid = await self._placed(account, created, stopping, ready)
        except StoppedWaiting:
            raise
        except NotSent as error:
            if error.__cause__ is not None:
                raise  # the check itself failed: the caller's failure, not the carrier's answer
            raise StoppedWaiting from None
        except TwilioRestException as error:
            return classify(error)
        except ConnectFailed as error:
            return transport_result("connect", error)
        except NoAnswer as error:
            return transport_result("no_answer", error)
        except Exception as error:
            # A 2xx whose body twilio cannot parse (truncated JSON, HTML, a list...): the
            # request went out and may have been accepted. This message's outcome only.
            return transport_result("unreadable_answer", error)
        if not isinstance(sid, str) or not MESSAGE_SID.fullmatch(sid):
            return SendResult(
                verdict=Verdict.UNCERTAIN,
                error_code="unreadable_answer",
                error_message=f"accepted with an unreadable sid {sid!r}"[:200],
            )
        return SendResult(verdict=Verdict.SENT, sid=sid)

    async def sent_messages(
        self, *, to: str, from_: str, credentials: tuple[str, str] | None = None, limit: int = 50
    ) -> list[CarrierMessage]:
        """The newest messages the account sent from `from_` to `to` (Twilio's Messages list,
        filtered by both), at most `limit`. Not filtered by DateSent: a message still in the
        carrier's queue has none yet, and must be found all the same."""
        account = self._account(credentials)
        found = await self._placed(
            account,
            lambda: account.client.messages.list_async(
                to=to, from_=from_, limit=limit, page_size=limit
            ),
        )
        return [
            CarrierMessage(sid=m.sid, body=m.body or "", created=m.date_created)
            for m in found
            if m.sid and m.date_created
        ]

    async def _placed(
        self,
        account: _Account,
        request: Callable[[], Awaitable[T]],
        stopping: asyncio.Event | None = None,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """`request()`, one request of the account's, holding a place in its limit of
        requests in flight until answered (or until `ready`, checked once it has its
        connection, says it is not to go: NotSent); the place is given back with what the
        answer says of the account's load (a refusal in THROTTLES lowers the limit)."""
        limit = account.in_flight
        epoch = await limit.place(stopping)
        throttled: bool | None = None
        checked = _ready.set(ready)
        try:
            answer = await request()
            throttled = False
            return answer
        except TwilioRestException as error:
            throttled = classify(error).error_code in THROTTLES
            raise
        finally:
            _ready.reset(checked)
            limit.give_back(epoch, throttled=throttled)

    async def close(self) -> None:
        await self._http.close()
