"""Campaigns, `/v1/campaigns`: created, read, changed and deleted per account, with their
templates checked when saved; named by Herald's own batches and single sends instead of a
message."""

import asyncio
import secrets
from typing import Any

import asyncpg
import httpx
import pytest

from api.services import batches as batch_service
from settings import Settings
from store import campaigns
from store.accounts import create_account, create_api_key
from tests.support.batches import FINAL, wait_for_status
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.postman_example import TEMPLATES
from tests.support.sending import eventually, send
from tests.support.stack import Account, error_code


def campaign_body(account: Account, **change: Any) -> dict[str, Any]:
    return {"name": "Passports", "sender": account.agent_number, "templates": TEMPLATES, **change}


async def test_a_campaign_is_created_read_changed_and_deleted(
    api: httpx.AsyncClient, account: Account
) -> None:
    created = await api.post("/v1/campaigns", headers=account.headers, json=campaign_body(account))
    assert created.status_code == 201, created.text
    campaign = created.json()["data"]
    assert campaign["parameters"] == ["recipient_name", "topic"]
    assert campaign["templates"] == TEMPLATES
    assert campaign["sender"] == account.agent_number
    path = f"/v1/campaigns/{campaign['id']}"

    listed = await api.get("/v1/campaigns", headers=account.headers)
    read = await api.get(path, headers=account.headers)
    changed = await api.patch(
        path, headers=account.headers, json={"name": "Renewals", "templates": {"malay": "{{body}}"}}
    )
    deleted = await api.delete(path, headers=account.headers)
    gone = await api.get(path, headers=account.headers)

    assert [c["id"] for c in listed.json()["data"]["campaigns"]] == [campaign["id"]]
    assert read.json()["data"] == campaign
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["name"] == "Renewals"
    assert changed.json()["data"]["templates"] == {"malay": "{{body}}"}
    assert changed.json()["data"]["parameters"] == ["body"]
    assert deleted.json()["data"] == {"deleted": campaign["id"]}
    assert gone.status_code == 404
    assert error_code(gone) == "CAMPAIGN_NOT_FOUND"


@pytest.mark.parametrize(
    ("templates", "reason"),
    [
        ({"english": "Hi {{Name}}"}, "parameter {{Name}} is not lowercase letters"),
        ({"english": "Hi {{first name}}"}, "parameter {{first name}} is not lowercase"),
        ({"english": "{{body}} from {{office}}"}, "uses {{body}} with other parameters"),
        (
            {"english": "Hi {{name}}", "tamil": "Hi {{name}} {{topic}}"},
            "the tamil template's parameters ['name', 'topic'] are not the english",
        ),
        ({"english": "  "}, "the english template is empty"),
        ({"english": "Hi {{recipient}}"}, "parameter {{recipient}} is named as the file's"),
        ({"english": "In {{language}}"}, "parameter {{language}} is named as the file's"),
    ],
)
async def test_a_template_is_checked_when_saved(
    api: httpx.AsyncClient, account: Account, templates: dict[str, str], reason: str
) -> None:
    body = campaign_body(account, templates=templates)

    response = await api.post("/v1/campaigns", headers=account.headers, json=body)

    assert response.status_code == 400, response.text
    assert error_code(response) == "INVALID_TEMPLATE"
    assert reason in response.json()["errors"][0]["message"]


