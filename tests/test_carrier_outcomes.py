"""The carrier outcome table, Retry-After and the backoff of deferred slices (no stack)."""

import asyncio
import dataclasses
import json
import logging
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from activities.backoff import MAX_WINDOW_SECONDS, carrier_deferred, retry_delay
from activities.heartbeats import SliceHeartbeat
from activities.outages import through_outages
from activities.providers.twilio import (
    OUTCOMES,
    CarrierClient,
    SendResult,
    Verdict,
    accepted_sid,
    classify,
    form_body,
    form_field,
    message_form,
    retry_after_seconds,
)
from activities.sending import _deferred, _outcomes, account_deferral
from deploy.local.emulator import HTTP_ERROR_CODES, MAGIC_FROM, MAGIC_TO
from store.messages import ClaimedMessage
from workflows.statuses import LedgerStatus


def refusal(status: int, code: int | None, message: str = "carrier says no") -> TwilioRestException:
    return TwilioRestException(status, "/Messages.json", message, code, "POST")


@pytest.mark.parametrize(
    ("status", "code", "verdict", "ledger_code", "opts_out"),
    [
        (400, 21211, Verdict.FAILED, "21211", False),
        (400, 21610, Verdict.FAILED, "21610", True),
        (400, 21614, Verdict.FAILED, "21614", False),
        (400, 21408, Verdict.FAILED, "21408", False),
        (429, 20429, Verdict.RETRY, "20429", False),
        (503, 20503, Verdict.RETRY, "20503", False),
        (400, 21611, Verdict.RETRY, "21611", False),  # listed code wins over its 4xx status
        (429, None, Verdict.RETRY, "429", False),
        (500, 20500, Verdict.UNCERTAIN, "20500", False),  # the message may have been created
        (504, None, Verdict.UNCERTAIN, "504", False),
        (502, 99999, Verdict.UNCERTAIN, "99999", False),  # unlisted code, listed status
        (507, None, Verdict.UNCERTAIN, "507", False),  # unlisted server error
        (418, 12345, Verdict.FAILED, "12345", False),  # unlisted refusal
    ],
)
def test_a_refusal_is_classified_by_code_then_by_status(
    status: int, code: int | None, verdict: Verdict, ledger_code: str, opts_out: bool
) -> None:
    result = classify(refusal(status, code))

    assert (result.verdict, result.error_code, result.opts_out) == (verdict, ledger_code, opts_out)
    assert result.sid is None


@pytest.mark.parametrize(
    ("answers", "deferral"),
    [
        ([(429, 20429), (429, None)], "20429"),
        ([(503, 20503), (500, 20500), (500, 20500)], "20500"),
        ([(507, None), (507, None)], "507"),  # unlisted server errors
        ([(502, 99999)], "99999"),  # an unlisted code of a server error
        ([(500, 20500), (400, 21611)], None),  # a sender's full queue among them
        ([(429, 20429), (503, 20503)], None),
    ],
)
def test_a_slice_deferred_whole_by_server_errors_or_throttles_is_the_accounts(
    answers: list[tuple[int, int | None]], deferral: str | None
) -> None:
    results = [classify(refusal(status, code)) for status, code in answers]

    assert all(_deferred(r) for r in results)
    assert account_deferral(results) == deferral


def test_a_server_errors_listed_failure_is_no_deferral() -> None:
    failed = classify(refusal(500, 21211))

    assert (failed.verdict, failed.server_error, _deferred(failed)) == (Verdict.FAILED, True, False)


def test_a_listed_refusal_is_described_by_the_table_an_unlisted_one_by_the_carrier() -> None:
    assert classify(refusal(400, 21211)).error_message == "invalid 'To' number"
    assert classify(refusal(418, 12345, "teapot")).error_message == "teapot"


