"""The Postman dialect, `POST /campaigns/{campaignId}/batch/messages`, on the real stack: the
documented CSV sent in each row's language, the whole file refused for any row in error, and
each documented error in the dialect's envelope."""

import csv
import io
import secrets
import uuid
from typing import Any
from unittest.mock import ANY

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from activities.recipients.phones import POSSIBLE
from activities.recipients.rows import RecipientRules
from api.services import postman as service
from settings import Settings
from store import campaigns, files
from tests.support.batches import FINAL, phases, start, stored_files, wait_for_status
from tests.support.builders import attach, emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows
from tests.support.postman_example import (
    BATCH_NOT_RETRYABLE,
    EXAMPLE_CSV,
    FILE_TOO_LARGE,
    HEADER_MISMATCH,
    INVALID_API_KEY,
    INVALID_IP_ADDRESS,
    NO_FAILED_MESSAGES,
    TEMPLATES,
    TOO_MANY_REQUESTS,
    stored_rows,
)
from tests.support.sending import inbound_form, post_inbound, received_by
from tests.support.stack import Account, Configure, api_client
from workflows.contracts import RECIPIENT_COUNT, batch_workflow_id

# The example's numbers are possible Singapore numbers but not valid ones: the dialect's
# batches take possible numbers, and most tests write unique valid ones in their place (the
# emulator's messages are read by number), without `+` as there.
EXAMPLE_NUMBERS = ("6599999999", "6599999998")


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.key}"}


def example_with(numbers: list[str]) -> str:
    text = EXAMPLE_CSV
    for documented, number in zip(EXAMPLE_NUMBERS, numbers, strict=True):
        text = text.replace(documented, number.removeprefix("+"))
    return text