async def test_a_template_longer_than_a_message_is_refused_when_saved(
    api: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    limit = settings.max_message_chars
    longest = {"english": "x" * (limit - len("{{body}}")) + "{{body}}"}
    too_long = {"english": "{{body}}" + "x" * (limit - len("{{body}}") + 1)}

    created = await api.post(
        "/v1/campaigns", headers=account.headers, json=campaign_body(account, templates=longest)
    )
    refused = await api.post(
        "/v1/campaigns", headers=account.headers, json=campaign_body(account, templates=too_long)
    )
    changed = await api.patch(
        f"/v1/campaigns/{created.json()['data']['id']}",
        headers=account.headers,
        json={"templates": too_long},
    )

    assert created.status_code == 201, created.text
    for response in (refused, changed):
        assert response.status_code == 400, response.text
        assert error_code(response) == "INVALID_TEMPLATE"
        assert (
            f"the english template has {limit + 1} characters; a message has at most"
            in (response.json()["errors"][0]["message"])
        )


async def test_an_allow_list_holds_addresses_and_networks_written_as_text(
    api: httpx.AsyncClient, account: Account
) -> None:
    given = ["203.0.113.7", "198.51.100.0/24", "2001:db8::/32"]

    created = await api.post(
        "/v1/campaigns", headers=account.headers, json=campaign_body(account, allowed_ips=given)
    )
    refused = [
        await api.post(
            "/v1/campaigns", headers=account.headers, json=campaign_body(account, allowed_ips=ips)
        )
        for ips in (["10.0.0.1/8"], ["not an address"], [True], [167772161])
    ]

    assert created.status_code == 201, created.text
    assert created.json()["data"]["allowed_ips"] == [
        "203.0.113.7/32",
        "198.51.100.0/24",
        "2001:db8::/32",
    ]
    assert [(r.status_code, error_code(r)) for r in refused] == [(400, "INVALID_REQUEST")] * 4


async def test_an_update_is_checked_as_the_whole_campaign(
    api: httpx.AsyncClient, account: Account
) -> None:
    created = await api.post("/v1/campaigns", headers=account.headers, json=campaign_body(account))
    path = f"/v1/campaigns/{created.json()['data']['id']}"

    response = await api.patch(path, headers=account.headers, json={"templates": {"klingon": "x"}})
    unchanged = await api.get(path, headers=account.headers)

    assert response.status_code == 400
    assert unchanged.json()["data"] == created.json()["data"]


async def test_concurrent_changes_of_different_fields_are_all_kept(
    api: httpx.AsyncClient, account: Account
) -> None:
    created = await api.post("/v1/campaigns", headers=account.headers, json=campaign_body(account))
    path = f"/v1/campaigns/{created.json()['data']['id']}"

    for round_number in range(10):
        template = f"Round {round_number}: {{{{body}}}}"
        renamed, changed = await asyncio.gather(
            api.patch(path, headers=account.headers, json={"name": f"round {round_number}"}),
            api.patch(path, headers=account.headers, json={"templates": {"english": template}}),
        )
        campaign = (await api.get(path, headers=account.headers)).json()["data"]

        assert renamed.status_code == changed.status_code == 200, (renamed.text, changed.text)
        assert (campaign["name"], campaign["templates"], campaign["parameters"]) == (
            f"round {round_number}",
            {"english": template},
            ["body"],
        ), f"round {round_number}"


async def test_an_allow_list_and_its_clearing_together_are_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    body = campaign_body(account, allowed_ips=["203.0.113.7"])
    created = await api.post("/v1/campaigns", headers=account.headers, json=body)
    path = f"/v1/campaigns/{created.json()['data']['id']}"

    response = await api.patch(
        path,
        headers=account.headers,
        json={"allowed_ips": ["198.51.100.0/24"], "clear_allowed_ips": True},
    )
    unchanged = await api.get(path, headers=account.headers)

    assert response.status_code == 400, response.text
    assert error_code(response) == "INVALID_REQUEST"
    assert "not both" in response.json()["errors"][0]["message"]
    assert unchanged.json()["data"]["allowed_ips"] == ["203.0.113.7/32"]


async def test_the_sender_must_be_a_registered_number_of_the_account(
    api: httpx.AsyncClient, account: Account
) -> None:
    body = campaign_body(account, sender="+15005550999")

    response = await api.post("/v1/campaigns", headers=account.headers, json=body)

    assert response.status_code == 404, response.text
    assert error_code(response) == "AGENT_NUMBER_NOT_FOUND"


async def test_another_accounts_campaign_is_not_found(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    created = await api.post("/v1/campaigns", headers=account.headers, json=campaign_body(account))
    other = await create_api_key(pool, await create_account(pool, f"t-{secrets.token_hex(4)}"))
    path = f"/v1/campaigns/{created.json()['data']['id']}"

    read = await api.get(path, headers={"authorization": other.key})
    deleted = await api.delete(path, headers={"authorization": other.key})
    listed = await api.get("/v1/campaigns", headers={"authorization": other.key})

    assert read.status_code == deleted.status_code == 404
    assert listed.json()["data"] == {"campaigns": [], "next_cursor": None}
    assert (await api.get(path, headers=account.headers)).status_code == 200


async def new_campaign(api: httpx.AsyncClient, account: Account) -> str:
    created = await api.post("/v1/campaigns", headers=account.headers, json=campaign_body(account))
    assert created.status_code == 201, created.text
    campaign_id: str = created.json()["data"]["id"]
    return campaign_id


async def test_a_batch_naming_a_campaign_sends_its_template_filled_per_row(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    numbers = unique_numbers(2)
    rows = [[numbers[0], "Emily Yeo", "passport", "r1"], [numbers[1], "James Tan", "visa", ""]]
    header = ["phone_number", "recipient_name", "topic", "request_data.ref"]
    file_id = await attach(api, account.headers, csv_bytes(header, rows))

    started = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "file_id": file_id,
            "global": {"agent_number": account.agent_number},
            "campaign_id": campaign_id,
            "language": "chinese",
        },
    )
    batch = await wait_for_status(api, account, file_id, *FINAL)
    # The batch is the campaign's: the Postman dialect reads it too.
    read = await api.get(
        f"/campaigns/{campaign_id}/batch/{file_id}/messages",
        headers={"Authorization": f"Bearer {account.key}"},
    )

    assert started.status_code == 200, started.text
    assert batch["status"] == "completed"
    received = [m for n in numbers for m in await emulator_messages(emulator_url, to=n)]
    assert [m["body"] for m in received] == [
        "Emily Yeo 您的passport已准备好。",
        "James Tan 您的visa已准备好。",
    ]
    assert read.status_code == 200, read.text
    # The rows keep their request data (for replies), which are no Postman parameters.
    assert [m["values"] for m in read.json()["data"]] == [None, None]


async def test_a_repeated_campaign_batch_gets_its_first_reply_after_the_campaign_changed(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    """The same request for the same file is the same batch, whatever the campaign holds
    since (the batch keeps the text it started with), or if the campaign is gone."""
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0]
    header = ["phone_number", "recipient_name", "topic"]
    file_id = await attach(api, account.headers, csv_bytes(header, [[number, "Emily", "visa"]]))
    body = {
        "file_id": file_id,
        "global": {"agent_number": account.agent_number},
        "campaign_id": campaign_id,
    }
    path = f"/v1/campaigns/{campaign_id}"

    first = await api.post("/v1/sms/batch", headers=account.headers, json=body)
    changed = await api.patch(
        path,
        headers=account.headers,
        json={"templates": {"english": "Hi {{recipient_name}} {{topic}}"}},
    )
    after_change = await api.post("/v1/sms/batch", headers=account.headers, json=body)
    deleted = await api.delete(path, headers=account.headers)
    after_delete = await api.post("/v1/sms/batch", headers=account.headers, json=body)
    other_text = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json=body | {"global": {"agent_number": account.agent_number, "agent_message": "x"}},
    )
    batch = await wait_for_status(api, account, file_id, *FINAL)

    assert first.status_code == 200, first.text
    assert changed.status_code == deleted.status_code == 200
    assert after_change.status_code == after_delete.status_code == 200, after_change.text
    assert after_change.json() == after_delete.json() == first.json()
    # A request with a text of its own is still refused: it is no repeat.
    assert (other_text.status_code, error_code(other_text)) == (400, "CAMPAIGN_AND_MESSAGE")
    assert batch["status"] == "completed"
    [received] = await emulator_messages(emulator_url, to=number)
    assert received["body"] == "Dear Emily, your visa is ready."  # the text it started with