def test_every_error_the_emulator_answers_has_a_row_in_the_table() -> None:
    codes = {code for code, _ in (*MAGIC_TO.values(), *MAGIC_FROM.values())}
    codes |= set(HTTP_ERROR_CODES.values())

    assert {str(code) for code in codes} <= set(OUTCOMES)
    assert all(OUTCOMES[str(s)].verdict is Verdict.RETRY for s in (429, 503))
    # A server error may come after the carrier created the message (Twilio's 20500 page).
    assert all(OUTCOMES[str(s)].verdict is Verdict.UNCERTAIN for s in (500, 502, 504, 20500))
    assert [key for key, outcome in OUTCOMES.items() if outcome.opts_out] == ["21610"]
    assert OUTCOMES["connect"].verdict is Verdict.RETRY
    assert OUTCOMES["no_answer"].verdict is Verdict.UNCERTAIN
    assert all(outcome.description for outcome in OUTCOMES.values())


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_the_delay_honours_retry_after_and_spreads_slices_apart() -> None:
    rng = random.Random(6)

    delays = [retry_delay(0, 2.0, rng) for _ in range(200)]

    assert all(2.0 <= d <= 2.5 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150
    assert max(delays) - min(delays) > 0.4


def test_the_window_doubles_while_the_carrier_refuses_everything_up_to_a_cap() -> None:
    rng = random.Random(6)

    lows = [min(retry_delay(stalls, None, rng) for _ in range(100)) for stalls in range(8)]
    highs = [max(retry_delay(stalls, None, rng) for _ in range(100)) for stalls in range(8)]

    windows = [1, 2, 4, 8, 16, 30, 30, 30]
    assert all(w / 2 <= low < high <= w for w, low, high in zip(windows, lows, highs, strict=True))
    assert highs[-1] > MAX_WINDOW_SECONDS * 0.9
    assert retry_delay(0, 10_000, rng) <= 601


def test_stalls_come_from_the_last_attempts_heartbeat() -> None:
    assert SliceHeartbeat.from_details([]).stalls == 0
    assert SliceHeartbeat.from_details([3]).stalls == 3
    assert SliceHeartbeat.from_details(["something else"]).stalls == 0
    # An older worker's heartbeat has no time: the retry window starts at the next attempt.
    assert SliceHeartbeat.from_details([3]).deferred_since == 0.0
    assert SliceHeartbeat.from_details([3, 1700000000.5]).deferred_since == 1700000000.5
    # An older worker's heartbeat carries no counts: nothing sent before.
    assert SliceHeartbeat.from_details([3, 1700000000.5]).sent == 0
    assert SliceHeartbeat.from_details([0, 0.0, 7, 2, {"21211": 2}]).errors == {"21211": 2}
    assert SliceHeartbeat.from_details([0, 0.0, "7", 2, []]) == SliceHeartbeat()


async def test_a_slice_heartbeat_reads_back_through_the_wire() -> None:
    """As the worker hands a failed attempt's last heartbeat to the next one: through the
    data converter, the bare count that older workers send and read first, then the time,
    then what the slice sent and failed so far."""
    env = ActivityEnvironment()
    beats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    sent = SliceHeartbeat(
        stalls=2, deferred_since=1700000000.5, sent=90, failed=3, errors={"21211": 3}
    )
    env.run(sent.send)
    payloads = await DataConverter.default.encode(list(beats[-1]))
    assert [payload.data for payload in payloads][:2] == [b"2", b"1700000000.5"]
    details = await DataConverter.default.decode(payloads)
    env.info = dataclasses.replace(env.info, heartbeat_details=details)
    assert env.run(SliceHeartbeat.last) == sent


def test_the_delivery_docs_list_every_outcome_with_its_verdict() -> None:
    text = (Path(__file__).parent.parent / "docs" / "DELIVERY.md").read_text()

    documented = re.findall(r"^\| `([^`]+)` \| (failed|retry|uncertain) \|", text, re.MULTILINE)

    assert dict(documented) == {key: o.verdict.value for key, o in OUTCOMES.items()}
    assert len(documented) == len(OUTCOMES)


@given(st.dictionaries(st.text(min_size=1), st.text()))
def test_a_message_form_is_encoded_as_urlencode_encodes_it(form: dict[str, str]) -> None:
    assert form_body(form) == urlencode(form, doseq=True)


@given(st.lists(st.text(alphabet="?=&.%+ /:é" + "abc0123")), st.text())
@example(["https://herald.test/v1/webhooks/twilio/status?m=9f0c.12.1"], "Hi")
@example(["?", "??", "a?b?c", "", "https://x/?"], "")
def test_status_callbacks_are_encoded_as_urlencode_encodes_them(urls: list[str], body: str) -> None:
    # One after another, as a slice's messages are: the part before the query is kept.
    for url in urls:
        form = {"To": "+15550001111", "StatusCallback": url, "From": "+15550002222", "Body": body}
        assert form_body(form) == urlencode(form, doseq=True)


@given(st.text(alphabet=st.characters(max_codepoint=127)) | st.from_regex(r"\+[0-9]*"))
@example("+15550001111")
@example("%+ %2B+ +")
@example("Hello, Bob! 100% off: https://a.example/?x=1&y=2")
def test_ascii_text_and_numbers_are_encoded_as_quote_plus_encodes_them(text: str) -> None:
    assert form_field(text) == quote_plus(text)


def test_a_form_with_a_list_is_encoded_as_urlencode_encodes_it() -> None:
    form = {"To": "+1 212 555 0100", "MediaUrl": ["https://a.example/1?x=y", "é"]}

    assert form_body(form) == urlencode(form, doseq=True)


def test_only_an_answer_object_gives_a_sid() -> None:
    assert accepted_sid({"sid": "SM" + "a" * 32}) == "SM" + "a" * 32
    unreadable: list[object] = [[], "SM", None, {"status": "queued"}]
    assert [accepted_sid(answer) for answer in unreadable] == [None] * 4


class RecordingHttp(AsyncHttpClient):
    """twilio's HTTP seam, keeping each request it is handed and accepting it."""

    def __init__(self) -> None:
        super().__init__(logger=logging.getLogger(__name__), is_async=True)
        self.seen: list[tuple[Any, ...]] = []

    async def request(self, *args: Any, **kwargs: Any) -> Response:
        self.seen.append((args, sorted(kwargs.items(), key=str)))
        return Response(201, '{"sid": "SM' + "a" * 32 + '"}')


ACCOUNT = ("AC" + "1" * 32, "token")
maybe = st.one_of(st.just(""), st.text(max_size=20))


@settings(deadline=None, max_examples=60)
@given(st.text(max_size=20), st.text(max_size=20), maybe, maybe, maybe, maybe)
def test_a_message_goes_out_as_twilios_own_create_sends_it(
    to: str, from_: str, body: str, callback: str, content_sid: str, variables: str
) -> None:
    """Herald's lighter create hands twilio's HTTP seam the very request (method, URL, form,
    headers, auth) that twilio's `messages.create_async` does."""

    async def both() -> tuple[list[Any], list[Any]]:
        theirs, ours = RecordingHttp(), RecordingHttp()
        await Client(*ACCOUNT, http_client=theirs).messages._create_async(
            to=to,
            from_=from_,
            body=body or values.unset,
            status_callback=callback or values.unset,
            content_sid=content_sid or values.unset,
            content_variables=variables or values.unset,
        )
        form = message_form(
            to=to,
            from_=from_,
            body=body,
            status_callback=callback,
            content_sid=content_sid,
            content_variables=variables,
        )
        client = CarrierClient(*ACCOUNT, ours)
        client.created_sid(await client.create_message_request(form))
        return theirs.seen, ours.seen

    theirs, ours = asyncio.run(both())
    assert ours == theirs
    assert len(ours) == 1


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize("given_headers", [None, {}, {"Content-Type": "text/plain", "X-A": "b"}])
def test_the_client_sets_twilios_own_headers(
    method: str, given_headers: dict[str, str] | None
) -> None:
    ours = CarrierClient(*ACCOUNT, RecordingHttp())
    theirs = Client(*ACCOUNT, http_client=RecordingHttp())

    assert ours.get_headers(method, dict(given_headers or {})) == theirs.get_headers(
        method, dict(given_headers or {})
    )


def test_a_message_goes_where_twilio_sends_it_after_the_base_url_changes() -> None:
    """The Messages URL is made once for each base URL: a client pointed elsewhere (the
    emulator's, then Twilio's) posts where twilio's own would."""
    form = message_form(
        to="+15550001111",
        from_="+15550002222",
        body="hi",
        status_callback=None,
        content_sid=None,
        content_variables=None,
    )

    async def both() -> tuple[list[Any], list[Any]]:
        theirs, ours = RecordingHttp(), RecordingHttp()
        their_client, our_client = (
            Client(*ACCOUNT, http_client=theirs),
            CarrierClient(*ACCOUNT, ours),
        )
        for base_url in ("http://127.0.0.1:9", "http://127.0.0.1:9", "https://api.twilio.com"):
            their_client.api.base_url = our_client.api.base_url = base_url
            await their_client.messages._create_async(to=form["To"], from_=form["From"], body="hi")
            our_client.created_sid(await our_client.create_message_request(form))
        return theirs.seen, ours.seen

    theirs, ours = asyncio.run(both())
    assert ours == theirs
    assert [str(call[0][1]).split("/2010")[0] for call in ours] == [
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "https://api.twilio.com",
    ]


def read_as(read: Any) -> tuple[str, object]:
    """What reading an answer gives: the value (with its type), or the exception's type and
    words."""
    try:
        value = read()
    except Exception as error:
        return "raised", (type(error).__name__, str(error))
    return "read", (type(value).__name__, repr(value))


SID = "SM" + "0123456789abcdef" * 2
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(st.characters(exclude_categories=())),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["sid", "status", "x"]) | st.text(max_size=3), inner)
    ),
    max_leaves=8,
)


