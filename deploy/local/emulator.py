"""A local carrier: the subset of Twilio's 2010 Messages API that Herald uses.

It answers `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` as Twilio does (form body,
basic auth, Twilio-shaped JSON and error bodies), lists the account's own numbers at
`GET .../IncomingPhoneNumbers.json?PhoneNumber=...`, honours Twilio's test "magic numbers",
injects latency, 429s and 5xx on request, posts delivery callbacks signed with
`X-Twilio-Signature`, and lets tests read what it received under `/_emulator/`.
"""

import argparse
import asyncio
import base64
import binascii
import functools
import gc
import hmac
import json
import random
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import uvloop
from aiohttp import BasicAuth

from activities.providers.http1 import ConnectFailed, Http1Pool, NoAnswer, split_url
from activities.providers.twilio import form_field
from api.seeded_hmac import SeededHmac
from deploy.local.callback_poster import CallbackPoster, Route
from deploy.local.http_server import Reply, Request, Router, serving

API_VERSION = "2010-04-01"
FORM = "application/x-www-form-urlencoded"
# Keep-alive connections the callbacks share (aiohttp's default limit, as before).
CALLBACK_CONNECTIONS = 100
MESSAGES_PATH = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json"
MESSAGES_ROUTE = rf"/{API_VERSION}/Accounts/(?P<account_sid>[^/]+)/Messages\.json"
NUMBERS_ROUTE = rf"/{API_VERSION}/Accounts/(?P<account_sid>[^/]+)/IncomingPhoneNumbers\.json"

# CreateMessage parameters this emulator understands; each is a property of Twilio's own
# OpenAPI description of CreateMessage (a test checks this). Others are refused, so a
# client that drifts from what Twilio accepts is caught here rather than in production.
KNOWN_PARAMETERS = frozenset(
    {
        "To",
        "From",
        "Body",
        "StatusCallback",
        "MessagingServiceSid",
        "ContentSid",
        "ContentVariables",
        "MediaUrl",
        "ValidityPeriod",
        "Attempt",
    }
)

# Twilio's test credentials: these "To" and "From" numbers fail with fixed errors.
MAGIC_TO: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number: {to}, is not currently reachable."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for {to}."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number {to} is not a valid mobile number"),
}
MAGIC_FROM: dict[str, tuple[int, str]] = {
    "+15005550001": (21212, "The 'From' number {from_} is not a valid phone number."),
    "+15005550007": (21606, "The 'From' phone number provided is not owned by your account."),
    "+15005550008": (21611, "This 'From' number has exceeded its queue of messages."),
}
# A "From" Twilio takes: a number in E.164, or an alphanumeric sender ID (1 to 11 letters,
# digits or spaces, at least one letter; SMS only).
VALID_FROM = re.compile(
    r"(whatsapp:)?\+[1-9][0-9]{1,14}|(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}"
)
# The emulator's account owns every number but these: Twilio's test "From" numbers that are
# invalid or "not owned by your account".
NOT_OWNED = frozenset({"+15005550001", "+15005550007"})
# Injected failures answer Twilio's code for their HTTP status; a 400 is 21612 (the carrier
# cannot route to the number), a permanent error for that one message.
# Every this many messages, what the emulator holds moves out of the garbage collector's
# sight (gc.freeze): otherwise each full collection walks every message received so far,
# and a million-message run slows down as it goes.
FREEZE_EVERY = 50_000
# A scripted "status" that answers nothing useful: the request is held NO_ANSWER_SECONDS,
# then refused, and the message is not kept (a request lost on the way, as the sender sees it).
NO_ANSWER = 599
NO_ANSWER_SECONDS = 3.0
HTTP_ERROR_CODES = {400: 21612, 429: 20429, 500: 20500, 502: 20500, 503: 20503, 504: 20500}


