"""What PostgreSQL cannot store never reaches it: NUL characters and lone surrogates in any
text, non-finite or over-64-bit numbers in JSON bodies, and over-large integers in queries
and headers are 400 with a stable code, for every route, before any route runs."""

import json
import re
import tracemalloc
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.input_checks import INT64_MAX, check_json
from settings import INBOUND_PATH
from tests.support.batches import start
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.stack import Account, app_routes, error_code

ROUTES = sorted(app_routes())
ROUTES_WITH_IDS = [(m, p) for m, p in ROUTES if "{" in p]

# Raw JSON, as a client could send it; Python's json module reads all of these.
UNSTORABLE_TEXT = [
    '{"name": "a\\u0000b"}',
    '{"global": {"metadata": {"note": "\\ud800"}}}',
    '{"global": {"request_data": {"a\\u0000": "key"}}}',
    '{"statuses": ["\\udfff"]}',
]
UNSTORABLE_NUMBERS = [
    '{"mps": Infinity}',
    '{"time_out": -Infinity}',
    '{"spread_hours": NaN}',
    '{"global": {"metadata": {"n": 1e400}}}',
    '{"persona_version": 9223372036854775808}',
    '{"metadata": [-9223372036854775809]}',
]
# Nested deeper than MAX_JSON_DEPTH: pydantic cannot serialize 300 levels, nor json read 10**5.
DEEP_JSON = [
    '{"global": {"metadata": ' + "[" * 300 + "]" * 300 + "}}",
    '{"request_data": ' + '{"a": ' * 100 + "1" + "}" * 101,
    "[" * 100_000 + "]" * 100_000,
]


def with_ids(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


@pytest.mark.parametrize("body", UNSTORABLE_TEXT + UNSTORABLE_NUMBERS + DEEP_JSON)
@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_refuses_a_json_body_postgresql_cannot_store(
    api: httpx.AsyncClient, account: Account, method: str, path: str, body: str
) -> None:
    response = await api.request(
        method,
        with_ids(path, "x"),
        headers=account.headers | {"content-type": "application/json"},
        content=body,
    )

    expected = (
        "INVALID_TEXT"
        if body in UNSTORABLE_TEXT
        else "INVALID_NUMBER"
        if body in UNSTORABLE_NUMBERS
        else "INVALID_REQUEST"
    )
    assert (response.status_code, error_code(response)) == (400, expected), response.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        # Past the json module's 4,300 digits (beyond 64 bits too).
        (b'{"name": 1' + b"0" * 5000 + b"}", "INVALID_NUMBER"),
        (b'{"name": "\xff"}', "INVALID_REQUEST"),
    ],
)
async def test_a_body_the_json_module_cannot_read_past_its_syntax_gets_a_code_that_says_why(
    api: httpx.AsyncClient, account: Account, body: bytes, code: str
) -> None:
    # Both were FastAPI's "There was an error parsing the body", code HTTP_ERROR.
    headers = account.headers | {"content-type": "application/json"}
    response = await api.post("/v1/sms/batch", headers=headers, content=body)

    assert (response.status_code, error_code(response)) == (400, code), response.text


@pytest.mark.parametrize(("method", "path"), ROUTES_WITH_IDS)
async def test_every_route_refuses_a_nul_in_its_path(
    api: httpx.AsyncClient, account: Account, method: str, path: str
) -> None:
    response = await api.request(method, with_ids(path, "a%00b"), headers=account.headers)

    assert (response.status_code, error_code(response)) == (400, "INVALID_TEXT"), response.text