async def new_campaign(
    api: httpx.AsyncClient,
    account: Account,
    templates: dict[str, str] = TEMPLATES,
    allowed_ips: list[str] | None = None,
) -> str:
    body: dict[str, Any] = {
        "name": "Passports",
        "sender": account.agent_number,
        "templates": templates,
        "allowed_ips": allowed_ips,
    }
    response = await api.post("/v1/campaigns", headers=account.headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


async def upload(
    api: httpx.AsyncClient, campaign_id: str, content: str | bytes, headers: dict[str, str]
) -> httpx.Response:
    data = content.encode() if isinstance(content, str) else content
    return await api.post(
        f"/campaigns/{campaign_id}/batch/messages",
        headers=headers,
        files={"file": ("recipients.csv", data, "text/csv")},
    )


async def batch_count(api: httpx.AsyncClient, account: Account) -> int:
    response = await api.get("/v1/sms/batches", headers=account.headers)
    return len(response.json()["data"]["batches"])


async def test_the_documented_example_is_sent_in_each_rows_language(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)

    response = await upload(api, campaign_id, example_with(numbers), bearer(account))

    assert response.status_code == 201, response.text
    reply = response.json()
    assert reply.keys() == {"isValid", "batchId"}
    assert reply["isValid"] is True
    batch = await wait_for_status(api, account, reply["batchId"], *FINAL)
    assert batch["status"] == "completed"
    assert batch["name"] == "Passports"
    received = [m for n in numbers for m in await emulator_messages(emulator_url, to=n)]
    assert [(m["to"], m["from"], m["body"]) for m in received] == [
        (
            numbers[0],
            account.agent_number,
            "Dear Emily Yeo, your passport application #12345F is ready.",
        ),
        (numbers[1], account.agent_number, "James Tan 您的passport application #67890A已准备好。"),
    ]


async def test_the_documented_example_is_sent_verbatim_to_its_own_numbers(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    templates = {language: f"{text} {marker}" for language, text in TEMPLATES.items()}
    campaign_id = await new_campaign(api, account, templates)

    response = await upload(api, campaign_id, EXAMPLE_CSV, bearer(account))

    assert response.status_code == 201, response.text
    batch = await wait_for_status(api, account, response.json()["batchId"], *FINAL)
    assert batch["status"] == "completed"
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert sorted(m["to"] for m in received) == sorted(f"+{n}" for n in EXAMPLE_NUMBERS)


async def test_rows_of_blank_cells_as_excel_exports_them_are_skipped_as_empty_lines(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    """A sheet whose last rows were cleared is saved with lines of commas alone (`,,,`):
    skipped as an empty line is, not a row in error that refuses the file."""
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    lines = example_with(numbers).splitlines()
    content = "\r\n".join([lines[0], lines[1], ",,,", lines[2], " , ,,", ",,,"]) + "\r\n"

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 201, response.text
    batch = await wait_for_status(api, account, response.json()["batchId"], *FINAL)
    assert (batch["status"], batch["recipients"]) == ("completed", 2)
    received = [m for n in numbers for m in await emulator_messages(emulator_url, to=n)]
    assert len(received) == 2


async def test_one_empty_parameter_refuses_the_whole_file_and_sends_nothing(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    content = example_with(numbers).replace(",James Tan,", ",,")
    before = await batch_count(api, account)

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "parameter_invalid"
    assert error["details"] == [
        {"message": "recipient_name is empty", "row": 2, "column": "recipient_name"}
    ]
    assert await batch_count(api, account) == before
    assert [await emulator_messages(emulator_url, to=n) for n in numbers] == [[], []]


async def test_a_header_cell_over_the_csv_modules_limit_refuses_the_file(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0].removeprefix("+")
    name = "a" * (csv.field_size_limit() + 1)
    content = f"recipient,language,{name}\n{number},english,x\n"
    before = await batch_count(api, account)

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "parameter_invalid"
    assert await batch_count(api, account) == before


async def test_every_row_in_error_is_named_with_its_reason(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    good = unique_numbers(1)[0].removeprefix("+")
    content = (
        "recipient,language,recipient_name,topic\n"
        f"+{good},english,Emily,passport\n"
        f"{good},malay,Emily,passport\n"
        f"{good},english,Emily\n"
        f"{good},english, ,passport\n"
        f"{good},chinese,Emily,passport\n"
    )

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    details = response.json()["error"]["details"]
    assert [(d["row"], d["column"]) for d in details] == [
        (1, "recipient"),
        (2, "language"),
        (3, None),
        (4, "recipient_name"),
    ]
    assert "4 row(s) in error" in response.json()["error"]["message"]


async def test_a_cell_with_a_nul_byte_is_a_row_in_error(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    content = example_with(numbers).replace("James Tan", "James\x00Tan")
    before = await batch_count(api, account)

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"] == [
        {
            "message": "recipient_name holds a NUL character, which cannot be stored",
            "row": 2,
            "column": "recipient_name",
        }
    ]
    assert await batch_count(api, account) == before


async def test_a_file_name_with_a_nul_character_is_refused_as_on_every_upload(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    content = example_with(unique_numbers(2)).encode()
    before = await batch_count(api, account)

    # Written by hand: httpx would percent-encode the NUL in the file name.
    response = await api.post(
        f"/campaigns/{campaign_id}/batch/messages",
        headers=bearer(account) | {"content-type": "multipart/form-data; boundary=b"},
        content=(
            b'--b\r\ncontent-disposition: form-data; name="file"; filename="a\x00.csv"\r\n'
            b"content-type: text/csv\r\n\r\n" + content + b"\r\n--b--\r\n"
        ),
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["heraldCode"]) == ("parameter_invalid", "INVALID_TEXT")
    assert await batch_count(api, account) == before


@pytest.mark.parametrize(
    "header",
    [
        "recipient,language,recipient_name",
        "recipient,language,recipient_name,topic,extra",
        "language,recipient,recipient_name,topic",
        "recipient,language,recipient_name,topic,topic",
        "phone,language,recipient_name,topic",
    ],
)
async def test_a_header_that_does_not_match_the_template_gets_the_documented_400(
    api: httpx.AsyncClient, account: Account, header: str
) -> None:
    campaign_id = await new_campaign(api, account)
    content = f"{header}\n6591234567,english,Emily,passport\n"

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert {key: error[key] for key in ("code", "message")} == HEADER_MISMATCH


async def test_a_campaign_saved_with_a_parameter_named_as_a_first_column_refuses_its_files(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    # Saved before templates were refused such a parameter: its file names a column twice.
    campaign = await campaigns.create_campaign(
        pool,
        account.account_id,
        name="Old",
        sender=account.agent_number,
        templates={"english": "Your number {{recipient}}"},
        parameters=["recipient"],
    )

    response = await upload(
        api,
        str(campaign["id"]),
        "recipient,language,recipient\n6591234567,english,x\n",
        bearer(account),
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert {key: error[key] for key in ("code", "message")} == HEADER_MISMATCH


async def test_a_body_template_keeps_a_cells_line_breaks(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account, {"english": "{{body}}"})
    number = unique_numbers(1)[0]
    content = f'recipient,language,body\r\n{number[1:]},english,"Line one\r\nLine {{{{two}}}}"\r\n'

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 201, response.text
    await wait_for_status(api, account, response.json()["batchId"], *FINAL)
    received = await emulator_messages(emulator_url, to=number)
    assert [m["body"] for m in received] == ["Line one\r\nLine {{two}}"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer hk_not-a-key"}, {"Authorization": "Basic aGs6aGs="}],
)
async def test_a_missing_or_bad_key_gets_the_documented_401(
    api: httpx.AsyncClient, account: Account, headers: dict[str, str]
) -> None:
    campaign_id = await new_campaign(api, account)

    response = await upload(api, campaign_id, example_with(unique_numbers(2)), headers)

    assert response.status_code == 401
    assert response.json() == {"error": INVALID_API_KEY | {"heraldCode": "UNAUTHORIZED"}}


async def test_a_file_over_the_limit_gets_the_documented_400(
    settings: Settings, account: Account
) -> None:
    async with api_client(settings.model_copy(update={"max_upload_bytes": 1000})) as small:
        campaign_id = await new_campaign(small, account)
        content = example_with(unique_numbers(2)).encode() * 20

        response = await upload(small, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    assert response.json() == {"error": FILE_TOO_LARGE | {"heraldCode": "FILE_TOO_LARGE"}}


async def test_an_upload_whose_media_type_is_not_in_lower_case_has_the_uploads_limit(
    api: httpx.AsyncClient, settings: Settings, account: Account, emulator_url: str
) -> None:
    """`Multipart/Form-Data` is multipart/form-data (media types are case-insensitive): its
    file may be as large as an upload, not held to the limit of other bodies."""
    numbers = unique_numbers(2)
    content = example_with(numbers).encode()
    boundary = secrets.token_hex(8)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file";'
            f' filename="recipients.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = bearer(account) | {"Content-Type": f"Multipart/Form-Data; boundary={boundary}"}
    campaign_id = await new_campaign(api, account)
    async with api_client(settings.model_copy(update={"max_body_bytes": 100})) as small:
        response = await small.post(
            f"/campaigns/{campaign_id}/batch/messages", headers=headers, content=body
        )

    assert len(body) > 100
    assert response.status_code == 201, response.text
    assert [len(await received_by(emulator_url, n, 1)) for n in numbers] == [1, 1]


async def test_too_many_requests_gets_the_documented_429(
    settings: Settings, account: Account
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_second": 0.01, "rate_limit_burst": 1})
    async with api_client(limited) as api:
        first = await upload(api, str(uuid.uuid4()), "x", bearer(account))
        second = await upload(api, str(uuid.uuid4()), "x", bearer(account))

    assert first.status_code == 404
    assert second.status_code == 429
    assert second.json() == {"error": TOO_MANY_REQUESTS | {"heraldCode": "RATE_LIMITED"}}
    assert second.headers["retry-after"]


async def test_a_key_is_held_only_by_its_campaigns_rates(
    api: httpx.AsyncClient, settings: Settings, account: Account
) -> None:
    # Postman's limit is 10 requests a second per campaign: a key driving three campaigns at
    # that rate makes 30 a second, over Herald's per-key rate, which must not refuse them.
    campaign_ids = [await new_campaign(api, account) for _ in range(3)]
    limited = settings.model_copy(update={"rate_limit_per_second": 0.01, "rate_limit_burst": 1})
    async with api_client(limited) as client:
        reads = [
            await batch_messages(client, account, campaign_id, str(uuid.uuid4()))
            for campaign_id in campaign_ids
            for _ in range(2)
        ]
        # A request that names no campaign of the account spends the key's rate.
        unknown = [await batch_messages(client, account, str(uuid.uuid4()), "x") for _ in range(2)]

    # The batch is not the campaign's: each read got as far as looking for it.
    assert [r.status_code for r in reads] == [404] * 6, [r.text for r in reads]
    assert all(r.json()["error"]["code"] == "batch_not_found" for r in reads)
    assert [r.status_code for r in unknown] == [404, 429]


async def test_a_request_refused_for_its_parameters_still_spends_a_rate(
    api: httpx.AsyncClient, settings: Settings, account: Account
) -> None:
    # Its query checked before the campaign was looked up, such a request spent no rate at
    # all: it could be sent in a loop, each a key lookup in PostgreSQL, never a 429.
    campaign_id = await new_campaign(api, account)
    limited = settings.model_copy(
        update={
            "campaign_rate_limit_per_second": 0.05,
            "rate_limit_per_second": 0.01,
            "rate_limit_burst": 1,
        }
    )
    async with api_client(limited) as client:
        replies = [
            await batch_messages(client, account, campaign, str(uuid.uuid4()), limit=0)
            for campaign in (campaign_id, campaign_id, str(uuid.uuid4()), str(uuid.uuid4()))
        ]

    # The campaign's rate, then (an unknown campaign) the key's: one request each.
    assert [r.status_code for r in replies] == [400, 429, 404, 429], [r.text for r in replies]


async def test_the_campaigns_rate_is_shared_by_two_api_processes(
    api: httpx.AsyncClient, settings: Settings, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    other_id = await new_campaign(api, account)
    # One request at once, and the next only 20 s later: no refill within the test.
    limited = settings.model_copy(update={"campaign_rate_limit_per_second": 0.05})
    async with api_client(limited) as first, api_client(limited) as second:
        # No file: each request spends its campaign's rate, then is refused for the body.
        replies = [
            await client.post(f"/campaigns/{campaign_id}/batch/messages", headers=bearer(account))
            for client in (first, second)
        ]
        other = await second.post(f"/campaigns/{other_id}/batch/messages", headers=bearer(account))

    assert [r.status_code for r in replies] == [400, 429], [r.text for r in replies]
    assert replies[1].json() == {"error": TOO_MANY_REQUESTS | {"heraldCode": "RATE_LIMITED"}}
    assert int(replies[1].headers["retry-after"]) >= 1
    assert other.status_code == 400, other.text


async def test_an_unknown_campaign_is_not_found(api: httpx.AsyncClient, account: Account) -> None:
    replies: list[dict[str, Any]] = []
    for campaign_id in (str(uuid.uuid4()), "not-an-id"):
        response = await upload(api, campaign_id, example_with(unique_numbers(2)), bearer(account))
        assert response.status_code == 404
        replies.append(response.json()["error"])
    assert [r["code"] for r in replies] == ["campaign_not_found"] * 2


async def test_a_campaign_deleted_during_an_upload_is_not_found_and_keeps_no_file(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id = await new_campaign(api, account)
    insert_file = files.insert_file

    async def insert_then_delete(*args: Any, **kwargs: Any) -> dict:
        stored = await insert_file(*args, **kwargs)
        await campaigns.delete_campaign(pool, account.account_id, uuid.UUID(campaign_id))
        return stored

    monkeypatch.setattr(files, "insert_file", insert_then_delete)
    response = await upload(api, campaign_id, example_with(unique_numbers(2)), bearer(account))

    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "campaign_not_found"
    assert await batch_count(api, account) == 0
    assert await stored_files(pool, account) == 0


async def test_an_upload_whose_workflow_could_not_start_keeps_its_batch_and_file(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, settings: Settings
) -> None:
    campaign_id = await new_campaign(api, account)
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        response = await upload(
            unreachable, campaign_id, example_with(unique_numbers(2)), bearer(account)
        )

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "temporal_unavailable"
    assert await batch_count(api, account) == 1
    assert await stored_files(pool, account) == 1


async def test_a_campaign_whose_sender_was_removed_refuses_the_file_unread(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id = await new_campaign(api, account)
    removed = await api.delete(f"/v1/sms/numbers/{account.agent_number}", headers=account.headers)
    convert = service.convert
    converted: list[object] = []

    def counted(*args: Any) -> Any:
        converted.append(args)
        return convert(*args)

    monkeypatch.setattr(service, "convert", counted)
    response = await upload(api, campaign_id, example_with(unique_numbers(2)), bearer(account))

    assert removed.status_code == 200, removed.text
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "agent_number_not_found"
    assert account.agent_number in response.json()["error"]["message"]
    assert converted == []
    assert await stored_files(pool, account) == 0


def english_rows(numbers: list[str]) -> str:
    """A file for the example's campaign: each number with the english template."""
    rows = "".join(
        f"{n.removeprefix('+')},english,Row {i},topic {i}\n" for i, n in enumerate(numbers)
    )
    return "recipient,language,recipient_name,topic\n" + rows


async def sent_batch(
    api: httpx.AsyncClient, account: Account, campaign_id: str, numbers: list[str]
) -> str:
    response = await upload(api, campaign_id, english_rows(numbers), bearer(account))
    assert response.status_code == 201, response.text
    batch_id: str = response.json()["batchId"]
    await wait_for_status(api, account, batch_id, *FINAL)
    return batch_id


async def batch_messages(
    api: httpx.AsyncClient, account: Account, campaign_id: str, batch_id: str, **query: Any
) -> httpx.Response:
    return await api.get(
        f"/campaigns/{campaign_id}/batch/{batch_id}/messages", headers=bearer(account), params=query
    )


async def test_the_batchs_messages_come_a_page_at_a_time_with_their_latest_status(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(3)
    batch_id = await sent_batch(api, account, campaign_id, numbers)

    first = await batch_messages(api, account, campaign_id, batch_id, limit=2)
    page = first.json()["pageData"]
    second = await batch_messages(
        api, account, campaign_id, batch_id, limit=2, after=page["endCursor"]
    )
    back = await batch_messages(
        api,
        account,
        campaign_id,
        batch_id,
        limit=2,
        before=second.json()["pageData"]["startCursor"],
    )
    found = await batch_messages(api, account, campaign_id, batch_id, search=numbers[1][-7:])
    from_the_start = await batch_messages(api, account, campaign_id, batch_id, limit=2, after=-1)
    before_the_first = await batch_messages(api, account, campaign_id, batch_id, before=0)

    assert first.status_code == 200, first.text
    messages = first.json()["data"] + second.json()["data"]
    assert [m["recipient"] for m in messages] == [n.removeprefix("+") for n in numbers]
    assert messages[0]["fullMessage"] == "Dear Row 0, your topic 0 is ready."
    assert {m["latestStatus"] for m in messages} <= {"sent", "success"}
    assert {(m["campaignId"], m["batchId"]) for m in messages} == {(campaign_id, batch_id)}
    assert len({m["id"] for m in messages}) == 3
    assert page["hasNextPage"] is True and page["hasPreviousPage"] is False
    assert second.json()["pageData"]["hasNextPage"] is False
    assert second.json()["pageData"]["hasPreviousPage"] is True
    assert back.json()["data"] == first.json()["data"]
    assert [m["recipient"] for m in found.json()["data"]] == [numbers[1].removeprefix("+")]
    # Read from before the first row: the first page, none before it; back past the first
    # row: an empty page, with no cursor and so no page after it to read.
    assert from_the_start.json() == first.json()
    assert before_the_first.json()["data"] == []
    assert before_the_first.json()["pageData"] == {
        "startCursor": None,
        "endCursor": None,
        "hasNextPage": False,
        "hasPreviousPage": False,
    }


async def test_each_message_keeps_its_rows_values_and_language(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    content = example_with(numbers).replace("Emily Yeo", '"Yeo, ""Emily"""')

    response = await upload(api, campaign_id, content, bearer(account))
    assert response.status_code == 201, response.text
    batch_id = response.json()["batchId"]
    await wait_for_status(api, account, batch_id, *FINAL)
    messages = (await batch_messages(api, account, campaign_id, batch_id)).json()["data"]

    assert [(m["recipient"], m["language"], m["values"]) for m in messages] == [
        (
            numbers[0].removeprefix("+"),
            "english",
            {"recipient_name": 'Yeo, "Emily"', "topic": "passport application #12345F"},
        ),
        (
            numbers[1].removeprefix("+"),
            "chinese",
            {"recipient_name": "James Tan", "topic": "passport application #67890A"},
        ),
    ]


async def test_two_rows_to_one_number_are_two_messages_each_with_its_values(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0]

    response = await upload(api, campaign_id, example_with([number, number]), bearer(account))
    assert response.status_code == 201, response.text
    await wait_for_status(api, account, response.json()["batchId"], *FINAL)
    sent = await emulator_messages(emulator_url, to=number)

    assert sorted(m["body"] for m in sent) == [
        "Dear Emily Yeo, your passport application #12345F is ready.",
        "James Tan 您的passport application #67890A已准备好。",
    ]


async def test_a_reply_opens_a_conversation_with_its_rows_values(
    api: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0]
    batch_id = await sent_batch(api, account, campaign_id, [number])

    form = inbound_form(settings, to=account.agent_number, from_=number, body="Thanks")
    assert (await post_inbound(api, settings, form)).status_code == 200
    listed = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": number}
    )

    [conversation] = listed.json()["data"]["conversations"]
    assert conversation["batch_id"] == batch_id
    # The stored file is the ledger's rows, not a CSV: the values come from the ledger.
    assert conversation["request_data"] == {"recipient_name": "Row 0", "topic": "topic 0"}


async def test_retry_sends_the_failed_messages_again_in_the_same_batch(
    api: httpx.AsyncClient, account: Account, emulator_url: str, carrier: Configure
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(3)
    await carrier(scripted={numbers[0]: [400]})
    batch_id = await sent_batch(api, account, campaign_id, numbers)
    before = (await batch_messages(api, account, campaign_id, batch_id)).json()["data"]
    retry = f"/campaigns/{campaign_id}/batch/{batch_id}/retry"

    retried = await api.post(retry, headers=bearer(account))
    running = await api.post(retry, headers=bearer(account))
    batch = await wait_for_status(api, account, batch_id, "completed")
    after = (await batch_messages(api, account, campaign_id, batch_id)).json()["data"]
    again = await api.post(retry, headers=bearer(account))

    assert before[0]["latestStatus"] == "failure"
    assert {m["latestStatus"] for m in before[1:]} <= {"sent", "success"}
    assert retried.status_code == 201, retried.text
    assert retried.content == b""
    assert running.status_code == 400, running.text
    assert running.json() == {"error": BATCH_NOT_RETRYABLE | {"heraldCode": "BATCH_NOT_RETRYABLE"}}
    assert batch["status"] == "completed"
    assert [m["id"] for m in after] == [m["id"] for m in before]
    assert {m["latestStatus"] for m in after} <= {"sent", "success"}
    # The refused request counted, and the retry's.
    assert [m["numAttempts"] for m in before] == [1, 1, 1]
    assert [m["numAttempts"] for m in after] == [2, 1, 1]
    assert [len(await emulator_messages(emulator_url, to=n)) for n in numbers] == [1, 1, 1]
    assert again.status_code == 400, again.text
    assert again.json() == {"error": NO_FAILED_MESSAGES | {"heraldCode": "NO_FAILED_MESSAGES"}}


async def test_a_batch_the_carrier_mostly_refuses_ends_for_its_client_to_retry(
    api: httpx.AsyncClient, account: Account, carrier: Configure
) -> None:
    """The dialect can neither resume nor cancel a batch: one whose numbers the carrier mostly
    refuses does not pause itself (Herald's auto-pause) but ends, each refused message a
    `failure` its client may retry."""
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(600)
    refused = numbers[:400]
    await carrier(scripted={number: [400] for number in refused})
    uploaded = await upload(api, campaign_id, english_rows(numbers), bearer(account))
    assert uploaded.status_code == 201, uploaded.text
    batch_id = uploaded.json()["batchId"]

    ended = await wait_for_status(api, account, batch_id, "paused", *FINAL)
    assert (ended["status"], ended["counts"].get("failed")) == ("completed_partial", 400)
    retried = await api.post(
        f"/campaigns/{campaign_id}/batch/{batch_id}/retry", headers=bearer(account)
    )
    again = await wait_for_status(api, account, batch_id, "completed")

    assert retried.status_code == 201, retried.text
    assert again["counts"].get("failed", 0) == 0


async def test_a_message_is_retried_at_most_three_times(
    api: httpx.AsyncClient, account: Account, carrier: Configure
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    # The first number is refused at its first send and at each of the three retries.
    await carrier(scripted={numbers[0]: [400] * 4})
    batch_id = await sent_batch(api, account, campaign_id, numbers)
    retry = f"/campaigns/{campaign_id}/batch/{batch_id}/retry"

    retried = []
    for _ in range(3):
        retried.append((await api.post(retry, headers=bearer(account))).status_code)
        await wait_for_status(api, account, batch_id, *FINAL)
    fourth = await api.post(retry, headers=bearer(account))
    rows = await ledger_rows(api, account, batch_id)

    assert retried == [201, 201, 201]
    assert fourth.status_code == 400, fourth.text
    assert fourth.json() == {"error": NO_FAILED_MESSAGES | {"heraldCode": "NO_FAILED_MESSAGES"}}
    assert [(row["status"], row["attempts"]) for row in rows] == [("failed", 4), (ANY, 1)]


async def test_a_batch_whose_run_ended_before_its_rows_loaded_loads_them_when_retried(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, temporal: Client
) -> None:
    """As a run terminated through Temporal while it loaded the upload's rows leaves the batch:
    not final, no ledger. The retry's run validated the stored file again, as a CSV, which a
    file of ledger rows is not: it failed, sending nothing."""
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    batch_id = await sent_batch(api, account, campaign_id, numbers)
    # Its run closed, as a terminated one is (a final status comes before the run's end).
    await temporal.get_workflow_handle(batch_workflow_id(batch_id)).result()
    await pool.execute("DELETE FROM messages WHERE batch_id = $1", uuid.UUID(batch_id))
    await pool.execute(
        "UPDATE batches SET status = 'validating', code = NULL, rows_total = NULL,"
        " recipients = NULL, rejected = NULL, finished_at = NULL WHERE id = $1",
        uuid.UUID(batch_id),
    )

    retried = await api.post(
        f"/campaigns/{campaign_id}/batch/{batch_id}/retry", headers=bearer(account)
    )
    assert retried.status_code == 201, retried.text
    again = await wait_for_status(api, account, batch_id, *FINAL)
    rows = await ledger_rows(api, account, batch_id)

    assert again["status"] == "completed"
    assert sorted(row["to_number"] for row in rows) == sorted(numbers)


async def test_a_retry_of_a_batch_past_its_expiry_is_not_retryable(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, carrier: Configure
) -> None:
    """The dialect's 400, not Herald's 409 BATCH_EXPIRED in lower case, which its document
    does not have."""
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    await carrier(scripted={numbers[0]: [400]})
    batch_id = await sent_batch(api, account, campaign_id, numbers)
    # As a batch of the campaign started by `POST /v1/sms/batch` with an `expire_at`, past now.
    await pool.execute(
        "UPDATE batches SET request = request || $2::jsonb WHERE id = $1",
        uuid.UUID(batch_id),
        {"expire_at": "2020-01-01T00:00:00+00:00"},
    )

    retried = await api.post(
        f"/campaigns/{campaign_id}/batch/{batch_id}/retry", headers=bearer(account)
    )

    assert retried.status_code == 400, retried.text
    assert retried.json() == {"error": BATCH_NOT_RETRYABLE | {"heraldCode": "BATCH_NOT_RETRYABLE"}}


async def test_a_batch_not_of_the_campaign_is_not_found_and_not_retryable(
    api: httpx.AsyncClient, account: Account
) -> None:
    campaign_id = await new_campaign(api, account)
    other_id = await new_campaign(api, account)
    batch_id = await sent_batch(api, account, other_id, unique_numbers(1))

    replies = [
        await batch_messages(api, account, campaign_id, batch_id),
        await batch_messages(api, account, campaign_id, str(uuid.uuid4())),
    ]
    retries = [
        await api.post(f"/campaigns/{campaign_id}/batch/{batch}/retry", headers=bearer(account))
        for batch in (batch_id, str(uuid.uuid4()), "not-an-id")
    ]

    assert [r.status_code for r in replies] == [404, 404]
    assert [r.json()["error"]["code"] for r in replies] == ["batch_not_found"] * 2
    assert [r.status_code for r in retries] == [400] * 3
    assert [r.json()["error"]["heraldCode"] for r in retries] == ["BATCH_NOT_RETRYABLE"] * 3
    assert {(r.json()["error"]["code"], r.json()["error"]["message"]) for r in retries} == {
        (BATCH_NOT_RETRYABLE["code"], BATCH_NOT_RETRYABLE["message"])
    }


async def test_an_address_off_the_campaigns_allow_list_gets_the_documented_401(
    api: httpx.AsyncClient, account: Account
) -> None:
    # The in-process client's address is 127.0.0.1.
    campaign_id = await new_campaign(api, account, allowed_ips=["192.0.2.0/24", "2001:db8::/32"])
    content = example_with(unique_numbers(2))

    refused = [
        await upload(api, campaign_id, content, bearer(account)),
        await batch_messages(api, account, campaign_id, str(uuid.uuid4())),
        await api.post(
            f"/campaigns/{campaign_id}/batch/{uuid.uuid4()}/retry", headers=bearer(account)
        ),
    ]
    allowed = await api.patch(
        f"/v1/campaigns/{campaign_id}", headers=account.headers, json={"allowed_ips": ["127.0.0.1"]}
    )
    accepted = await upload(api, campaign_id, content, bearer(account))
    cleared = await api.patch(
        f"/v1/campaigns/{campaign_id}", headers=account.headers, json={"clear_allowed_ips": True}
    )

    assert [r.status_code for r in refused] == [401] * 3
    assert [r.json() for r in refused] == [
        {"error": INVALID_IP_ADDRESS | {"heraldCode": "IP_NOT_ALLOWED"}}
    ] * 3
    assert allowed.json()["data"]["allowed_ips"] == ["127.0.0.1/32"]
    assert accepted.status_code == 201, accepted.text
    assert cleared.json()["data"]["allowed_ips"] is None


async def test_the_campaigns_rate_is_shared_by_its_endpoints(
    settings: Settings, account: Account
) -> None:
    limited = settings.model_copy(update={"campaign_rate_limit_per_second": 0.05})
    async with api_client(limited) as api:
        campaign_id = await new_campaign(api, account)
        read = await batch_messages(api, account, campaign_id, str(uuid.uuid4()))
        sent = await upload(api, campaign_id, example_with(unique_numbers(2)), bearer(account))
        retried = await api.post(
            f"/campaigns/{campaign_id}/batch/{uuid.uuid4()}/retry", headers=bearer(account)
        )

    assert read.status_code == 404, read.text
    assert [r.status_code for r in (sent, retried)] == [429, 429]
    assert retried.json() == {"error": TOO_MANY_REQUESTS | {"heraldCode": "RATE_LIMITED"}}


PARAMETERS = ["recipient_name", "topic"]
RULES = RecipientRules(max_rows=1000, max_message_chars=1600, number_check=POSSIBLE)
PLAIN = [
    EXAMPLE_CSV,
    EXAMPLE_CSV.rstrip("\n"),
    "\ufeff" + EXAMPLE_CSV,
    "recipient,language,topic,recipient_name\n"
    + "".join(
        f"6591{i:06d},{('english', 'chinese')[i % 3 == 1]},t {i},n {i}\n" for i in range(200)
    ),
    # Excel's: CRLF line ends, a name with a comma quoted.
    EXAMPLE_CSV.replace("\n", "\r\n"),
    EXAMPLE_CSV.replace("Emily Yeo", '"Yeo, Emily"'),
]
NOT_PLAIN = [
    EXAMPLE_CSV.replace("Emily Yeo", '"Yeo" Emily'),
    EXAMPLE_CSV + "\n",
    EXAMPLE_CSV.replace("Emily Yeo", "\x1c"),
]
IN_ERROR = [
    EXAMPLE_CSV.replace(",James Tan,", ",,"),
    EXAMPLE_CSV.replace(",James Tan,", ", ,"),
    EXAMPLE_CSV.replace("6599999998", "65"),
    EXAMPLE_CSV.replace("6599999998", "+6599999998"),
    EXAMPLE_CSV.replace("chinese", "tamil"),
    EXAMPLE_CSV + "6599999997,english,Ann\n",
    EXAMPLE_CSV + "6599999997,english,Ann,topic,extra\n",
    PLAIN[3].replace("6591000150,", "6591000150x,"),
    EXAMPLE_CSV.replace("Emily Yeo", "Emily\x00Yeo"),
]


def herald_file(content: str, monkeypatch: pytest.MonkeyPatch, only: str | None) -> Any:
    """The batch message and the ledger rows written, or the problems, by `convert` as it is
    or by `only` one of its paths, "rows" or "columns"."""
    with monkeypatch.context() as patch:
        if only == "rows":
            patch.setattr(service, "_convert_columns", _not_plain)
        elif only == "columns":
            patch.setattr(service, "_convert", _no_row_path)
        try:
            converted = service.convert(io.BytesIO(content.encode()), TEMPLATES, PARAMETERS, RULES)
        except service.InvalidRows as error:
            return error.problems()
    with converted.content:
        stored = converted.content.read()
    return converted.message, stored_rows(stored)


def _not_plain(*_: object) -> str:
    raise service._NotPlain


def _no_row_path(*_: object) -> str:
    raise AssertionError("the row path was taken")


@pytest.mark.parametrize("block_bytes", [64, 4 << 20])
@pytest.mark.parametrize("content", PLAIN)
def test_a_plain_file_is_converted_by_columns_as_the_row_path_converts_it(
    content: str, block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "PLAIN_BLOCK_BYTES", block_bytes)

    by_columns = herald_file(content, monkeypatch, "columns")
    by_rows = herald_file(content, monkeypatch, "rows")

    assert by_columns == by_rows
    # A ledger row for each line but the header.
    assert len(by_rows[1]) == content.count("\n") + (not content.endswith("\n")) - 1


@pytest.mark.parametrize("content", NOT_PLAIN + IN_ERROR)
def test_any_other_file_takes_the_row_path_whole(
    content: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "PLAIN_BLOCK_BYTES", 64)

    with pytest.raises(AssertionError, match="the row path was taken"):
        herald_file(content, monkeypatch, "columns")
    assert herald_file(content, monkeypatch, None) == herald_file(content, monkeypatch, "rows")


async def test_an_address_off_the_allow_list_spends_none_of_the_campaigns_rate(
    settings: Settings, account: Account
) -> None:
    limited = settings.model_copy(update={"campaign_rate_limit_per_second": 0.05})
    async with api_client(limited) as api:
        campaign_id = await new_campaign(api, account, allowed_ips=["192.0.2.0/24"])
        refused = [
            await batch_messages(api, account, campaign_id, str(uuid.uuid4())) for _ in range(3)
        ]
        await api.patch(
            f"/v1/campaigns/{campaign_id}",
            headers=account.headers,
            json={"clear_allowed_ips": True},
        )
        allowed = await batch_messages(api, account, campaign_id, str(uuid.uuid4()))

    assert [r.status_code for r in refused] == [401] * 3
    # The bucket still holds its one request: the refused ones took none.
    assert allowed.status_code == 404, allowed.text


async def activities_run(temporal: Client, batch_id: str) -> list[str]:
    """The activity types the batch's workflow scheduled, in order."""
    history = await temporal.get_workflow_handle(batch_workflow_id(batch_id)).fetch_history()
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


async def outcomes(
    api: httpx.AsyncClient, account: Account, temporal: Client, batch_id: str
) -> Any:
    """All a batch's validation decided, as its owner and the Temporal UI see it."""
    batch = await wait_for_status(api, account, batch_id, *FINAL)
    rows = await ledger_rows(api, account, batch_id)
    errors = await api.get(f"/v1/sms/batch/{batch_id}/errors", headers=account.headers)
    logs = await api.get(f"/v1/sms/batch/{batch_id}/logs", headers=account.headers)
    described = await temporal.get_workflow_handle(batch_workflow_id(batch_id)).describe()
    events = logs.json()["data"]["events"]
    return (
        {key: batch[key] for key in ("status", "code", "rows_total", "recipients", "rejected")}
        | {key: batch[key] for key in ("segments_total", "messages_gsm7", "messages_ucs2")}
        | {"counts": batch["counts"]},
        [
            {key: row[key] for key in ("seq", "row_number", "to_number", "body", "status")}
            | {key: row[key] for key in ("error_code", "encoding", "segments", "from_number")}
            for row in rows
        ],
        errors.json()["data"]["rejected_rows"],
        phases(events),
        [e["payload"].get("message") for e in events if e["status"] == "dispatching"],
        described.typed_search_attributes.get(RECIPIENT_COUNT),
    )


async def test_the_upload_is_validated_once_and_the_batch_loads_its_rows(
    api: httpx.AsyncClient, account: Account, temporal: Client
) -> None:
    campaign_id = await new_campaign(api, account)
    a, b, c = (n.removeprefix("+") for n in unique_numbers(3))
    long = "长" * 80
    # A repeated number (sent twice: every row is a message), a message of several segments.
    rows = [
        (a, "english", "Ann", "passport"),
        (b, "chinese", "Bob", "visa"),
        (a, "english", "Ann", "again"),
        (c, "chinese", long, "visa"),
    ]
    content = "recipient,language,recipient_name,topic\n" + "".join(
        ",".join(row) + "\n" for row in rows
    )

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 201, response.text
    batch_id = response.json()["batchId"]
    uploaded = await outcomes(api, account, temporal, batch_id)
    # The engine ran once, at the upload: the workflow loads its rows, validating nothing.
    run = await activities_run(temporal, batch_id)
    assert "validate_recipients" not in run
    assert run.count("load_recipients") == 1
    # The same rows in a file of Herald's, validated by the workflow as any batch's: the
    # same ledger, counts, events and search attribute.
    herald = (
        "phone_number,agent_message,request_data.recipient_name,request_data.topic\n"
        + "".join(
            f"+{number},{'' if language == 'english' else TEMPLATES[language]},{name},{topic}\n"
            for number, language, name, topic in rows
        )
    )
    file_id = await attach(api, account.headers, herald.encode())
    started = await start(
        api,
        account,
        file_id,
        name="Passports",
        number_check="possible",
        exclude_duplicates=False,
        **{"global": {"agent_number": account.agent_number, "agent_message": TEMPLATES["english"]}},
    )
    assert started.status_code == 200, started.text
    assert uploaded == await outcomes(api, account, temporal, file_id)
    assert "validate_recipients" in await activities_run(temporal, file_id)
    summary, ledger, rejected, *_ = uploaded
    assert (summary["recipients"], summary["rejected"], len(rejected)) == (4, 0, 0)
    assert [row["status"] for row in ledger].count("skipped") == 0
    assert ledger[3]["segments"] == 2


async def test_an_opted_out_number_is_a_skipped_message_not_an_error(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    opted = await api.post("/v1/opt-outs", headers=account.headers, json={"number": numbers[1]})
    assert opted.status_code == 201, opted.text

    batch_id = await sent_batch(api, account, campaign_id, numbers)
    rows = await ledger_rows(api, account, batch_id)

    assert [(row["status"], row["error_code"]) for row in rows] == [
        (ANY, None),
        ("skipped", "opted_out"),
    ]
    assert await emulator_messages(emulator_url, to=numbers[1]) == []


async def test_a_row_the_engine_would_reject_refuses_the_whole_file(
    api: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    campaign_id = await new_campaign(api, account)
    a, b = (n.removeprefix("+") for n in unique_numbers(2))
    too_long = "x" * settings.max_message_chars
    content = (
        "recipient,language,recipient_name,topic\n"
        f"{a},english,Ann,passport\n{b},english,{too_long},visa\n"
    )
    before = await batch_count(api, account)

    response = await upload(api, campaign_id, content, bearer(account))

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "parameter_invalid"
    assert [(d["row"], d["column"]) for d in error["details"]] == [(2, None)]
    assert "characters" in error["details"][0]["message"]
    assert await batch_count(api, account) == before
