"""Bland's own SMS examples, sent verbatim: only the sender number and the file id are
swapped for ones of the test's account, where the example needs them to exist."""

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.batches import FINAL
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver

EXAMPLES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "bland_sms_examples.json").read_text()
)


def documented_error(response: httpx.Response, example: dict[str, Any]) -> None:
    """The example's envelope and code, and its message (any detail after it)."""
    body = response.json()
    expected = example["errors"][0]
    assert body["data"] is None
    assert [error["error"] for error in body["errors"]] == [expected["error"]]
    message = body["errors"][0]["message"]
    assert message == expected["message"] or message.startswith(expected["message"] + ": ")


def example_request(**swapped: str) -> dict[str, Any]:
    request = json.loads(json.dumps(EXAMPLES["batch_request"]))
    if "file_id" in swapped:
        request["file_id"] = swapped["file_id"]
    if "agent_number" in swapped:
        request["global"]["agent_number"] = swapped["agent_number"]
    return request


async def test_the_documented_request_starts_a_batch(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(
        api,
        account.headers,
        csv_bytes(["phone_number", "customer_name"], [[unique_numbers(1)[0], "Ada"]]),
    )
    # The example has no agent_message: "the pathway configured on the number will handle
    # the opening message", so the number has one configured.
    configured = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}",
        headers=account.headers,
        json={"opening_message": "Hi {{customer_name}}, thanks for your order."},
    )
    assert configured.status_code == 200, configured.text

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json=example_request(file_id=file_id, agent_number=account.agent_number),
    )

    assert response.status_code == 200, response.text
    body = response.json()
    expected = EXAMPLES["batch_success"]
    assert body["errors"] is expected["errors"] is None
    assert set(body["data"]) == set(expected["data"])
    assert body["data"]["message"] == expected["data"]["message"]
    assert body["data"]["batch_id"] == file_id
    assert body["data"]["workflow_id"]


async def test_the_documented_request_without_file_id(
    api: httpx.AsyncClient, account: Account
) -> None:
    request = example_request(agent_number=account.agent_number)
    del request["file_id"]

    response = await api.post("/v1/sms/batch", headers=account.headers, json=request)

    assert response.status_code == 400, response.text
    documented_error(response, EXAMPLES["batch_missing_file_id"])


async def test_the_documented_request_as_it_stands_finds_no_file(
    api: httpx.AsyncClient, account: Account
) -> None:
    response = await api.post("/v1/sms/batch", headers=account.headers, json=example_request())

    assert response.status_code == 404, response.text
    documented_error(response, EXAMPLES["batch_file_not_found"])


async def test_the_documented_sender_is_not_one_of_the_account(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[unique_numbers(1)[0]]])
    )

    response = await api.post(
        "/v1/sms/batch", headers=account.headers, json=example_request(file_id=file_id)
    )

    assert response.status_code == 404, response.text
    documented_error(response, EXAMPLES["batch_agent_number_not_found"])


@pytest.mark.parametrize("target", ["phone_number", "request_data.phone_number"])
async def test_phone_number_is_no_mapping_target(
    api: httpx.AsyncClient, account: Account, target: str
) -> None:
    request = example_request(agent_number=account.agent_number)
    request["column_mapping"] = {"mobile": target}

    response = await api.post("/v1/sms/batch", headers=account.headers, json=request)

    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert error["error"] == "INVALID_COLUMN_MAPPING_FORMAT"
    assert "phone_number cannot be used as a target" in error["message"]


async def test_columns_mapped_to_bare_request_data_fill_the_template(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    number = unique_numbers(1)[0]
    file_id = await attach(
        api,
        account.headers,
        csv_bytes(["phone_number", "customer_name", "preferred_lang"], [[number, "Ada", "fr"]]),
    )

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "file_id": file_id,
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "{{customer_name}} {{preferred_lang}} " + marker,
            },
            "column_mapping": EXAMPLES["column_mapping"],
            "status_webhook": webhooks.url(marker),
        },
    )

    assert response.status_code == 200, response.text
    assert (await webhooks.wait_for(marker, *FINAL))[-1]["status"] == "completed"
    sent = await emulator_messages(emulator_url, to=number)
    assert [m["body"] for m in sent] == [f"Ada fr {marker}"]


async def test_json_rows_with_nested_request_data(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    first, second = unique_numbers(2)
    recipients = [
        {"phone_number": first, "request_data": {"account_id": "acc_001"}},
        {
            "phone_number": second,
            "request_data": {"account_id": "acc_002"},
            "request_data.account_id": "acc_own",
        },
    ]

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": recipients,
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "{{account_id}} " + marker,
            },
            "status_webhook": webhooks.url(marker),
        },
    )

    assert response.status_code == 200, response.text
    assert (await webhooks.wait_for(marker, *FINAL))[-1]["status"] == "completed"
    sent = await emulator_messages(emulator_url, to=first) + await emulator_messages(
        emulator_url, to=second
    )
    assert sorted((m["to"], m["body"]) for m in sent) == sorted(
        [(first, f"acc_001 {marker}"), (second, f"acc_own {marker}")]
    )


@pytest.mark.parametrize(
    ("number_check", "sent", "rejected"),
    [
        (None, ["+14155551234"], [(2, "+10987654321", "invalid_number")]),
        ("possible", ["+10987654321", "+14155551234"], []),
    ],
)
async def test_the_documented_csv_under_each_number_check(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    number_check: str | None,
    sent: list[str],
    rejected: list[tuple[int, str, str]],
) -> None:
    marker = secrets.token_hex(6)
    file_id = await attach(api, account.headers, EXAMPLES["csv"].encode())
    request: dict[str, Any] = {
        "file_id": file_id,
        "global": {
            "agent_number": account.agent_number,
            "agent_message": "{{first_name}} {{account_id}} " + marker,
        },
        "status_webhook": webhooks.url(marker),
    }
    if number_check is not None:
        request["number_check"] = number_check

    response = await api.post("/v1/sms/batch", headers=account.headers, json=request)

    assert response.status_code == 200, response.text
    await webhooks.wait_for(marker, *FINAL)
    ledger = await api.get(f"/v1/sms/batch/{file_id}/messages", headers=account.headers)
    rows = ledger.json()["data"]["messages"]
    assert sorted(r["to_number"] for r in rows if r["status"] == "sent") == sent
    errors = await api.get(f"/v1/sms/batch/{file_id}/errors", headers=account.headers)
    assert [
        (r["row_number"], r["value"], r["code"]) for r in errors.json()["data"]["rejected_rows"]
    ] == rejected
