"""The Mobivate dialect, `POST /send/batch`, on the real stack: its documented request and
replies, each refusal in its envelope, and the batch it starts being one of Herald's."""

import copy
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from settings import Settings
from store import batches, messages
from tests.support.batches import FINAL, wait_for_status
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import no_faster_than
from tests.support.mobivate_example import AUTHENTICATION_ERROR, EXAMPLE_REQUEST, EXAMPLE_SUCCESS
from tests.support.pages import every_item
from tests.support.stack import Account, api_client
from workflows.contracts import batch_workflow_id


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.key}"}


async def second_sender(api: httpx.AsyncClient, account: Account, **fields: object) -> str:
    """Another sender of the account: a sender ID of its own, as "CustomOrigin" (12
    characters, one more than carriers take) would be."""
    sender = f"Custom{secrets.token_hex(2)}"
    response = await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": sender, **fields}
    )
    assert response.status_code == 201, response.text
    return sender


# The second contact's city is a link: the example's `shortenUrls` then has one to shorten.
ROME = "https://example.com/weather/rome"


async def example_list(
    api: httpx.AsyncClient, account: Account, numbers: list[str], **body: object
) -> str:
    """A mailing list of `numbers`, named and living in the weather's cities."""
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "l", **body})
    assert created.status_code == 201, created.text
    list_id = created.json()["data"]["id"]
    people = [("Mary", "Paris"), ("Tom", ROME)]
    contacts = [
        {"phone_number": number, "NAME": name, "CITY": city}
        for number, (name, city) in zip(numbers, people, strict=True)
    ]
    added = await api.post(
        f"/v1/lists/{list_id}/contacts", headers=account.headers, json={"contacts": contacts}
    )
    assert added.status_code == 200, added.text
    return list_id


def example_for(
    account: Account, numbers: list[str], custom: str | None = None, list_id: str | None = None
) -> dict[str, Any]:
    """The documented example, but for what this server cannot take as written: its
    originators ("test", "CustomOrigin") become the account's registered senders, its numbers
    (13 digits after 44, not possible UK numbers) valid ones, written without `+` as there, and
    its mailing list one of the account's (left out when none is given)."""
    body = copy.deepcopy(EXAMPLE_REQUEST)
    body["originator"] = account.agent_number
    for recipient, number in zip(body["recipients"], numbers, strict=False):
        recipient["recipient"] = number.removeprefix("+")
    body["recipients"][2]["originator"] = custom or account.agent_number
    if list_id is None:
        del body["recipients"][3]
    else:
        body["recipients"][3]["recipient"] = list_id
    return body


async def test_the_documented_example_sends_each_recipient_its_own_text(
    api: httpx.AsyncClient, account: Account, emulator_url: str, settings: Settings
) -> None:
    numbers = unique_numbers(5)
    custom = await second_sender(api, account)
    list_id = await example_list(api, account, numbers[3:])

    response = await api.post(
        "/send/batch",
        headers=bearer(account),
        json=example_for(account, numbers[:3], custom, list_id),
    )

    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply.keys() == EXAMPLE_SUCCESS.keys()
    assert reply["record"].keys() == EXAMPLE_SUCCESS["record"].keys()
    assert reply["success"] is True
    assert reply["record"]["type"] == "BatchSMS"
    assert reply["record"]["recipientCount"] == EXAMPLE_SUCCESS["record"]["recipientCount"] == 5
    scheduled = datetime.fromisoformat(reply["record"]["scheduled"])
    assert reply["record"]["scheduled"].endswith("Z")
    assert abs(scheduled - datetime.now(UTC)) < timedelta(minutes=1)

    batch_id = reply["record"]["id"]
    batch = await wait_for_status(api, account, batch_id, *FINAL)
    assert batch["status"] == "completed"
    assert batch["name"] == "My Campaign"
    assert batch["workflow_id"] == f"sms-batch-{batch_id}"
    received = [m for n in numbers for m in await emulator_messages(emulator_url, to=n)]
    short = received[4]["body"].removeprefix("Hello Tom, how is the weather in ").removesuffix("?")
    assert short.startswith(f"{settings.api_url}/s/")
    assert [(m["to"], m["from"], m["body"]) for m in received] == [
        (numbers[0], account.agent_number, "Hello John, how is the weather in London?"),
        (numbers[1], account.agent_number, "Hello Jack, how is the weather in Dublin?"),
        (numbers[2], custom, "Hello Michael. How are you?"),
        (numbers[3], account.agent_number, "Hello Mary, how is the weather in Paris?"),
        (numbers[4], account.agent_number, f"Hello Tom, how is the weather in {short}?"),
    ]
    followed = await api.get(short.removeprefix(settings.api_url))
    assert (followed.status_code, followed.headers["location"]) == (302, ROME)
    ledger = (await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)).json()[
        "data"
    ]["messages"]
    assert [m["clicks"] for m in ledger] == [0, 0, 0, 0, 1]
    assert [(m["to_number"], m["reference"], m["from_number"], m["status"]) for m in ledger] == [
        (numbers[0], "aaa", None, "sent"),
        (numbers[1], "bbb", None, "sent"),
        (numbers[2], "ccc", custom, "sent"),
        (numbers[3], None, None, "sent"),
        (numbers[4], None, None, "sent"),
    ]