async def test_a_campaign_deleted_as_its_batch_starts_is_not_found(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id = await new_campaign(api, account)
    rows = [[unique_numbers(1)[0], "Emily Yeo", "passport"]]
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number", "recipient_name", "topic"], rows)
    )
    read = batch_service.campaign_template

    async def read_then_delete(*args: Any) -> tuple[dict, str]:
        found, template = await read(*args)
        await campaigns.delete_campaign(pool, account.account_id, found["id"])
        return found, template

    monkeypatch.setattr(batch_service, "campaign_template", read_then_delete)
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "file_id": file_id,
            "global": {"agent_number": account.agent_number},
            "campaign_id": campaign_id,
        },
    )
    batch = await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)

    assert response.status_code == 404, response.text
    assert error_code(response) == "CAMPAIGN_NOT_FOUND"
    assert batch.status_code == 404


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        (
            {"global": {"agent_number": "SENDER", "agent_message": "hi"}},
            400,
            "CAMPAIGN_AND_MESSAGE",
        ),
        ({"language": "tamil"}, 400, "LANGUAGE_NOT_IN_CAMPAIGN"),
        ({"campaign_id": "not-a-campaign"}, 404, "CAMPAIGN_NOT_FOUND"),
    ],
)
async def test_a_batch_naming_a_campaign_is_refused_for(
    api: httpx.AsyncClient, account: Account, change: dict[str, Any], status: int, code: str
) -> None:
    campaign_id = await new_campaign(api, account)
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [unique_numbers(1)]))
    body = {
        "file_id": file_id,
        "global": {"agent_number": account.agent_number},
        "campaign_id": campaign_id,
        **change,
    }
    if "global" in change:
        body["global"]["agent_number"] = account.agent_number

    for dry_run in (False, True):
        response = await api.post(
            "/v1/sms/batch", headers=account.headers, json=body | {"dry_run": dry_run}
        )
        assert response.status_code == status, response.text
        assert error_code(response) == code