@st.composite
def answers(draw: st.DrawFn) -> str:
    """Answer bodies: JSON with and without a sid (NaN, infinities, lone surrogates and huge
    integers among them), objects with a key twice, and texts cut or with a character put in."""
    value = draw(json_values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        sid = draw(st.just(SID) | json_values)
        pairs = [f'"sid": {json.dumps(sid)}', f'"sid": "{SID}"', '"status": "queued"']
        text = "{" + ", ".join(draw(st.permutations(pairs))[: draw(st.integers(1, 3))]) + "}"
    edit = draw(st.sampled_from(["none", "cut", "insert"]))
    at = draw(st.integers(0, len(text)))
    if edit == "cut":
        text = text[:at]
    elif edit == "insert":
        text = text[:at] + draw(st.characters(exclude_categories=())) + text[at:]
    return text


@settings(max_examples=400)
@given(answers(), st.sampled_from([200, 201, 202, 400, 429, 500]))
@example('{"sid": "' + SID + '", "sid": "SMnot"}', 201)
@example('{"sid": "' + SID + '", "price": NaN}', 201)
@example('{"sid": "' + SID + '", "n": 123456789012345678901234567890}', 201)
@example('{"sid": "\\ud800' + SID + '"}', 201)
@example('{"sid": 123456789012345678901234567890}', 201)
@example('[{"sid": "' + SID + '"}]', 201)
@example('{"sid": "' + SID + '"} x', 201)
@example("", 201)
@example('{"code": 21211, "message": "bad To", "sid": "' + SID + '"}', 400)
def test_an_answer_gives_the_sid_twilios_own_reading_gives(text: str, status: int) -> None:
    """The sid read by orjson is the one twilio's `_parse_create` (the json module) reads,
    and whatever orjson cannot read as twilio does goes to twilio."""
    response = Response(status, text)
    ours = CarrierClient(*ACCOUNT, RecordingHttp())
    messages = Client(*ACCOUNT, http_client=RecordingHttp()).messages

    def twilios() -> object:
        return accepted_sid(messages._version._parse_create("POST", messages._uri, response))

    assert read_as(lambda: ours.created_sid(response)) == read_as(twilios)


def test_each_verdict_is_recorded_as_the_ledger_status_of_its_value() -> None:
    """A settled row's ledger status is the one named by its verdict's value; a deferred or
    unsent row goes back to `pending`, one outside its window with the time it opens."""
    verdicts = list(Verdict)
    claimed = [ClaimedMessage(seq, f"+1555000{seq:04d}", "hi") for seq in range(len(verdicts) + 1)]
    results: list[SendResult | None] = [
        SendResult(verdict=v, sid=f"SM{seq}", error_code=f"c{seq}", error_message=f"m{seq}")
        for seq, v in enumerate(verdicts)
    ]
    outcomes = _outcomes(claimed, [*results, None], [None] * len(verdicts) + [0.0])

    assert [(o.status, o.carrier_sid, o.error_code, o.error_message) for o in outcomes] == [
        (LedgerStatus.PENDING, None, None, None)
        if v is Verdict.RETRY
        else (LedgerStatus(v.value), f"SM{seq}", f"c{seq}", f"m{seq}")
        for seq, v in enumerate(verdicts)
    ] + [(LedgerStatus.PENDING, None, None, None)]
    assert [o.window_opens_at for o in outcomes][-1] == datetime.fromtimestamp(0, UTC)


async def test_a_database_outage_keeps_what_the_attempt_before_carried() -> None:
    """A slice's heartbeats while it waits out a PostgreSQL outage still carry the details its
    attempt before left: the server keeps only the last, and an attempt that died in the
    outage would leave the next one no stalls, no retry window, nothing sent before."""
    carried = SliceHeartbeat(stalls=2, deferred_since=1700000000.5, sent=90, failed=3)
    env = ActivityEnvironment()
    beats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    details = await DataConverter.default.decode(
        await DataConverter.default.encode([2, 1700000000.5, 90, 3, {}])
    )
    env.info = dataclasses.replace(env.info, heartbeat_details=details)
    answers: list[BaseException | str] = [ConnectionRefusedError("restarting"), "written"]

    async def write() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await env.run(through_outages, write) == "written"
    assert beats
    for beat in beats:
        env.info = dataclasses.replace(env.info, heartbeat_details=list(beat))
        assert env.run(SliceHeartbeat.last) == carried


def test_a_carrier_deferral_is_a_benign_failure_with_its_delay() -> None:
    # Temporal logs any other failed attempt as a warning with its traceback: one per slice
    # (or conversation message) in a throttling storm.
    deferred = carrier_deferred("carrier deferred 3 of 3 messages (20429)", 2.5)
    own_schedule = carrier_deferred("carrier deferred the message (20429)", None)

    assert deferred.category == ApplicationErrorCategory.BENIGN
    assert (deferred.type, deferred.next_retry_delay) == ("CarrierDeferred", timedelta(seconds=2.5))
    assert own_schedule.next_retry_delay is None