async def test_the_example_as_written_is_sent_and_its_impossible_numbers_reported_each(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    """Verbatim but for the key and the originators: its list id is one a list here keeps
    from Mobivate; its numbers are rejected rows of the batch, not a refusal."""
    contacts = unique_numbers(2)
    documented_id = EXAMPLE_REQUEST["recipients"][3]["recipient"]
    await example_list(api, account, contacts, id=documented_id)
    custom = await second_sender(api, account)
    body = copy.deepcopy(EXAMPLE_REQUEST)
    body["originator"] = account.agent_number
    body["recipients"][2]["originator"] = custom

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 200, response.text
    record = response.json()["record"]
    assert record.keys() == EXAMPLE_SUCCESS["record"].keys()
    assert record["recipientCount"] == 5
    batch = await wait_for_status(api, account, record["id"], *FINAL)
    assert batch["status"] == "completed_partial"
    rejected = await api.get(f"/v1/sms/batch/{record['id']}/errors", headers=account.headers)
    assert [
        (r["row_number"], r["value"], r["code"]) for r in rejected.json()["data"]["rejected_rows"]
    ] == [(row, f"447900000000{row}", "invalid_number") for row in (1, 2, 3)]
    received = [m for n in contacts for m in await emulator_messages(emulator_url, to=n)]
    assert received[0]["body"] == "Hello Mary, how is the weather in Paris?"
    assert received[1]["body"].startswith("Hello Tom, how is the weather in http")
    assert ROME not in received[1]["body"]


async def test_a_recipients_originator_sends_it_at_that_senders_own_pace(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    run = secrets.token_hex(6)
    custom = await second_sender(api, account, mps=5)
    numbers = unique_numbers(8)
    body = {
        "recipients": [
            {"recipient": number, **({"originator": custom} if index % 2 else {})}
            for index, number in enumerate(numbers)
        ],
        "text": f"paced {run}",
        "originator": account.agent_number,
    }

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 200, response.text
    batch = await wait_for_status(api, account, response.json()["record"]["id"], *FINAL)
    assert batch["status"] == "completed"
    received = await emulator_messages(emulator_url, body_contains=run)
    senders = {m["to"]: m["from"] for m in received}
    assert senders == {
        number: custom if index % 2 else account.agent_number
        for index, number in enumerate(numbers)
    }
    # Never faster than the sender's own limit.
    assert no_faster_than([m for m in received if m["from"] == custom], 5)


async def test_one_number_in_recipient_as_the_request_table_lists_it_is_sent(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    """The contract's table lists a top-level `recipient` (its example gives `recipients`):
    one message to that number. Before, it was ignored and the request refused for having
    no recipients."""
    number = unique_numbers(1)[0]
    body = {"text": "Hello", "originator": account.agent_number}

    one = await api.post(
        "/send/batch", headers=bearer(account), json=body | {"recipient": number[1:]}
    )
    both = await api.post(
        "/send/batch",
        headers=bearer(account),
        json=body | {"recipient": number[1:], "recipients": [{"recipient": number[1:]}]},
    )
    blank = await api.post("/send/batch", headers=bearer(account), json=body | {"recipient": " "})

    assert one.status_code == 200, one.text
    assert one.json()["record"]["recipientCount"] == 1
    batch = await wait_for_status(api, account, one.json()["record"]["id"], *FINAL)
    assert batch["status"] == "completed"
    [received] = await emulator_messages(emulator_url, to=number)
    assert (received["from"], received["body"]) == (account.agent_number, "Hello")
    for refused in (both, blank):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["name"] == "ValidationError"


async def test_a_recipients_originator_must_be_the_accounts(
    api: httpx.AsyncClient, account: Account, other_account: Account
) -> None:
    body = {
        "recipients": [
            {"recipient": unique_numbers(1)[0]},
            {"recipient": unique_numbers(1)[0], "originator": other_account.agent_number},
        ],
        "text": "hi",
        "originator": account.agent_number,
    }

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert (error["name"], error["code"]) == ("NotFoundError", "AGENT_NUMBER_NOT_FOUND")
    assert other_account.agent_number in error["message"]


@pytest.mark.parametrize("list_id", ["3392287d-7a79-4789-9ef8-000000000000", "not-an-id"])
async def test_a_mailing_list_that_is_not_the_accounts_is_a_404(
    api: httpx.AsyncClient, account: Account, list_id: str
) -> None:
    body = {
        "recipients": [{"recipient": list_id, "meta": {"type": "mailinglist"}}],
        "text": "hi",
        "originator": account.agent_number,
    }

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "LIST_NOT_FOUND"
    assert list_id in response.json()["error"]["message"]


async def test_a_batch_is_read_back_in_the_dialect(
    api: httpx.AsyncClient, account: Account
) -> None:
    body = example_for(account, unique_numbers(3))
    started = await api.post("/send/batch", headers=bearer(account), json=body)
    batch_id = started.json()["record"]["id"]
    await wait_for_status(api, account, batch_id, *FINAL)

    response = await api.get(f"/send/batch/{batch_id}", headers=bearer(account))
    missing = await api.get(f"/send/batch/{uuid.uuid4()}", headers=bearer(account))

    assert response.status_code == 200, response.text
    record = response.json()["record"]
    # The time it was accepted, as the POST's reply said it.
    assert record.pop("scheduled") == started.json()["record"]["scheduled"]
    assert response.json()["success"] is True
    assert record == {
        "id": batch_id,
        "type": "BatchSMS",
        "recipientCount": 3,
        "name": "My Campaign",
        "status": "completed",
        "counts": {"sent": 3, "rejected": 0},
    }
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "BATCH_NOT_FOUND"


async def test_references_are_stored_before_the_batch_starts_sending(
    api: httpx.AsyncClient,
    account: Account,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stored once the workflow had started, a failure to store them answered an error for a
    # batch already sending, and the client's repeat (a new batch) sent everyone again.
    started_when_stored: list[bool] = []
    store_references = messages.add_references

    async def add_references(
        pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID, references: Any
    ) -> None:
        try:
            await temporal.get_workflow_handle(batch_workflow_id(str(batch_id))).describe()
            started_when_stored.append(True)
        except RPCError:
            started_when_stored.append(False)
        await store_references(pool, account_id, batch_id, references)

    monkeypatch.setattr(messages, "add_references", add_references)
    body = example_for(account, unique_numbers(2))

    started = await api.post("/send/batch", headers=bearer(account), json=body)

    assert started.status_code == 200, started.text
    assert started_when_stored == [False]


class _StartAnswerLost:
    """The real Temporal client, whose start of a workflow reaches the server and then fails
    as a deadline passed before its answer came."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def start_workflow(self, *args: Any, **kwargs: Any) -> Any:
        await self._client.start_workflow(*args, **kwargs)
        raise RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")


async def test_a_start_whose_answer_was_lost_is_accepted_not_refused_for_a_repeat(
    settings: Settings, account: Account, emulator_url: str
) -> None:
    """The workflow started but its start's answer was lost: a 503 would have the client
    send the request again, a new batch, and everyone twice. The batch is accepted."""
    numbers = unique_numbers(3)
    async with api_client(settings, temporal_as=_StartAnswerLost) as api:
        response = await api.post(
            "/send/batch", headers=bearer(account), json=example_for(account, numbers)
        )
        assert response.status_code == 200, response.text
        batch = await wait_for_status(api, account, response.json()["record"]["id"], *FINAL)

    assert batch["status"] == "completed"
    assert [len(await emulator_messages(emulator_url, to=n)) for n in numbers] == [1, 1, 1]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer hk_not-a-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic aGs6aGs="},
    ],
)
async def test_a_missing_or_bad_key_gets_the_documented_403(
    api: httpx.AsyncClient, account: Account, headers: dict[str, str]
) -> None:
    body = example_for(account, unique_numbers(3))

    response = await api.post("/send/batch", headers=headers, json=body)

    assert response.status_code == 403
    assert response.json() == AUTHENTICATION_ERROR


async def test_the_raw_key_of_the_bland_routes_is_not_the_dialects_form(
    api: httpx.AsyncClient, account: Account
) -> None:
    body = example_for(account, unique_numbers(3))

    dialect = await api.post("/send/batch", headers=account.headers, json=body)
    bland = await api.get("/v1/sms/batches", headers=account.headers)
    bland_bearer = await api.get("/v1/sms/batches", headers=bearer(account))
    bland_bad = await api.get("/v1/sms/batches", headers={"authorization": "hk_nope"})

    assert dialect.status_code == 403
    assert dialect.json() == AUTHENTICATION_ERROR
    assert bland.status_code == bland_bearer.status_code == 200
    assert bland_bad.status_code == 401
    assert bland_bad.json()["errors"][0]["error"] == "UNAUTHORIZED"


def future(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"text": None}, "text: Field required"),
        ({"originator": ""}, "originator: String should have at least 1 character"),
        ({"recipients": None}, "body: give the recipients in `recipients` or `messages`"),
        ({"recipients": []}, "recipients: List should have at least 1 item"),
        ({"messages": [{"recipient": "15005550006"}]}, "body: give the recipients in"),
        ({"recipients": [{"reference": "x"}]}, "recipients.0.recipient: Field required"),
        (
            {"recipients": [{"recipient": " \t", "reference": "x"}]},
            "recipients.0.recipient: recipient is blank",
        ),
        ({"recipients": ["15005550006"]}, "recipients.0: Input should be a valid dictionary"),
        ({"spreadHours": -1}, "spreadHours: Input should be greater than or equal to 0"),
        ({"scheduleDateTime": "2020-01-01T00:00:00Z"}, "scheduleDateTime: scheduleDateTime is in"),
        ({"scheduleDateTime": "2030-01-01T00:00:00"}, "scheduleDateTime: Input should have"),
        ({"excludeOptOuts": "perhaps"}, "excludeOptOuts: Input should be a valid boolean"),
        ({"text": "hi\x00"}, "body.text holds a NUL character"),
        (
            {"recipients": [{"recipient": "15005550006", "reference": "\x00"}]},
            "body.recipients[0].reference holds a NUL character",
        ),
        (
            {"recipients": [{"recipient": "15005550006", "meta": {"A": ["\x00"]}}]},
            "body.recipients[0].meta.A[0] holds a NUL character",
        ),
    ],
)
async def test_a_bad_body_gets_a_400_listing_what_is_wrong(
    api: httpx.AsyncClient, account: Account, change: dict[str, Any], detail: str
) -> None:
    body = {"recipients": [{"recipient": "15005550006"}], "text": "hi", "shortenUrls": True}
    body |= {"originator": account.agent_number, **change}

    response = await api.post(
        "/send/batch",
        headers=bearer(account),
        json={key: value for key, value in body.items() if value is not None},
    )

    assert response.status_code == 400, response.text
    reply = response.json()
    assert reply["success"] is False
    assert reply["error"]["name"] == "ValidationError"
    assert reply["error"]["statusCode"] == 400
    assert any(line.startswith(detail) for line in reply["error"]["details"]), reply


@pytest.mark.parametrize(
    "change",
    [
        {"scheduleDateTime": "2020-01-01T00:00:00Z"},
        {"scheduleDateTime": "2030-01-01T00:00:00"},
        # Year 10000 in UTC: no date of Python's, nor of PostgreSQL's timestamps.
        {"scheduleDateTime": "9999-12-31T23:59:59-14:00"},
        {"spreadHours": 200},
    ],
)
async def test_a_bad_schedule_has_the_schedules_code_as_on_heralds_own_route(
    api: httpx.AsyncClient, account: Account, change: dict[str, Any]
) -> None:
    body = {"recipients": [{"recipient": "15005550006"}], "text": "hi"}

    response = await api.post(
        "/send/batch",
        headers=bearer(account),
        json=body | {"originator": account.agent_number, **change},
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_SCHEDULE"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"statusWebhook": "not a url"}, "INVALID_WEBHOOK_URL"),
        ({"recipients": None, "messages": [{"reference": "x"}]}, "INVALID_RECIPIENTS"),
        ({"recipients": [{"recipient": 15005550006}]}, "INVALID_RECIPIENTS"),
    ],
)
async def test_a_bad_field_has_its_code_as_on_heralds_own_route(
    api: httpx.AsyncClient, account: Account, change: dict[str, Any], code: str
) -> None:
    body = {"recipients": [{"recipient": "15005550006"}], "text": "hi"}
    body |= {"originator": account.agent_number, **change}

    response = await api.post(
        "/send/batch",
        headers=bearer(account),
        json={key: value for key, value in body.items() if value is not None},
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


async def test_null_options_are_left_out(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    number = unique_numbers(1)[0]
    body = {"recipients": [{"recipient": number}], "text": "nulls", "spreadHours": None}
    body |= {"originator": account.agent_number, "shortenUrls": None}

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 200, response.text
    batch = await wait_for_status(api, account, response.json()["record"]["id"], *FINAL)
    assert batch["status"] == "completed"
    assert [m["body"] for m in await emulator_messages(emulator_url, to=number)] == ["nulls"]


async def test_numbers_and_lists_over_the_row_limit_are_refused_before_anything_starts(
    settings: Settings, account: Account, pool: asyncpg.Pool
) -> None:
    small = settings.model_copy(update={"max_rows_per_batch": 3})
    async with api_client(small) as api:
        list_id = await example_list(api, account, unique_numbers(2))
        numbers: list[dict[str, Any]] = [{"recipient": n} for n in unique_numbers(2)]
        recipients = [*numbers, {"recipient": list_id, "meta": {"type": "mailinglist"}}]
        body = {"text": "hi", "originator": account.agent_number, "recipients": recipients}

        response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "TOO_MANY_RECIPIENTS"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM batches WHERE account_id = $1", account.account_id
        )
        == 0
    )


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b""])
async def test_a_body_that_is_not_an_object_gets_a_400_in_the_dialects_envelope(
    api: httpx.AsyncClient, account: Account, content: bytes
) -> None:
    headers = {**bearer(account), "content-type": "application/json"}

    response = await api.post("/send/batch", headers=headers, content=content)

    assert response.status_code == 400, response.text
    assert response.json()["success"] is False
    assert response.json()["error"]["name"] == "ValidationError"
    assert response.json()["error"]["details"]


async def test_an_unregistered_originator_is_refused_in_the_dialects_envelope(
    api: httpx.AsyncClient, account: Account
) -> None:
    body = {"recipients": [{"recipient": "15005550006"}], "text": "hi", "originator": "+15550001"}

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["name"] == "NotFoundError"
    assert error["code"] == "AGENT_NUMBER_NOT_FOUND"
    assert "+15550001" in error["message"]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2031-05-01T14:30:00Z", "2031-05-01T14:30:00.000Z"),
        ("2031-05-01T14:30:00.5+05:30", "2031-05-01T09:00:00.500Z"),
        ("2031-05-01T14:30:00+0530", "2031-05-01T09:00:00.000Z"),
    ],
)
async def test_messages_schedule_and_options_carry_over_to_the_batch(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, written: str, expected: str
) -> None:
    first, second = unique_numbers(2)
    body = {
        "messages": [{"recipient": first}, {"recipient": second, "reference": "r2"}],
        "text": "later",
        "originator": account.agent_number.removeprefix("+"),
        "scheduleDateTime": written,
        "spreadHours": 2,
        "excludeOptouts": False,
        "excludeDuplicates": False,
        "routeId": "route-7",
        "shortenUrls": True,
        "unknownField": "ignored",
    }

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 200, response.text
    record = response.json()["record"]
    assert record["scheduled"] == expected
    assert record["recipientCount"] == 2
    batch = await batches.get_batch(pool, account.account_id, uuid.UUID(record["id"]))
    assert batch is not None
    assert batch["request"] == {
        "file_id": record["id"],
        "global": {
            "agent_number": account.agent_number,
            "agent_message": "later",
            "route_id": "route-7",
        },
        "exclude_duplicates": False,
        "exclude_opt_outs": False,
        "schedule_at": datetime.fromisoformat(written).isoformat().replace("+00:00", "Z"),
        "spread_hours": 2.0,
        "number_check": "possible",
        "shorten_urls": True,
    }
    await wait_for_status(api, account, record["id"], "waiting_for_scheduled_messages")
    cancelled = await api.post(f"/v1/sms/batch/{record['id']}/cancel", headers=account.headers)
    assert cancelled.status_code == 200, cancelled.text
    await wait_for_status(api, account, record["id"], "cancelled")


async def test_any_meta_key_is_a_template_tag_and_nothing_else(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    number = unique_numbers(1)[0]
    body = {
        "recipients": [
            {"recipient": number, "meta": {"phone_number": "nine", "agent_message": "plain"}}
        ],
        "text": "{{phone_number}} {{ agent_message }}",
        "originator": account.agent_number,
    }

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 200, response.text
    batch = await wait_for_status(api, account, response.json()["record"]["id"], *FINAL)
    assert batch["status"] == "completed"
    received = await emulator_messages(emulator_url, to=number)
    assert [m["body"] for m in received] == ["nine plain"]


async def test_an_unknown_path_under_send_answers_in_the_dialects_envelope(
    api: httpx.AsyncClient, account: Account
) -> None:
    response = await api.post("/send/sms", headers=bearer(account), json={})

    assert response.status_code == 404
    assert response.json()["success"] is False
    assert response.json()["error"]["name"] == "NotFoundError"


async def test_a_body_over_the_limit_gets_a_413_in_the_dialects_envelope(
    settings: Settings, account: Account
) -> None:
    body = example_for(account, unique_numbers(3))

    async with api_client(settings.model_copy(update={"max_batch_body_bytes": 100})) as small:
        response = await small.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 413
    assert response.json()["success"] is False
    assert response.json()["error"]["name"] == "PayloadTooLargeError"
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_ten_thousand_recipients_in_a_two_megabyte_body_are_each_sent_once(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    run = secrets.token_hex(6)
    numbers = unique_numbers(10_000)
    body = {
        "recipients": [
            {
                "recipient": number,
                "reference": f"ref-{index}",
                "meta": {"NAME": f"Name{index}", "NOTE": "n" * 150},
            }
            for index, number in enumerate(numbers)
        ],
        "text": "Hi {{NAME}} [" + run + "]",
        "originator": account.agent_number,
    }
    content = json.dumps(body).encode()
    assert len(content) > 2_000_000

    response = await api.post(
        "/send/batch",
        headers={**bearer(account), "content-type": "application/json"},
        content=content,
    )

    assert response.status_code == 200, response.text
    assert response.json()["record"]["recipientCount"] == 10_000
    batch_id = response.json()["record"]["id"]
    batch = await wait_for_status(api, account, batch_id, *FINAL)
    assert batch["status"] == "completed"
    assert batch["counts"] == {"sent": 10_000, "rejected": 0}
    received = await emulator_messages(emulator_url, body_contains=run)
    assert sorted(m["to"] for m in received) == numbers
    names = {number: f"Name{index}" for index, number in enumerate(numbers)}
    assert all(m["body"] == f"Hi {names[m['to']]} [{run}]" for m in received)
    rows = await every_item(api, account, f"/v1/sms/batch/{batch_id}/messages", "messages")
    assert [m["reference"] for m in rows] == [f"ref-{index}" for index in range(10_000)]


async def test_a_recipient_that_is_not_a_number_is_reported_on_its_own(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    number = unique_numbers(1)[0]
    body = {
        "recipients": [{"recipient": "not-a-number"}, {"recipient": number}],
        "text": "one of two",
        "originator": account.agent_number,
    }

    response = await api.post("/send/batch", headers=bearer(account), json=body)

    assert response.status_code == 200, response.text
    batch_id = response.json()["record"]["id"]
    batch = await wait_for_status(api, account, batch_id, *FINAL)
    assert batch["status"] == "completed_partial"
    rejected = await api.get(f"/v1/sms/batch/{batch_id}/errors", headers=account.headers)
    assert [
        (r["row_number"], r["value"], r["code"]) for r in rejected.json()["data"]["rejected_rows"]
    ] == [(1, "not-a-number", "invalid_number")]
    assert [m["body"] for m in await emulator_messages(emulator_url, to=number)] == ["one of two"]