async def test_a_nul_in_a_query_form_or_a_files_name_or_type_is_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    query = await api.get("/v1/sms/conversations?user_number=%00", headers=account.headers)
    form = await api.post(
        INBOUND_PATH,
        headers={"content-type": "application/x-www-form-urlencoded"},
        content=b"From=%2B12125550123&To=%2B15005550006&Body=a%00b&MessageSid=SM1",
    )
    # Written by hand: httpx would percent-encode the NUL in the file name.
    upload = await api.post(
        "/v1/files/attach",
        headers=account.headers | {"content-type": "multipart/form-data; boundary=b"},
        content=(
            b'--b\r\ncontent-disposition: form-data; name="file_type"\r\n\r\nbatches\r\n'
            b'--b\r\ncontent-disposition: form-data; name="file"; filename="a\x00.csv"\r\n'
            b"content-type: text/csv\r\n\r\nphone_number\n+12125550123\n\r\n--b--\r\n"
        ),
    )
    typed = await api.post(
        "/v1/files/attach",
        headers=account.headers | {"content-type": "multipart/form-data; boundary=b"},
        content=(
            b'--b\r\ncontent-disposition: form-data; name="file_type"\r\n\r\nbatches\r\n'
            b'--b\r\ncontent-disposition: form-data; name="file"; filename="a.csv"\r\n'
            b"content-type: text/c\x00sv\r\n\r\nphone_number\n+12125550123\n\r\n--b--\r\n"
        ),
    )

    for response in (query, form, upload, typed):
        assert (response.status_code, error_code(response)) == (400, "INVALID_TEXT"), response.text


def sends(account: Account) -> list[dict[str, Any]]:
    send = {"user_number": "+12125550123", "agent_number": account.agent_number}
    return [
        send | {"agent_message": "a\x00b"},
        send | {"agent_message": "hi", "request_data": {"name": "\ud800"}},
        send | {"agent_message": "hi", "metadata": {"a": ["\x00"]}},
        send | {"agent_message": "hi", "timeout_message": "\udc00", "time_out": 60},
        send | {"agent_message": "hi", "persona_id": "p\x00"},
    ]


async def test_the_fields_that_reached_postgresql_are_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in unique_numbers(1)])
    )
    batch = {"file_id": file_id, "global": {"agent_number": account.agent_number}}
    batches = [
        batch | {"name": "a\x00b"},
        batch | {"global": {"agent_number": account.agent_number, "metadata": {"k": "\ud800"}}},
        batch | {"global": {"agent_number": account.agent_number, "agent_message": "hi \x00"}},
    ]
    # Encoded here: httpx encodes JSON as UTF-8 text, which cannot hold a lone surrogate.
    headers = account.headers | {"content-type": "application/json"}

    replies = [
        await api.post("/v1/sms/batch", headers=headers, content=json.dumps(body))
        for body in batches
    ]
    replies += [
        await api.post("/v1/sms/send", headers=headers, content=json.dumps(body))
        for body in sends(account)
    ]

    for response in replies:
        assert (response.status_code, error_code(response)) == (400, "INVALID_TEXT"), response.text


async def test_integers_beyond_what_postgresql_holds_are_refused_in_queries_and_headers(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in unique_numbers(1)])
    )
    message = {"agent_number": account.agent_number, "agent_message": "hi"}
    started = await start(api, account, file_id, **{"global": message})
    assert started.status_code == 200, started.text
    batch = started.json()["data"]["batch_id"]
    big = str(2**63)
    queries = [
        f"/v1/sms/batches?limit={big}",
        f"/v1/sms/conversations?limit={big}",
        "/v1/sms/conversations?limit=92689098387741114368",  # found by schemathesis
        f"/v1/sms/batch/{batch}/messages?limit={big}",
        f"/v1/sms/batch/{batch}/messages?limit=1e20",
        f"/v1/sms/batch/{batch}/messages?limit={10**20}",
        f"/v1/sms/batch/{batch}/errors?limit={big}",
    ]

    replies = [await api.get(path, headers=account.headers) for path in queries]
    for last_event_id in ("1e20", str(10**20), str(2**40), "167753589166675", "-1"):
        replies.append(
            await api.get(
                f"/v1/sms/batch/{batch}/events",
                headers=account.headers | {"last-event-id": last_event_id},
            )
        )

    for response in replies:
        assert (response.status_code, error_code(response)) == (400, "INVALID_REQUEST"), (
            response.request.url,
            response.text,
        )


def nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def test_a_body_nested_deeper_than_the_limit_is_refused_and_nothing_is_kept(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in unique_numbers(1)])
    )
    message = {"agent_number": account.agent_number, "agent_message": "hi"}
    send = {"user_number": unique_numbers(1)[0], **message}
    # The body is the first level, metadata the third: 64 levels in all pass.
    deepest = await start(api, account, file_id, **{"global": message | {"metadata": nested(62)}})
    assert deepest.status_code == 200, deepest.text
    deep = nested(300)

    replies = [
        await start(api, account, file_id, **{"global": message | {"metadata": deep}}),
        await start(api, account, file_id, **{"global": message}, request_data=deep),
        await api.post(
            "/v1/sms/send",
            headers=account.headers | {"idempotency-key": "deep"},
            json=send | {"metadata": deep},
        ),
        await api.post("/v1/sms/send", headers=account.headers, json=send | {"metadata": deep}),
        await api.post(
            "/send/batch",
            headers=account.headers,
            json={"originator": account.agent_number, "recipients": [deep]},
        ),
    ]

    for response in replies:
        assert (response.status_code, error_code(response)) == (400, "INVALID_REQUEST"), (
            response.text
        )
    conversations = await api.get("/v1/sms/conversations", headers=account.headers)
    assert conversations.status_code == 200, conversations.text
    assert conversations.json()["data"]["conversations"] == []


# A content template's variables as a JSON string, Twilio's form: parsed, then checked as a
# JSON body is.
VARIABLES_STRINGS = [
    ('{"1": "a\\u0000b"}', "INVALID_TEXT"),
    ('{"1": ["\\ud800"]}', "INVALID_TEXT"),
    ('{"a\\u0000": "key"}', "INVALID_TEXT"),
    ('{"1": 1e400}', "INVALID_NUMBER"),
    ('{"1": ' + "[" * 300 + "]" * 300 + "}", "INVALID_REQUEST"),
    ('{"1": ' + "[" * 100_000 + "]" * 100_000 + "}", "INVALID_REQUEST"),
]


@pytest.mark.parametrize(("variables", "code"), VARIABLES_STRINGS)
async def test_content_variables_given_as_a_string_are_checked_as_a_body_is(
    api: httpx.AsyncClient, account: Account, variables: str, code: str
) -> None:
    template = {"content_sid": "HX1", "content_variables": variables}
    send = {"user_number": unique_numbers(1)[0], "agent_number": account.agent_number}
    settings_global = {"agent_number": account.agent_number, "agent_message": "hi"}

    replies = [
        await api.post("/v1/sms/send", headers=account.headers, json=send | template),
        await api.post(
            "/v1/sms/batch",
            headers=account.headers,
            json={
                "recipients": [{"phone_number": unique_numbers(1)[0]}],
                "global": settings_global | template,
            },
        ),
    ]

    for response in replies:
        assert (response.status_code, error_code(response)) == (400, code), response.text


def test_every_integer_in_a_query_or_header_has_an_upper_bound() -> None:
    unbounded = [
        f"{method.upper()} {path} {param['name']}"
        for path, operations in create_app().openapi()["paths"].items()
        for method, operation in operations.items()
        for param in operation.get("parameters", [])
        if param["in"] in ("query", "header")
        and param["schema"].get("type") == "integer"
        and param["schema"].get("maximum", INT64_MAX + 1) > INT64_MAX
    ]

    assert unbounded == []


async def test_a_json_body_without_a_content_type_is_read_as_json(
    api: httpx.AsyncClient, account: Account
) -> None:
    """`Content-Type` left out (a client's own HTTP code often does): the body is read as
    JSON, as the input checks read it. Before, FastAPI read it as bytes and the request was
    refused as no object at all."""
    number = unique_numbers(1)[0]

    response = await api.post(
        "/v1/sms/numbers", headers=account.headers, content=json.dumps({"number": number}).encode()
    )

    assert "content-type" not in response.request.headers
    assert response.status_code == 201, response.text
    assert response.json()["data"]["number"] == number


