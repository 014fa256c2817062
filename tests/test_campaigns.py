"""Campaigns, `/v1/campaigns`: created, read, changed and deleted per account, with their
templates checked when saved."""

import secrets
from typing import Any

import asyncpg
import httpx
import pytest

from store.accounts import create_account, create_api_key
from tests.support.postman_example import TEMPLATES
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

    assert [c["id"] for c in listed.json()["data"]] == [campaign["id"]]
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


async def test_an_update_is_checked_as_the_whole_campaign(
    api: httpx.AsyncClient, account: Account
) -> None:
    created = await api.post("/v1/campaigns", headers=account.headers, json=campaign_body(account))
    path = f"/v1/campaigns/{created.json()['data']['id']}"

    response = await api.patch(path, headers=account.headers, json={"templates": {"klingon": "x"}})
    unchanged = await api.get(path, headers=account.headers)

    assert response.status_code == 400
    assert unchanged.json()["data"] == created.json()["data"]


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
    assert listed.json()["data"] == []
    assert (await api.get(path, headers=account.headers)).status_code == 200
