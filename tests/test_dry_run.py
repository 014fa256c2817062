"""`POST /v1/sms/batch` with `"dry_run": true`: the file validated now by the batch's own
code, its figures answered, nothing sent and no batch recorded."""

import secrets

import httpx
import pytest
from pydantic import ValidationError

from settings import Settings
from tests.support.batches import FINAL, start
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver, api_client, error_code


async def dry_run(api: httpx.AsyncClient, account: Account, **body: object) -> dict:
    request: dict = {"global": {"agent_number": account.agent_number}, "dry_run": True}
    request.update(body)
    response = await api.post("/v1/sms/batch", headers=account.headers, json=request)
    assert response.status_code == 200, response.text
    assert response.json()["errors"] is None
    return response.json()["data"]


async def test_a_dry_run_answers_the_batchs_figures_and_sends_nothing(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    first, second = unique_numbers(2)
    rows = [[first, "Ada"], ["not a number", "Bob"], [first, "Ada again"], [second, "Zoë €"]]
    file_id = await attach(api, account.headers, csv_bytes(["phone_number", "name"], rows))
    message = {"agent_number": account.agent_number, "agent_message": "Hi {{name}} " + marker}

    found = await dry_run(api, account, file_id=file_id, **{"global": message})

    assert found["dry_run"] is True
    assert (found["code"], found["reason"]) == (None, None)
    counts = {
        name: found[name] for name in ("rows_total", "recipients", "to_send", "skipped", "rejected")
    }
    assert counts == {"rows_total": 4, "recipients": 3, "to_send": 2, "skipped": 1, "rejected": 1}
    assert (found["messages_gsm7"], found["messages_ucs2"], found["segments_total"]) == (1, 1, 2)
    assert [(r["row_number"], r["value"], r["code"]) for r in found["rejected_rows"]] == [
        (2, "not a number", "invalid_number")
    ]
    assert [
        (m["row_number"], m["to_number"], m["body"], m["skip_code"]) for m in found["messages"]
    ] == [
        (1, first, f"Hi Ada {marker}", None),
        (3, first, f"Hi Ada again {marker}", "duplicate"),
        (4, second, f"Hi Zoë € {marker}", None),
    ]
    assert await emulator_messages(emulator_url, body_contains=marker) == []
    unknown = await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)
    assert error_code(unknown) == "BATCH_NOT_FOUND"

    started = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={"file_id": file_id, "global": message, "status_webhook": webhooks.url(marker)},
    )
    assert started.status_code == 200, started.text
    await webhooks.wait_for(marker, *FINAL)
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    for name in ("rows_total", "recipients", "rejected", "segments_total", "messages_gsm7"):
        assert batch[name] == found[name], name


async def test_inline_rows_and_a_json_file_take_the_row_path(
    api: httpx.AsyncClient, account: Account
) -> None:
    numbers = unique_numbers(30)
    recipients = [{"phone_number": n, "request_data": {"n": str(i)}} for i, n in enumerate(numbers)]
    recipients += [{"phone_number": f"bad {i}"} for i in range(120)]
    message = {"agent_number": account.agent_number, "agent_message": "No {{n}}"}

    found = await dry_run(api, account, recipients=recipients, **{"global": message})

    assert (found["rows_total"], found["to_send"], found["rejected"]) == (150, 30, 120)
    assert len(found["rejected_rows"]) == 100
    assert [m["body"] for m in found["messages"]] == [f"No {i}" for i in range(20)]
    assert {r["code"] for r in found["rejected_rows"]} == {"invalid_number"}


async def test_a_null_channel_is_the_default_as_on_a_single_send(
    api: httpx.AsyncClient, account: Account
) -> None:
    """Clients that send every optional field send the unset ones as null."""
    message = {"agent_number": account.agent_number, "agent_message": "Hi", "channel": None}

    found = await dry_run(
        api, account, recipients=[{"phone_number": unique_numbers(1)[0]}], **{"global": message}
    )

    assert found["to_send"] == 1


async def test_a_strict_dry_run_says_the_batch_would_fail(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[unique_numbers(1)[0]], ["nope"]])
    )
    message = {"agent_number": account.agent_number, "agent_message": "hello"}

    found = await dry_run(api, account, file_id=file_id, strict=True, **{"global": message})

    assert found["code"] == "validation_failed"
    assert "row 2 invalid_number" in found["reason"]


