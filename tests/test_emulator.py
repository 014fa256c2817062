"""The carrier emulator agrees with Twilio's own OpenAPI description of CreateMessage, and
behaves as Twilio does for the things Herald relies on: auth, errors, magic numbers,
signed status callbacks."""

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import hypothesis
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from activities.providers.http1 import Origin
from api.receipt_listener import NO_CONTENT, NO_CONTENT_CLOSE
from deploy.local.callback_poster import CallbackPoster
from deploy.local.emulator import (
    KNOWN_PARAMETERS,
    MESSAGES_PATH,
    Carrier,
    Faults,
    StatusCallbacks,
    form_body,
    running,
)
from deploy.local.processes import free_port
from settings import Settings
from tests.support.sending import eventually
from tests.support.stack import AUTH_TOKEN
from tests.support.web import served

# The CreateMessage part of Twilio's OpenAPI document; source and licence in data/README.md.
SPEC_PATH = Path(__file__).parent / "data" / "twilio_api_v2010_messages.json"
ACCOUNT_SID = "AC" + "1" * 32


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


def create_message_operation(spec: dict[str, Any]) -> dict[str, Any]:
    operation = spec["paths"][MESSAGES_PATH.replace("{account_sid}", "{AccountSid}")]["post"]
    assert operation["operationId"] == "CreateMessage"
    return operation


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def conformance_errors(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """What in `value` breaks the OpenAPI 3.0 `schema` (types, nullability, enums, patterns)."""
    schema = resolve(spec, schema)
    if value is None:
        return [] if schema.get("nullable") else ["null where not nullable"]
    kinds = {"string": str, "integer": int, "object": dict, "array": list, "boolean": bool}
    expected = kinds.get(schema.get("type", ""))
    if expected is not None and not isinstance(value, expected):
        return [f"{value!r} is not {schema['type']}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{value!r} not in enum")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{value!r} does not match {schema['pattern']}")
    if schema.get("type") == "object" and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                errors.append(f"unknown property {key}")
            else:
                errors += [
                    f"{key}: {e}" for e in conformance_errors(spec, schema["properties"][key], item)
                ]
    return errors


async def create(
    emulator_url: str, form: dict[str, str], auth: tuple[str, str] = (ACCOUNT_SID, AUTH_TOKEN)
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            emulator_url + MESSAGES_PATH.format(account_sid=ACCOUNT_SID), data=form, auth=auth
        )


def test_every_parameter_the_emulator_takes_is_a_createmessage_parameter(spec: dict) -> None:
    body = create_message_operation(spec)["requestBody"]["content"]
    properties = body["application/x-www-form-urlencoded"]["schema"]["properties"]

    assert KNOWN_PARAMETERS <= set(properties)


async def test_a_created_message_matches_twilios_message_schema(
    spec: dict, emulator_url: str
) -> None:
    response = await create(
        emulator_url, {"To": "+12015550142", "From": "+15005550006", "Body": "schema check"}
    )

    operation = create_message_operation(spec)
    schema = operation["responses"]["201"]["content"]["application/json"]["schema"]
    reply = response.json()
    assert response.status_code == 201
    assert conformance_errors(spec, schema, reply) == []
    assert set(reply) == set(resolve(spec, schema)["properties"])
    assert (reply["to"], reply["from"], reply["body"], reply["status"]) == (
        "+12015550142",
        "+15005550006",
        "schema check",
        "queued",
    )


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        ({"To": "+15005550001", "From": "+15005550006", "Body": "x"}, 400, 21211),
        ({"To": "+15005550002", "From": "+15005550006", "Body": "x"}, 400, 21612),
        ({"To": "+15005550003", "From": "+15005550006", "Body": "x"}, 400, 21408),
        ({"To": "+15005550004", "From": "+15005550006", "Body": "x"}, 400, 21610),
        ({"To": "+15005550009", "From": "+15005550006", "Body": "x"}, 400, 21614),
        ({"To": "+12015550142", "From": "+15005550001", "Body": "x"}, 400, 21212),
        ({"To": "+12015550142", "From": "+15005550007", "Body": "x"}, 400, 21606),
        ({"To": "+12015550142", "From": "+15005550008", "Body": "x"}, 400, 21611),
        ({"To": "+12015550142", "From": "Acme Bank 12", "Body": "x"}, 400, 21212),
        ({"To": "+12015550142", "From": "12345", "Body": "x"}, 400, 21212),
        ({"To": "+12015550142", "From": "whatsapp:Acme", "Body": "x"}, 400, 21212),
        ({"From": "+15005550006", "Body": "x"}, 400, 21604),
        ({"To": "+12015550142", "Body": "x"}, 400, 21603),
        ({"To": "+12015550142", "From": "+15005550006"}, 400, 21602),
        ({"To": "+12015550142", "From": "+15005550006", "Body": "x", "Bogus": "1"}, 400, 21000),
    ],
)
async def test_errors_are_twilio_shaped(
    emulator_url: str, form: dict[str, str], status: int, code: int
) -> None:
    response = await create(emulator_url, form)

    assert response.status_code == status
    assert response.json() == {
        "code": code,
        "message": response.json()["message"],
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


async def test_wrong_credentials_are_refused(emulator_url: str) -> None:
    response = await create(
        emulator_url,
        {"To": "+12015550142", "From": "+15005550006", "Body": "x"},
        auth=(ACCOUNT_SID, "wrong"),
    )

    assert response.status_code == 401
    assert response.json()["code"] == 20003


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()],
)
async def test_malformed_credentials_are_refused(emulator_url: str, authorization: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            emulator_url + MESSAGES_PATH.format(account_sid=ACCOUNT_SID),
            data={"To": "+12015550142", "From": "+15005550006", "Body": "x"},
            headers={"Authorization": authorization},
        )

    assert response.status_code == 401
    assert response.json()["code"] == 20003