async def test_a_single_send_naming_a_campaign_sends_its_template_filled_from_params(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0]

    response = await send(
        api,
        account,
        number,
        campaign_id=campaign_id,
        params={"recipient_name": "Emily Yeo", "topic": "passport {{x}}"},
    )

    assert response.status_code == 200, response.text
    received = await eventually(
        lambda: emulator_messages(emulator_url, to=number), lambda found: len(found) == 1
    )
    assert received[0]["body"] == "Dear Emily Yeo, your passport {{x}} is ready."


async def test_a_repeated_campaign_send_gets_its_first_reply_after_the_campaign_changed(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    body: dict[str, Any] = {
        "campaign_id": campaign_id,
        "params": {"recipient_name": "Emily", "topic": "visa"},
    }
    path = f"/v1/campaigns/{campaign_id}"

    first = await send(api, account, number, key=key, **body)
    changed = await api.patch(
        path,
        headers=account.headers,
        json={"templates": {"english": "Hi {{recipient_name}} {{topic}}"}},
    )
    after_change = await send(api, account, number, key=key, **body)
    deleted = await api.delete(path, headers=account.headers)
    after_delete = await send(api, account, number, key=key, **body)

    assert first.status_code == 200, first.text
    assert changed.status_code == deleted.status_code == 200
    assert after_change.status_code == after_delete.status_code == 200, after_change.text
    assert after_change.json() == after_delete.json() == first.json()
    received = await eventually(
        lambda: emulator_messages(emulator_url, to=number), lambda found: len(found) == 1
    )
    assert len(received) == 1


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"params": {"recipient_name": "Emily"}}, 400, "INVALID_PARAMS"),
        ({"params": {"recipient_name": "Emily", "topic": " "}}, 400, "INVALID_PARAMS"),
        ({"params": {"recipient_name": "E", "topic": "t", "other": "o"}}, 400, "INVALID_PARAMS"),
        ({"campaign_id": None}, 400, "INVALID_PARAMS"),
        ({"agent_message": "hi"}, 400, "CAMPAIGN_AND_MESSAGE"),
        ({"language": "malay"}, 400, "LANGUAGE_NOT_IN_CAMPAIGN"),
        ({"campaign_id": "6c429a7d-9f75-4dd2-91c9-c63022f7859c"}, 404, "CAMPAIGN_NOT_FOUND"),
    ],
)
async def test_a_single_send_naming_a_campaign_is_refused_for(
    api: httpx.AsyncClient, account: Account, change: dict[str, Any], status: int, code: str
) -> None:
    campaign_id = await new_campaign(api, account)
    number = unique_numbers(1)[0]
    body = {
        "campaign_id": campaign_id,
        "params": {"recipient_name": "Emily", "topic": "passport"},
        **change,
    }

    response = await send(api, account, number, **body)

    assert response.status_code == status, response.text
    assert error_code(response) == code
