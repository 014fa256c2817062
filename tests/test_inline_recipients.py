"""Inline batches: `POST /v1/sms/batch` with `recipients` instead of `file_id`, on the same
pipeline as an attached file."""

import secrets
import uuid

import asyncpg
import httpx
import pytest

from settings import Settings
from store import batches, files
from tests.support.batches import FINAL
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver, api_client


async def test_inline_recipients_are_each_sent_their_own_message(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    run = secrets.token_hex(6)
    first, second = unique_numbers(2)
    recipients = [
        {"phone_number": first, "first_name": "Ada"},
        {"phone_number": second, "first_name": "Grace", "agent_message": "Bye {{first_name}}"},
        {"phone_number": "not a number", "first_name": "Nobody"},
    ]

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": recipients,
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "Hi {{first_name}} " + run,
            },
            "status_webhook": webhooks.url(run),
        },
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["data"]["batch_id"]
    assert response.json()["data"]["workflow_id"] == f"sms-batch-{batch_id}"
    final = (await webhooks.wait_for(run, *FINAL))[-1]
    assert final["status"] == "completed_partial"
    assert final["batch_id"] == batch_id
    received = await emulator_messages(emulator_url, to=first) + await emulator_messages(
        emulator_url, to=second
    )
    assert sorted((m["to"], m["body"]) for m in received) == [
        (first, f"Hi Ada {run}"),
        (second, "Bye Grace"),
    ]
    rejected = await api.get(f"/v1/sms/batch/{batch_id}/errors", headers=account.headers)
    assert [(r["row_number"], r["code"]) for r in rejected.json()["data"]["rejected_rows"]] == [
        (3, "invalid_number")
    ]


async def test_inline_rows_are_stored_as_a_file_and_left_out_of_the_request(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    number = unique_numbers(1)[0]
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": [{"phone_number": number, "city": "Zürich"}],
            "global": {"agent_number": account.agent_number, "agent_message": "{{city}}"},
        },
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["data"]["batch_id"]
    name, content = await files.file_content(pool, account.account_id, uuid.UUID(batch_id))
    assert name == "recipients.json"
    assert content.decode() == f'[{{"phone_number": "{number}", "city": "Zürich"}}]'
    batch = await batches.get_batch(pool, account.account_id, uuid.UUID(batch_id))
    assert batch is not None
    assert "recipients" not in batch["request"]
    assert batch["request"]["file_id"] == batch_id


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "MISSING_FILE_ID"),
        (
            {"file_id": "FILE", "recipients": [{"phone_number": "+12015550123"}]},
            "FILE_ID_AND_RECIPIENTS",
        ),
        ({"recipients": []}, "INVALID_RECIPIENTS"),
        ({"recipients": ["+12015550123"]}, "INVALID_RECIPIENTS"),
        ({"recipients": {"phone_number": "+12015550123"}}, "INVALID_RECIPIENTS"),
        ({"recipients": [{"phone_number": "+12015550123", "a": "\x00"}]}, "INVALID_TEXT"),
        (
            {"recipients": [{"phone_number": "+12015550123", "a": {"\x00": 1}}]},
            "INVALID_TEXT",
        ),
    ],
)
async def test_a_batch_needs_exactly_one_source_of_recipients(
    api: httpx.AsyncClient, account: Account, body: dict, code: str
) -> None:
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={**body, "global": {"agent_number": account.agent_number, "agent_message": "x"}},
    )

    assert response.status_code == 400, response.text
    assert response.json()["data"] is None
    assert [e["error"] for e in response.json()["errors"]] == [code]


async def test_inline_recipients_are_held_to_the_row_limit(
    settings: Settings, account: Account
) -> None:
    async with api_client(settings.model_copy(update={"max_rows_per_batch": 2})) as api:
        response = await api.post(
            "/v1/sms/batch",
            headers=account.headers,
            json={
                "recipients": [{"phone_number": n} for n in unique_numbers(3)],
                "global": {"agent_number": account.agent_number, "agent_message": "x"},
            },
        )

    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["error"] == "TOO_MANY_RECIPIENTS"


async def test_a_batch_request_may_be_larger_than_other_bodies(
    settings: Settings, account: Account
) -> None:
    recipients = [{"phone_number": n, "note": "n" * 100} for n in unique_numbers(30)]
    limits = {"max_body_bytes": 1024, "max_batch_body_bytes": 8192}
    async with api_client(settings.model_copy(update=limits)) as api:
        batch = await api.post(
            "/v1/sms/batch",
            headers=account.headers,
            json={
                "recipients": recipients,
                "global": {"agent_number": account.agent_number, "agent_message": "x"},
            },
        )
        send = await api.post(
            "/v1/sms/send",
            headers=account.headers,
            json={
                "user_number": recipients[0]["phone_number"],
                "agent_number": account.agent_number,
                "agent_message": "n" * 4000,
            },
        )

    assert batch.status_code == 200, batch.text
    assert send.status_code == 413
    assert send.json()["errors"][0]["error"] == "PAYLOAD_TOO_LARGE"