async def test_unknown_paths_and_methods_are_told_apart(emulator_url: str) -> None:
    async with httpx.AsyncClient() as client:
        missing = await client.get(f"{emulator_url}/2010-04-01/Accounts/AC1/Calls.json")
        wrong_method = await client.put(f"{emulator_url}/_emulator/stats")

    assert (missing.status_code, wrong_method.status_code) == (404, 405)


async def test_a_malformed_request_gets_400_and_a_closed_connection(emulator_url: str) -> None:
    host, port = emulator_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in answer


@pytest.fixture
async def callback_receiver() -> AsyncIterator[tuple[str, asyncio.Queue]]:
    received: asyncio.Queue[tuple[str, dict[str, str], str]] = asyncio.Queue()

    async def collect(request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        await received.put((str(request.url), params, request.headers["X-Twilio-Signature"]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", collect)
    async with served(app) as url:
        yield f"{url}/status", received


async def stats_of(emulator: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{emulator}/_emulator/stats")).json()


@pytest.fixture
async def calling_emulator() -> AsyncIterator[str]:
    """An emulator of its own, posting status callbacks (the session's posts none)."""
    port = free_port()
    async with running(Carrier(auth_token=AUTH_TOKEN, faults=Faults()), "127.0.0.1", port):
        yield f"http://127.0.0.1:{port}"


async def test_status_callbacks_are_signed_and_arrive_in_order(
    calling_emulator: str,
    emulator_url: str,
    settings: Settings,
    callback_receiver: tuple[str, asyncio.Queue],
) -> None:
    url, received = callback_receiver
    form = {"To": "+12015550143", "From": "+15005550006", "Body": "cb", "StatusCallback": url}
    response = await create(calling_emulator, form)
    sid = response.json()["sid"]
    quiet = await create(emulator_url, form)

    callbacks = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]
    await asyncio.sleep(0.3)  # the quiet emulator's would have come by now

    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    assert [params["MessageStatus"] for _, params, _ in callbacks] == ["sent", "delivered"]
    assert all(params["MessageSid"] == sid for _, params, _ in callbacks)
    assert all(validator.validate(u, params, signature) for u, params, signature in callbacks)
    assert not RequestValidator("another-token").validate(*callbacks[0])
    assert quiet.status_code == 201
    assert received.empty()
    # Each callback counted by the answer it got (here the receiver's 204s).
    stats = await eventually(
        lambda: stats_of(calling_emulator), lambda s: sum(s["callbacks"].values()) == 2
    )
    assert stats["callbacks"] == {"204": 2}


@pytest.mark.parametrize("pipelining", [True, False])
async def test_many_messages_callbacks_each_arrive_once_signed_sent_first(
    calling_emulator: str,
    settings: Settings,
    callback_receiver: tuple[str, asyncio.Queue],
    pipelining: bool,
) -> None:
    url, received = callback_receiver
    async with httpx.AsyncClient() as http:
        config = f"{calling_emulator}/_emulator/config"
        configured = await http.post(config, json={"callback_pipelining": pipelining})
    forms = [
        {"To": f"+1201555{i:04d}", "From": "+15005550006", "Body": "cb", "StatusCallback": url}
        for i in range(60)
    ]
    # Sent together: their callbacks come due together (pipelined on a connection, or not).
    sids = [
        r.json()["sid"] for r in await asyncio.gather(*(create(calling_emulator, f) for f in forms))
    ]
    callbacks = [await asyncio.wait_for(received.get(), 10) for _ in range(120)]
    stats = await eventually(
        lambda: stats_of(calling_emulator), lambda s: sum(s["callbacks"].values()) == 120
    )

    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    assert configured.json()["callback_pipelining"] is pipelining
    statuses = [(params["MessageSid"], params["MessageStatus"]) for _, params, _ in callbacks]
    assert sorted(statuses) == sorted((sid, s) for sid in sids for s in ("sent", "delivered"))
    assert all(statuses.index((sid, "sent")) < statuses.index((sid, "delivered")) for sid in sids)
    assert all(validator.validate(u, params, signature) for u, params, signature in callbacks)
    assert stats["callbacks"] == {"204": 120}


UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n"


@pytest.mark.parametrize(
    ("reads", "statuses"),
    [
        # Whole 204s, read together and apart.
        ([NO_CONTENT * 3], [204, 204, 204]),
        ([NO_CONTENT, NO_CONTENT * 2], [204, 204, 204]),
        # A 204 split over reads, then whole ones behind it.
        ([NO_CONTENT + NO_CONTENT[:9], NO_CONTENT[9:] + NO_CONTENT], [204, 204, 204]),
        # A 503 whose body, read on its own, is a 204's bytes: it is the 503's body.
        ([UNAVAILABLE % len(NO_CONTENT), NO_CONTENT, NO_CONTENT * 2], [503, 204, 204]),
        ([NO_CONTENT + UNAVAILABLE % 0, NO_CONTENT], [204, 503, 204]),
        # More 204s than requests written: only those owed are answers.
        ([NO_CONTENT * 5], [204, 204, 204]),
        # A 204 that closes the connection: the requests after it get no answer.
        ([NO_CONTENT_CLOSE], [204, None, None]),
    ],
)
async def test_the_poster_gives_each_request_the_status_of_its_answer_however_it_is_read(
    reads: list[bytes], statuses: list[int | None]
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = b""
        while received.count(b"POST ") < len(statuses):
            received += await reader.read(65536)
        for data in reads:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.05)  # each its own read on the poster's side
        if b"close" in b"".join(reads):
            writer.close()
        else:
            await reader.read()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # What the loop is told of errors in the poster's protocol (each told when raised).
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    poster = CallbackPoster(connections=1, timeout=10, pipeline=True)
    route = poster.route(Origin("http", "127.0.0.1", port))
    answers: list[int | None] = []
    done = asyncio.Event()

    def answered(status: int | None) -> None:
        answers.append(status)
        if len(answers) == len(statuses):
            done.set()

    request = b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    for _ in statuses:
        poster.post(route, request, answered)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        loop.set_exception_handler(handler)
        await poster.close()
        server.close()

    assert answers == statuses
    assert errors == []


# Field values as Twilio's may come: anything but lone surrogates (no UTF-8 for them).
field_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
numbers = st.one_of(st.from_regex(r"\+[0-9]{6,15}", fullmatch=True), field_text)
callback_urls = st.sampled_from(
    [
        "http://127.0.0.1:8123/v1/webhooks/twilio/status",
        "https://herald.example/v1/webhooks/twilio/status?source=sms",
        # A batch message's own (store/receipts.py keyed_url).
        "http://127.0.0.1:8123/v1/webhooks/twilio/status?m=0b5e8c1e-6f0e-4c36-9d1a-2f4b7a1c9e3d.17.1",
    ]
)


@hypothesis.settings(max_examples=300, deadline=None)
@given(
    callback_urls,
    field_text,
    st.from_regex(r"SM[0-9a-f]{32}", fullmatch=True) | field_text,
    st.sampled_from(["sent", "delivered", "undelivered", "failed"]) | field_text,
    numbers,
    numbers,
    st.none() | field_text,
)
def test_a_status_callbacks_request_is_the_form_twilio_posts_signed_as_twilio_signs(
    url: str,
    account_sid: str,
    sid: str,
    status: str,
    to: str,
    from_: str,
    error_code: str | None,
) -> None:
    # The emulator's callbacks come from a template and an HMAC seeded with what they share
    # (StatusCallbacks): the same bytes as the form built from its params, urlencoded, and
    # signed by twilio's own RequestValidator.
    params = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "From": from_,
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": to,
    }
    if error_code is not None:
        params["ErrorCode"] = error_code
    # One instance for the URL without its query: each message's callbacks add their own.
    base, _, query = url.partition("?")
    callbacks = StatusCallbacks(AUTH_TOKEN, base, account_sid)
    # A callback of another message first: what the instance remembers writing of it (the
    # statuses and senders it repeats) leaves the next one as if it were the first.
    callbacks.request(query + "0", sid + "0", status, from_, to, error_code)
    request = callbacks.request(query, sid, status, to, from_, error_code)

    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    assert lines[0] == f"POST {target} HTTP/1.1"
    assert headers == {
        "Host": parts.netloc,
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, params),
        "Content-Length": str(len(body)),
    }
    assert body == urlencode(params).encode()
    assert form_body(params) == body