def malformed_reply(kind: str, reply: Reply) -> Reply:
    """The accepting `reply`, spoiled as `kind` (a key of MALFORMED) says."""
    if kind == "truncated":
        whole = json.dumps(reply.payload).encode()
        return Reply(None, status=201, raw=whole[: len(whole) // 2])
    if kind == "html":
        return Reply(
            None,
            status=200,
            raw=b"<html><body><h1>Message queued</h1></body></html>",
            content_type="text/html; charset=utf-8",
        )
    if kind == "empty_list":
        return Reply([], status=201)
    if kind == "nul_sid":
        sid = str(reply.payload["sid"])
        return Reply({**reply.payload, "sid": f"{sid[:2]}\u0000{sid[2:]}"}, status=201)
    if kind == SERVER_ERROR_AFTER_ACCEPTING:
        return twilio_error(500, 20500, "Internal Server Error")
    raise ValueError(f"unknown malformed answer {kind!r}")


# The malformed answers the emulator can give to a message it accepted; and NUL_REFUSAL, a
# refusal (unlisted code) whose message holds NUL.
MALFORMED = ("truncated", "html", "empty_list", "nul_sid")
# A server error answered for a message the emulator accepted (Twilio's 20500 can come so).
SERVER_ERROR_AFTER_ACCEPTING = "server_error"
NUL_REFUSAL = "nul_refusal"
NUL_REFUSAL_CODE = 30999


@dataclass(kw_only=True)
class Faults:
    """What the emulator does besides accepting: set at start or by `POST /_emulator/config`."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    retry_after_seconds: int | None = None
    # Requests of one account worked on at once, beyond which the next is refused at once
    # with 429 and code 20429, as Twilio limits an account's concurrent API requests. Only
    # a request that waits (latency) stays in flight; None: no limit.
    max_in_flight: int | None = None
    delivery_delay_ms: float = 50.0
    undelivered_rate: float = 0.0
    # "To" number → HTTP statuses to answer, in order, before that number is accepted;
    # NO_ANSWER instead holds the request past any client's patience and keeps nothing.
    scripted: dict[str, list[int]] = field(default_factory=dict)
    # "To" number → answers to give, in order, to its next sends, in ways a client may fail
    # to read; see MALFORMED, and SERVER_ERROR_AFTER_ACCEPTING. All but NUL_REFUSAL accept
    # the message (it counts as received).
    malformed: dict[str, list[str]] = field(default_factory=dict)
    # Subaccounts: account SID → its own auth token. An SID not listed authenticates with the
    # emulator's token.
    accounts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kinds = {k for answers in self.malformed.values() for k in answers}
        unknown = kinds - {*MALFORMED, NUL_REFUSAL, SERVER_ERROR_AFTER_ACCEPTING}
        if unknown:
            raise ValueError(f"unknown malformed answers: {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class Received:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None
    received_at: float
    content_sid: str | None = None
    content_variables: str | None = None
    account_sid: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "status_callback": self.status_callback,
            "received_at": datetime.fromtimestamp(self.received_at, UTC).isoformat(),
            "content_sid": self.content_sid,
            "content_variables": self.content_variables,
        }

    @property
    def rendered_body(self) -> str:
        """The body Twilio shows: a content template's message has the template's text, which
        the carrier renders (its sid and variables, here), whatever Body came with it."""
        if self.content_sid is None:
            return self.body
        return f"[{self.content_sid}] {self.content_variables or ''}".rstrip()

    def as_twilio(self, messaging_service_sid: object = None) -> dict[str, Any]:
        """The message as Twilio's API shows it, when created and when listed."""
        account_sid = self.account_sid or ""
        created = rfc2822(int(self.received_at))
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{self.sid}"
        return {
            "account_sid": account_sid,
            "api_version": API_VERSION,
            "body": self.rendered_body,
            "date_created": created,
            "date_sent": None,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": messaging_service_sid,
            "num_media": "0",
            "num_segments": str(1 if len(self.body) <= 160 else -(-len(self.body) // 153)),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """`X-Twilio-Signature`: the HMAC-SHA1 of the URL and each parameter's name and value, in
    name order (twilio's RequestValidator.compute_signature, in a tenth of its time: the
    emulator signs two or three callbacks per message at full send rate)."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.digest(token.encode(), payload.encode(), "sha1")).decode()


def form_body(params: dict[str, str]) -> bytes:
    """`params` urlencoded as `urlencode` encodes them, each value as Herald's carrier client
    writes a form field (`form_field`: a number's `+` alone, no `quote_plus` for ASCII)."""
    return "&".join(f"{name}={form_field(value)}" for name, value in params.items()).encode()


# The messages sent within this span of the loop's clock share their `sent` callbacks' timer:
# a message's `sent` comes up to this much sooner than the delivery delay after its send.
CALLBACK_GRAIN_SECONDS = 0.005
# The texts a StatusCallbacks remembers written (statuses, senders, error codes) at most.
MAX_WRITTEN_FIELDS = 1024


class StatusCallbacks:
    """The status callbacks of one (sub)account's messages to one URL, as the HTTP/1.1
    requests the poster writes: what all of them share (the request line and headers, the
    form's first fields, the signature's HMAC over the URL and those fields, seeded once and
    copied) is worked out once, and each callback adds only its own fields. The emulator posts
    two per message on the cores Herald runs on: built from their params (twilio_signature,
    form_body), each cost several times as much. The same bytes, signed the same way."""

    def __init__(self, token: str, url: str, account_sid: str) -> None:
        """The callbacks to `url` (with no query: each callback has its message's own)."""
        self.origin, self._target = split_url(url)
        # The fields every callback has, which sort before those of its own (ErrorCode, From...).
        shared = {"AccountSid": account_sid, "ApiVersion": API_VERSION}
        self._shared = "".join(name + value for name, value in shared.items())
        # The HMAC seeded with what every callback signs first, for the rest of each.
        self._hmac = SeededHmac(token.encode(), url.encode())
        self._headers = (
            f" HTTP/1.1\r\nHost: {self.origin.host_header}\r\n"
            f"Content-Type: {FORM}\r\nX-Twilio-Signature: "
        )
        self._form = form_body(shared).decode()
        # `form_field` of the texts every callback repeats: its statuses and senders.
        self._written_field = functools.lru_cache(maxsize=MAX_WRITTEN_FIELDS)(form_field)

    def request(
        self, query: str, sid: str, status: str, to: str, from_: str, error_code: str | None
    ) -> bytes:
        """The callback of message `sid` (to `to`, from `from_`) reaching `status`, to the
        URL with `query` (the one its StatusCallback had; none if empty)."""
        # The query, the shared fields, then its own fields in name order (ErrorCode, From,
        # MessageSid, ..., To), as signed.
        error = f"ErrorCode{error_code}" if error_code is not None else ""
        query = "?" + query if query else ""
        digest = self._hmac.digest(
            f"{query}{self._shared}{error}From{from_}MessageSid{sid}MessageStatus{status}"
            f"SmsSid{sid}SmsStatus{status}To{to}".encode()
        )
        # A Twilio sid (letters and digits) is written as it is.
        sid = sid if sid.isalnum() and sid.isascii() else form_field(sid)
        status = self._written_field(status)
        # In the order Twilio's fields come (form_body of _post_status's params, as before).
        body = (
            f"{self._form}&From={self._written_field(from_)}&MessageSid={sid}"
            f"&MessageStatus={status}&SmsSid={sid}&SmsStatus={status}&To={form_field(to)}"
        )
        if error_code is not None:
            body += f"&ErrorCode={self._written_field(error_code)}"
        signature = binascii.b2a_base64(digest, newline=False).decode()
        return (
            f"POST {self._target}{query}{self._headers}{signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()


@functools.lru_cache(maxsize=4)
def rfc2822(second: int) -> str:
    """The Unix time `second` as Twilio writes dates; cached, as a busy second asks often."""
    return datetime.fromtimestamp(second, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def twilio_error(status: int, code: int, message: str) -> Reply:
    return Reply(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


class Carrier:
    def __init__(
        self,
        *,
        auth_token: str,
        faults: Faults,
        seed: int | None = None,
        status_callbacks: bool = True,
    ) -> None:
        self.auth_token = auth_token
        self.faults = faults
        # Off where nothing can receive them: posting to a closed port costs the CPU that
        # answering sends needs.
        self.status_callbacks = status_callbacks
        self.received: list[Received] = []
        # `received` by "To", built on the first Messages list (few runs ever ask), then kept.
        self._by_to: dict[str, list[Received]] | None = None
        self.refused: Counter[int] = Counter()
        # Messages requests being worked on, by account SID (Faults.max_in_flight).
        self._in_flight: Counter[str] = Counter()
        # Status callbacks posted, by the status they were answered with ("no answer": none).
        self.callbacks: Counter[str] = Counter()
        self._random = random.Random(seed)
        # Seeded from the OS, not `seed`: a restarted emulator must not hand out old SIDs.
        self._sids = random.Random()
        # The callbacks due at once pipelined on a connection (HTTP/1.1), or one at a time
        # on each, as Twilio posts them: a benchmark measures both.
        self.callback_pipelining = True
        self._http: Http1Pool | None = None
        self._poster: CallbackPoster | None = None
        # By (URL, account sid, token), with the poster's route to the URL: few, however many
        # messages.
        self._status_callbacks: dict[tuple[str, str, str], tuple[StatusCallbacks, Route]] = {}
        # The messages whose `sent` callbacks are due at once, and when they were scheduled.
        self._due_key: tuple[float, float] | None = None
        self._due: list[tuple[str, tuple[str, str, str, str], str]] = []

    async def start(self) -> None:
        # Keep-alive connections on Herald's own lean client: at full send rate the emulator
        # posts two or three callbacks per message, and aiohttp's client spent more CPU on
        # each than the API does answering it, CPU the sends it answers need. Each request's
        # own 10 s to connect and to be answered, as Twilio's webhooks have.
        self._http = Http1Pool(connections=CALLBACK_CONNECTIONS, timeout=10.0)
        # The status callbacks on a leaner poster still: two per message.
        self._poster = CallbackPoster(
            connections=CALLBACK_CONNECTIONS, timeout=10.0, pipeline=self.callback_pipelining
        )
        # Their routes were the previous poster's.
        self._status_callbacks.clear()

    async def stop(self) -> None:
        if self._poster is not None:
            poster, self._poster = self._poster, None
            await poster.close()
        if self._http is not None:
            await self._http.close()

    def _authorised(self, request: Request) -> bool:
        try:
            auth = BasicAuth.decode(request.headers.get("authorization", ""))
        except ValueError:
            return False
        account_sid = request.params["account_sid"]
        token = self.faults.accounts.get(account_sid, self.auth_token)
        return auth.login == account_sid and secrets.compare_digest(auth.password, token)

    def _refuse(self, status: int, code: int, message: str) -> Reply:
        self.refused[code] += 1
        reply = twilio_error(status, code, message)
        if status == 429 and self.faults.retry_after_seconds is not None:
            reply.headers["Retry-After"] = str(self.faults.retry_after_seconds)
        return reply

    def _injected_failure(self, to: str) -> int | None:
        script = self.faults.scripted.get(to)
        if script:
            return script.pop(0)
        roll = self._random.random()
        if roll < self.faults.rate_429:
            return 429
        if roll < self.faults.rate_429 + self.faults.rate_5xx:
            return 503
        return None

    async def create_message(self, request: Request) -> Reply:
        limit = self.faults.max_in_flight
        if limit is None:
            return await self._create_message(request)
        account_sid = request.params["account_sid"]
        if self._in_flight[account_sid] >= limit:
            return self._refuse(429, 20429, "Too Many Requests")
        self._in_flight[account_sid] += 1
        try:
            return await self._create_message(request)
        finally:
            self._in_flight[account_sid] -= 1

    async def _create_message(self, request: Request) -> Reply:
        if not self._authorised(request):
            return self._refuse(401, 20003, "Authenticate")
        form = request.form()
        unknown = sorted(set(form) - KNOWN_PARAMETERS)
        if unknown:
            return self._refuse(400, 21000, f"Unknown parameters: {', '.join(unknown)}")
        to, from_ = str(form.get("To", "")), str(form.get("From", ""))
        body = str(form.get("Body", ""))
        if self.faults.latency_ms or self.faults.latency_jitter_ms:
            jitter = self._random.uniform(0, self.faults.latency_jitter_ms)
            await asyncio.sleep((self.faults.latency_ms + jitter) / 1000)
        if not to:
            return self._refuse(400, 21604, "A 'To' phone number is required.")
        if not from_ and not form.get("MessagingServiceSid"):
            return self._refuse(400, 21603, "A 'From' phone number is required.")
        if not body and not form.get("ContentSid") and not form.get("MediaUrl"):
            return self._refuse(400, 21602, "Message body is required.")
        bare_to = to.removeprefix("whatsapp:")
        if bare_to in MAGIC_TO:
            code, text = MAGIC_TO[bare_to]
            return self._refuse(400, code, text.format(to=to))
        if from_ and not VALID_FROM.fullmatch(from_):
            return self._refuse(
                400, 21212, f"The 'From' number {from_} is not a valid phone number."
            )
        if from_.removeprefix("whatsapp:") in MAGIC_FROM:
            code, text = MAGIC_FROM[from_.removeprefix("whatsapp:")]
            return self._refuse(400, code, text.format(from_=from_))
        spoiled = self.faults.malformed.get(bare_to)
        if spoiled and spoiled[0] == NUL_REFUSAL:
            spoiled.pop(0)
            return self._refuse(400, NUL_REFUSAL_CODE, "Refused\u0000 for no printable reason")
        failure = self._injected_failure(bare_to)
        if failure == NO_ANSWER:
            await asyncio.sleep(NO_ANSWER_SECONDS)
        if failure is not None:
            code = HTTP_ERROR_CODES.get(failure, 20500)
            return self._refuse(failure, code, f"Injected failure {failure}")
        account_sid = request.params["account_sid"]
        sid = f"SM{self._sids.getrandbits(128):032x}"
        callback = str(form["StatusCallback"]) if form.get("StatusCallback") else None
        now = time.time()
        self.received.append(
            Received(
                sid,
                to,
                from_,
                body,
                callback,
                now,
                content_sid=str(form["ContentSid"]) if form.get("ContentSid") else None,
                content_variables=(
                    str(form["ContentVariables"]) if form.get("ContentVariables") else None
                ),
                account_sid=account_sid,
            )
        )
        if self._by_to is not None:
            self._by_to.setdefault(to, []).append(self.received[-1])
        if len(self.received) % FREEZE_EVERY == 0:
            gc.freeze()
        if callback and self.status_callbacks:
            self._schedule_callbacks(callback, account_sid, sid, to, from_)
        accepted = Reply(self.received[-1].as_twilio(form.get("MessagingServiceSid")), status=201)
        if spoiled:
            return malformed_reply(spoiled.pop(0), accepted)
        return accepted

    async def list_messages(self, request: Request) -> Reply:
        """Twilio's Messages list of an account, newest first, filtered by exact `To` and
        `From` (as Herald's reconciliation asks), one page of `PageSize`."""
        if not self._authorised(request):
            return self._refuse(401, 20003, "Authenticate")
        account_sid = request.params["account_sid"]
        to, from_ = request.query.get("To"), request.query.get("From")
        page_size = min(int(request.query.get("PageSize", "50")), 1000)
        if self._by_to is None:
            self._by_to = {}
            for received in self.received:
                self._by_to.setdefault(received.to, []).append(received)
        candidates = self._by_to.get(to, []) if to is not None else self.received
        page = [
            m.as_twilio()
            for m in reversed(candidates)
            if m.account_sid == account_sid and (from_ is None or m.from_ == from_)
        ][:page_size]
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        return Reply(
            {
                "messages": page,
                "page": 0,
                "page_size": page_size,
                "start": 0,
                "end": len(page) - 1,
                "first_page_uri": f"{uri}?PageSize={page_size}&Page=0",
                "next_page_uri": None,
                "previous_page_uri": None,
                "uri": uri,
            }
        )

    async def list_numbers(self, request: Request) -> Reply:
        """Twilio's IncomingPhoneNumbers list, filtered by an exact `PhoneNumber`: the number
        when the account owns it, else an empty page."""
        if not self._authorised(request):
            return self._refuse(401, 20003, "Authenticate")
        account_sid = request.params["account_sid"]
        number = request.query.get("PhoneNumber", "")
        owned = [number] if number.startswith("+") and number not in NOT_OWNED else []
        uri = f"/{API_VERSION}/Accounts/{account_sid}/IncomingPhoneNumbers.json"
        return Reply(
            {
                "incoming_phone_numbers": [
                    {
                        "account_sid": account_sid,
                        "phone_number": n,
                        "friendly_name": n,
                        "sid": f"PN{self._sids.getrandbits(128):032x}",
                        "capabilities": {"sms": True, "mms": False, "voice": True},
                        "status": "in-use",
                    }
                    for n in owned
                ],
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": len(owned) - 1,
                "first_page_uri": f"{uri}?PageSize=50&Page=0",
                "next_page_uri": None,
                "previous_page_uri": None,
                "uri": uri,
            }
        )

    def _schedule_callbacks(
        self, url: str, account_sid: str, sid: str, to: str, from_: str
    ) -> None:
        """Post `sent`, then `delivered` or `undelivered` once `sent` is answered, as
        Twilio's status callbacks do: timers and callbacks, no task per message. The messages
        scheduled within one CALLBACK_GRAIN_SECONDS share one timer: their callbacks are
        written together, pipelined (each still a request of its own), and so, once answered,
        are the final ones. At full send rate that is a few dozen requests per write and per
        read on each side instead of a handful, and the receipts listener's share of a wake-up
        (and of a system call) per callback went down as much: each side's CPU per callback
        fell by a fifth (bench/callbacks.py)."""
        undelivered = self._random.random() < self.faults.undelivered_rate
        final = "undelivered" if undelivered else "delivered"
        loop = asyncio.get_running_loop()
        delay = self.faults.delivery_delay_ms / 1000
        key = (loop.time() // CALLBACK_GRAIN_SECONDS, delay)
        if key != self._due_key:
            self._due_key, self._due = key, []
            loop.call_later(delay, self._post_sent, self._due)
        self._due.append((url, (account_sid, sid, to, from_), final))

    def _post_sent(self, due: list[tuple[str, tuple[str, str, str, str], str]]) -> None:
        for url, message, final in due:
            self._post_status(url, message, "sent", final)

    def _post_status(
        self, url: str, message: tuple[str, str, str, str], status: str, then: str | None
    ) -> None:
        if self._poster is None:
            return
        account_sid, sid, to, from_ = message
        token = self._token(account_sid)
        base, _, query = url.partition("?")
        key = (base, account_sid, token)
        known = self._status_callbacks.get(key)
        if known is None:
            callbacks = StatusCallbacks(token, base, account_sid)
            known = self._status_callbacks[key] = (callbacks, self._poster.route(callbacks.origin))
        callbacks, route = known
        error_code = "30003" if status == "undelivered" else None

        def answered(answer: int | None) -> None:
            self.callbacks["no answer" if answer is None else str(answer)] += 1
            if then is not None:
                self._post_status(url, message, then, None)

        request = callbacks.request(query, sid, status, to, from_, error_code)
        self._poster.post(route, request, answered)

    def _signed(self, url: str, params: dict[str, str]) -> str:
        """The X-Twilio-Signature of a POST of `params` to `url`."""
        return twilio_signature(self._token(params.get("AccountSid", "")), url, params)

    def _token(self, account_sid: str) -> str:
        """What Twilio signs a webhook with: the token of the (sub)account it concerns."""
        return self.faults.accounts.get(account_sid, self.auth_token)

    async def post_signed(self, url: str, params: dict[str, str]) -> int | None:
        """A form POST signed as Twilio signs its webhooks; the status, or None on failure."""
        assert self._http is not None
        headers = {"Content-Type": FORM, "X-Twilio-Signature": self._signed(url, params)}
        try:
            answer = await self._http.request(
                "POST", url, headers=headers, body=urlencode(params).encode()
            )
        except (ConnectFailed, NoAnswer, OSError):
            return None
        return answer.status

    async def list_received(self, request: Request) -> Reply:
        to = request.query.get("to")
        contains = request.query.get("body_contains")
        rows = [
            m.as_json()
            for m in self.received
            if (to is None or m.to == to) and (contains is None or contains in m.body)
        ]
        return Reply(rows)

    async def stats(self, _: Request) -> Reply:
        first = self.received[0].received_at if self.received else None
        last = self.received[-1].received_at if self.received else None
        return Reply(
            {
                "received": len(self.received),
                # Unix time of the first message received since the last reset (the
                # bench's time to first message), None before one.
                "first_received_at": first,
                # And of the last: a batch's tail runs from it to the final event.
                "last_received_at": last,
                "refused": {str(code): n for code, n in self.refused.items()},
                "callbacks": dict(self.callbacks),
            }
        )

    async def reset(self, _: Request) -> Reply:
        self.received.clear()
        self._by_to = None
        self.refused.clear()
        self.callbacks.clear()
        return Reply({"received": 0})

    def _config(self) -> dict[str, Any]:
        return {
            **asdict(self.faults),
            "status_callbacks": self.status_callbacks,
            "callback_pipelining": self.callback_pipelining,
        }

    async def get_config(self, _: Request) -> Reply:
        return Reply(self._config())

    async def set_config(self, request: Request) -> Reply:
        """Replace the settings named in the JSON body; the rest keep their values. Besides
        the faults, `status_callbacks` turns the receipts on or off (a benchmark compares
        Herald with and without them on one stack), and `callback_pipelining` pipelines
        them or posts one at a time on each connection."""
        changes = request.json()
        unknown = sorted(set(changes) - set(self._config()))
        if unknown:
            return Reply({"error": f"unknown settings: {unknown}"}, status=400)
        self.status_callbacks = bool(changes.pop("status_callbacks", self.status_callbacks))
        pipelining = bool(changes.pop("callback_pipelining", self.callback_pipelining))
        self.callback_pipelining = pipelining
        if self._poster is not None:
            self._poster.pipeline = pipelining
        try:
            self.faults = Faults(**{**asdict(self.faults), **changes})
        except ValueError as error:
            return Reply({"error": str(error)}, status=400)
        return Reply(self._config())

    async def inbound(self, request: Request) -> Reply:
        """Play a reply from a handset: post an inbound-SMS webhook to `url`, signed."""
        message = request.json()
        params = {
            "AccountSid": message.get("account_sid", "AC" + "0" * 32),
            "ApiVersion": API_VERSION,
            "Body": message["body"],
            "From": message["from"],
            "MessageSid": "SM" + secrets.token_hex(16),
            "NumMedia": "0",
            "To": message["to"],
        }
        status = await self.post_signed(message["url"], params)
        return Reply({"status": status, "message_sid": params["MessageSid"]})


async def health(_: Request) -> Reply:
    return Reply({"status": "ok"})


def create_app(carrier: Carrier) -> Router:
    return Router(
        [
            ("POST", MESSAGES_ROUTE, carrier.create_message),
            ("GET", MESSAGES_ROUTE, carrier.list_messages),
            ("GET", NUMBERS_ROUTE, carrier.list_numbers),
            ("GET", "/_emulator/health", health),
            ("GET", "/_emulator/messages", carrier.list_received),
            ("DELETE", "/_emulator/messages", carrier.reset),
            ("GET", "/_emulator/stats", carrier.stats),
            ("GET", "/_emulator/config", carrier.get_config),
            ("POST", "/_emulator/config", carrier.set_config),
            ("POST", "/_emulator/inbound", carrier.inbound),
        ]
    )


@asynccontextmanager
async def running(carrier: Carrier, host: str, port: int) -> AsyncIterator[None]:
    """The emulator served in this event loop for the block."""
    await carrier.start()
    try:
        async with serving(create_app(carrier), host, port):
            yield
    finally:
        await carrier.stop()


async def serve_forever(carrier: Carrier, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running(carrier, host, port):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-5xx", type=float, default=0.0)
    parser.add_argument(
        "--no-status-callbacks",
        action="store_true",
        help="record each message's StatusCallback URL but post nothing to it",
    )
    args = parser.parse_args()
    faults = Faults(latency_ms=args.latency_ms, rate_429=args.rate_429, rate_5xx=args.rate_5xx)
    carrier = Carrier(
        auth_token=args.auth_token, faults=faults, status_callbacks=not args.no_status_callbacks
    )
    uvloop.run(serve_forever(carrier, args.host, args.port))


if __name__ == "__main__":
    main()