@pytest.mark.parametrize("rows", [[["nope"], ["12"]], [[None], [None]]])
async def test_a_file_with_no_row_to_send_dry_runs_as_the_batch_fails(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, rows: list[list[object]]
) -> None:
    number = unique_numbers(1)[0]
    # Both rows rejected; or one number twice, the second a duplicate, the first opted out.
    if rows[0][0] is None:
        rows = [[number], [number]]
        added = await api.post("/v1/opt-outs", headers=account.headers, json={"number": number})
        assert added.status_code in (200, 201), added.text
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], rows))
    message = {"agent_number": account.agent_number, "agent_message": "hello"}
    marker = secrets.token_hex(6)

    found = await dry_run(api, account, file_id=file_id, **{"global": message})
    started = await start(
        api, account, file_id, status_webhook=webhooks.url(marker), **{"global": message}
    )
    final = (await webhooks.wait_for(marker, *FINAL))[-1]

    assert started.status_code == 200, started.text
    assert (found["to_send"], found["code"]) == (0, "no_valid_recipients")
    assert (final["status"], final["code"]) == ("failed", found["code"])
    assert final["reason"] == found["reason"]


async def test_a_file_without_numbers_is_refused_as_the_batch_is(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(api, account.headers, csv_bytes(["mobile"], [["+12015550123"]]))

    message = {"agent_number": account.agent_number, "agent_message": "hi"}

    response = await start(api, account, file_id, dry_run=True, **{"global": message})

    assert response.status_code == 400
    assert error_code(response) == "SOURCE_INVALID"


async def test_a_dry_run_is_refused_as_the_batch_would_be(
    api: httpx.AsyncClient, account: Account
) -> None:
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={"file_id": "nope", "global": {"agent_number": account.agent_number}, "dry_run": True},
    )

    assert response.status_code == 404
    assert error_code(response) == "FILE_NOT_FOUND"


async def test_the_cost_is_estimated_by_country_from_the_default_table(
    api: httpx.AsyncClient, account: Account
) -> None:
    us = unique_numbers(3)
    uk = "+447400123456"
    # Brazil and Guernsey (a +44 7911 number) have no default price; +1 098 is no country's
    # (`possible` lets it through).
    brazil, guernsey, nowhere = "+5511987654321", "+447911123456", "+10987654321"
    rows = [[n, "Ada"] for n in us] + [[us[0], "again"], [uk, "Zoë €"], [brazil, "x"]]
    rows += [[guernsey, "z"], [nowhere, "y"]]
    file_id = await attach(api, account.headers, csv_bytes(["phone_number", "name"], rows))
    message = {"agent_number": account.agent_number, "agent_message": "Hi {{name}}"}

    found = await dry_run(
        api, account, file_id=file_id, number_check="possible", **{"global": message}
    )

    cost = found["estimated_cost"]
    assert cost["currency"] == "USD"
    by_country = {c["country"]: c for c in cost["by_country"]}
    # The duplicate is skipped, so not priced.
    assert by_country["US"] == {
        "country": "US",
        "messages": 3,
        "segments": 3,
        "price_per_segment": 0.0083,
        "cost": 0.0249,
    }
    assert (by_country["GB"]["messages"], by_country["GB"]["cost"]) == (1, 0.0524)
    assert by_country["BR"] == {
        "country": "BR",
        "messages": 1,
        "segments": 1,
        "price_per_segment": None,
        "cost": None,
    }
    assert (by_country["unknown"]["messages"], by_country["unknown"]["cost"]) == (1, None)
    assert by_country["GG"]["cost"] is None
    assert set(by_country) == {"US", "GB", "BR", "GG", "unknown"}
    assert (cost["unknown_messages"], cost["unknown_segments"]) == (3, 3)
    assert cost["total"] == 0.0773


async def test_the_operator_sets_the_price_table(
    settings: Settings, worker: None, account: Account
) -> None:
    priced = settings.model_copy(update={"prices": {"GB": 0.05}, "price_currency": "EUR"})
    long_text = "ë" * 80  # UCS-2, two segments
    recipients = [
        {"phone_number": "+447400123456", "request_data": {"t": long_text}},
        {"phone_number": unique_numbers(1)[0], "request_data": {"t": "hi"}},
    ]
    message = {"agent_number": account.agent_number, "agent_message": "{{t}}"}
    async with api_client(priced) as api:
        found = await dry_run(api, account, recipients=recipients, **{"global": message})
    cost = found["estimated_cost"]
    assert cost["currency"] == "EUR"
    assert [(c["country"], c["segments"], c["cost"]) for c in cost["by_country"]] == [
        ("GB", 2, 0.1),
        ("US", 1, None),
    ]
    assert (cost["total"], cost["unknown_segments"]) == (0.1, 1)


@pytest.mark.parametrize(
    "prices", ['{"us": 0.01}', '{"USA": 0.01}', '{"US": -1}', '{"US": "free"}', "[1]"]
)
def test_a_price_table_that_is_not_prices_by_country_is_refused(
    monkeypatch: pytest.MonkeyPatch, prices: str
) -> None:
    monkeypatch.setenv("HERALD_PRICES", prices)
    with pytest.raises(ValidationError):
        Settings()


def test_the_price_table_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_PRICES", '{"NL": 0.09, "US": 0}')
    assert Settings().prices == {"NL": 0.09, "US": 0.0}
    monkeypatch.delenv("HERALD_PRICES")
    assert Settings().prices["US"] == 0.0083