async def test_a_json_body_with_an_empty_content_type_is_checked_as_json(
    api: httpx.AsyncClient, account: Account
) -> None:
    """An empty `Content-Type` is read as JSON, as none is: its body is checked as JSON's
    is, not passed on unchecked for PostgreSQL to refuse."""
    response = await api.post(
        "/v1/sms/numbers",
        headers=account.headers | {"content-type": ""},
        content=b'{"number": "+15005550006", "webhook": "a\\u0000b"}',
    )

    assert (response.status_code, error_code(response)) == (400, "INVALID_TEXT"), response.text


@pytest.mark.parametrize(
    ("path", "sent_as"),
    [
        ("/v1/sms/numbers", "application/x-www-form-urlencoded"),
        ("/v1/sms/numbers", "text/plain"),
        ("/send/batch", "application/x-www-form-urlencoded"),
    ],
)
async def test_a_json_body_sent_as_another_type_says_to_send_it_as_json(
    api: httpx.AsyncClient, account: Account, path: str, sent_as: str
) -> None:
    """`curl -d` sends a form's type: the answer says what to send instead, in the envelope
    of the API the request came by, rather than that the body is no object."""
    response = await api.post(
        path,
        headers={"Authorization": f"Bearer {account.key}", "content-type": sent_as},
        content=b'{"number": "+15005550006"}',
    )

    assert (response.status_code, error_code(response)) == (400, "INVALID_REQUEST")
    assert "Content-Type: application/json" in response.text
    assert sent_as in response.text


def test_a_long_key_over_many_items_costs_its_body_not_the_product() -> None:
    """Where each value is was written out for every value as it was queued: a key's text
    copied into each item under it, so a body of 1 MB (a 500,000-character key over 250,000
    numbers), checked before any key or route, took gigabytes. Here 100 KB of key over
    10,000 items took 1 GB."""
    long_key = "k" * 100_000
    document = {long_key: [0] * 10_000}
    tracemalloc.start()
    try:
        check_json(document)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, peak


async def test_an_error_names_a_long_key_by_its_start() -> None:
    """A key an error names is the caller's own text, echoed: its first 64 characters."""
    body = json.dumps({"global": {"metadata": {"x" * 10_000: ["ok", "a\u0000b"]}}})
    app = create_app()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://herald.test"
    ) as api:
        response = await api.post(
            "/v1/sms/batch", content=body, headers={"content-type": "application/json"}
        )

    assert (response.status_code, error_code(response)) == (400, "INVALID_TEXT")
    message = response.json()["errors"][0]["message"]
    assert message == (
        f"body.global.metadata.{'x' * 64}...[1] holds a NUL character or a lone surrogate"
    )


async def test_an_error_echoes_no_more_than_a_thousand_characters_of_what_it_names(
    api: httpx.AsyncClient, account: Account
) -> None:
    """A list id of 100,000 characters came back whole in LIST_NOT_FOUND's message (and
    twice in Mobivate's envelope): an 8 MB body echoed 16 MB."""
    long_id = "l" * 100_000
    herald = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "global": {"agent_number": account.agent_number, "agent_message": "hi"},
            "lists": [{"id": long_id}],
        },
    )
    mobivate = await api.post(
        "/send/batch",
        headers={"Authorization": f"Bearer {account.key}"},
        json={
            "originator": account.agent_number,
            "text": "hi",
            "recipients": [{"recipient": long_id, "meta": {"type": "mailinglist"}}],
        },
    )

    assert (herald.status_code, error_code(herald)) == (404, "LIST_NOT_FOUND")
    assert error_code(mobivate) == "LIST_NOT_FOUND", mobivate.text
    assert len(herald.content) < 2_000 and len(mobivate.content) < 4_000
