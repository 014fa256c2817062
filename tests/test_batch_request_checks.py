"""A batch request is refused before its 200 for what its request, its sender and its file's
header and size show (issue 16); problems of single rows stay the batch's to report."""

import secrets
import uuid

import asyncpg
import httpx
import pytest

from settings import Settings
from store import batches
from tests.support.batches import phases, run_batch, start
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver, api_client, error_code


async def _refused(
    api: httpx.AsyncClient, account: Account, content: bytes, **body: object
) -> httpx.Response:
    file_id = await attach(api, account.headers, content)
    response = await start(api, account, file_id, **body)
    assert response.status_code == 400, response.text
    return response


def _global(account: Account, **fields: object) -> dict[str, object]:
    return {"global": {"agent_number": account.agent_number, **fields}}


async def test_a_batch_without_any_message_is_refused_at_request_time(
    api: httpx.AsyncClient, account: Account
) -> None:
    content = csv_bytes(["phone_number"], [[n] for n in unique_numbers(2)])

    response = await _refused(api, account, content, **_global(account))

    assert error_code(response) == "MISSING_AGENT_MESSAGE"
    assert "opening_message" in response.json()["errors"][0]["message"]


# "  ": a blank message is none (it was taken for one, and the batch refused, saying the
# sender had no opening message).
@pytest.mark.parametrize("message", ["", "  \n"])
async def test_the_senders_opening_message_is_sent_when_the_request_has_none(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    message: str,
) -> None:
    marker = secrets.token_hex(6)
    number = account.agent_number
    patched = await api.patch(
        f"/v1/sms/numbers/{number}",
        headers=account.headers,
        json={"opening_message": f"Hi {{{{name}}}}, {marker}"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"]["opening_message"] == f"Hi {{{{name}}}}, {marker}"
    listed = (await api.get("/v1/sms/numbers", headers=account.headers)).json()["data"]["numbers"]
    assert [n["opening_message"] for n in listed] == [f"Hi {{{{name}}}}, {marker}"]
    to = unique_numbers(1)[0]

    _, events = await run_batch(
        api, account, webhooks, csv_bytes(["phone_number", "name"], [[to, "Ann"]]), message
    )

    assert events[-1]["status"] == "completed", events[-1]
    sent = await emulator_messages(emulator_url, body_contains=marker)
    assert [(m["to"], m["body"]) for m in sent] == [(to, f"Hi Ann, {marker}")]


async def test_a_requests_own_message_wins_over_the_opening_message(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    await api.patch(
        f"/v1/sms/numbers/{account.agent_number}",
        headers=account.headers,
        json={"opening_message": f"opening {marker}"},
    )

    _, events = await run_batch(api, account, webhooks, unique_numbers(1), f"own {marker}")

    assert events[-1]["status"] == "completed"
    assert [m["body"] for m in await emulator_messages(emulator_url, body_contains=marker)] == [
        f"own {marker}"
    ]


async def test_the_opening_message_is_set_on_registration_and_removed_with_null(
    api: httpx.AsyncClient, account: Account
) -> None:
    number = unique_numbers(1)[0]
    added = await api.post(
        "/v1/sms/numbers",
        headers=account.headers,
        json={"number": number, "opening_message": "Hello from us"},
    )
    assert added.status_code == 201, added.text
    assert added.json()["data"]["opening_message"] == "Hello from us"

    cleared = await api.patch(
        f"/v1/sms/numbers/{number}", headers=account.headers, json={"opening_message": None}
    )
    kept = await api.patch(f"/v1/sms/numbers/{number}", headers=account.headers, json={})

    assert cleared.json()["data"]["opening_message"] is None
    assert kept.json()["data"]["opening_message"] is None
    empty = await api.patch(
        f"/v1/sms/numbers/{number}", headers=account.headers, json={"opening_message": ""}
    )
    assert error_code(empty) == "INVALID_REQUEST"


async def test_rows_with_their_own_message_need_no_global_one(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    to = unique_numbers(1)[0]
    content = csv_bytes(["phone_number", "agent_message"], [[to, f"row {marker}"]])

    _, events = await run_batch(api, account, webhooks, content, "")

    assert events[-1]["status"] == "completed"
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == 1


async def test_a_file_without_a_phone_number_column_is_refused_from_its_header(
    api: httpx.AsyncClient, account: Account
) -> None:
    response = await _refused(
        api,
        account,
        csv_bytes(["phone"], [["+12015550123"]]),
        **_global(account, agent_message="x"),
    )

    assert error_code(response) == "SOURCE_INVALID"
    assert response.json()["errors"][0]["message"] == (
        "the header has no column named phone_number (found 'phone')"
    )


async def test_two_phone_number_columns_are_refused_from_the_header(
    api: httpx.AsyncClient, account: Account
) -> None:
    content = b"phone_number,phone_number\n+12015550123,+12015550124\n"

    response = await _refused(api, account, content, **_global(account, agent_message="x"))

    assert error_code(response) == "DUPLICATE_PHONE_COLUMN"


async def test_a_large_csv_is_judged_by_its_header_alone(
    api: httpx.AsyncClient, account: Account
) -> None:
    """Beyond the first 64 KiB, only the header is read: this file's later rows are not."""
    rows = [[f"+1201555{i:04d}"] for i in range(8000)]

    response = await _refused(
        api, account, csv_bytes(["mobile"], rows), **_global(account, agent_message="x")
    )

    assert error_code(response) == "SOURCE_INVALID"


@pytest.mark.parametrize("line_end", [b"\r", b"\r\n"])
async def test_a_large_csv_of_any_line_end_is_judged_by_its_header(
    api: httpx.AsyncClient, account: Account, line_end: bytes
) -> None:
    """Excel's "CSV (Macintosh)" ends lines with a lone CR: its header is found all the same."""
    content = line_end.join([b"phone_number"] + [f"+1201555{i:04d}".encode() for i in range(8000)])

    response = await _refused(api, account, content + line_end, **_global(account))

    assert error_code(response) == "MISSING_AGENT_MESSAGE"


async def test_unknown_template_variables_are_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    content = csv_bytes(["phone_number", "first_name"], [[unique_numbers(1)[0], "Al"]])

    response = await _refused(
        api,
        account,
        content,
        **_global(
            account,
            agent_message="Hi {{first_name}}, {{city}} {{plan}} {{city}}",
            request_data={"plan": "gold"},
        ),
    )

    assert error_code(response) == "MISSING_VARIABLE"
    assert response.json()["errors"][0]["message"] == (
        "the message uses {{city}}, which no column of the file and no default in"
        " global.request_data gives"
    )


async def test_variables_from_mapped_and_dotted_columns_are_known(
    api: httpx.AsyncClient, account: Account
) -> None:
    to = unique_numbers(1)[0]
    content = csv_bytes(["phone_number", "c", "request_data.d"], [[to, "x", "y"]])
    file_id = await attach(api, account.headers, content)

    response = await start(
        api,
        account,
        file_id,
        column_mapping={"c": "request_data.city"},
        **_global(account, agent_message="{{city}} {{d}}"),
    )

    assert response.status_code == 200, response.text


async def test_a_row_missing_a_known_variable_is_still_rejected_by_the_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    numbers = unique_numbers(2)
    content = csv_bytes(["phone_number", "name"], [[numbers[0], "Al"], [numbers[1], ""]])

    batch_id, events = await run_batch(api, account, webhooks, content, "Hi {{name}}")

    assert events[-1]["status"] == "completed_partial"
    errors = await api.get(f"/v1/sms/batch/{batch_id}/errors", headers=account.headers)
    assert [r["code"] for r in errors.json()["data"]["rejected_rows"]] == ["missing_variable"]


async def test_strict_with_a_header_problem_is_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    content = csv_bytes(["phone_number", "last name"], [[unique_numbers(1)[0], "Li"]])

    response = await _refused(
        api, account, content, strict=True, **_global(account, agent_message="x")
    )

    assert error_code(response) == "VALIDATION_FAILED"
    assert "header invalid_column_name ('last name')" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize("line_end", [b"\n", b"\r", b"\r\n"])
async def test_more_rows_than_the_limit_are_refused_with_nothing_recorded(
    settings: Settings, account: Account, pool: asyncpg.Pool, line_end: bytes
) -> None:
    small = settings.model_copy(update={"max_rows_per_batch": 3})
    numbers = unique_numbers(5)
    async with api_client(small) as api:
        over = await attach(
            api,
            account.headers,
            line_end.join([b"phone_number"] + [n.encode() for n in numbers[:4]]),
        )
        # Blank lines and a quoted line break are lines, not rows: 3 rows in 6 lines.
        content = (
            b"phone_number,note\n"
            + numbers[0].encode()
            + b',"two\nlines"\n\n'
            + numbers[1].encode()
            + b",\n,\n"
            + numbers[2].encode()
            + b",\n"
        )
        within = await attach(api, account.headers, content)
        refused = await start(api, account, over, **_global(account, agent_message="x"))
        accepted = await start(api, account, within, **_global(account, agent_message="x"))

    assert refused.status_code == 400, refused.text
    assert error_code(refused) == "TOO_MANY_RECIPIENTS"
    assert "more than 3 rows" in refused.json()["errors"][0]["message"]
    assert await batches.get_batch(pool, account.account_id, uuid.UUID(over)) is None
    assert accepted.status_code == 200, accepted.text


async def test_inline_rows_get_the_same_header_checks(
    api: httpx.AsyncClient, account: Account
) -> None:
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={"recipients": [{"mobile": "+12015550123"}], **_global(account, agent_message="x")},
    )

    assert error_code(response) == "SOURCE_INVALID"


async def test_row_problems_still_come_after_the_200(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    content = csv_bytes(["phone_number"], [["not a number"], [unique_numbers(1)[0]]])

    _, events = await run_batch(api, account, webhooks, content, "hello", strict=True)

    assert phases(events) == ["validating", "failed"]
    assert events[-1]["code"] == "validation_failed"
