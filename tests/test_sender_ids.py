"""Alphanumeric sender IDs on the real stack: registered like numbers (one owner each), sent
as Twilio's `From`, paced by their own limit, never opening conversations or taking inbound,
with STOP handled by the account's opt-out list."""

import secrets

import asyncpg
import httpx
import pytest

from settings import Settings
from store.accounts import create_account, create_api_key
from tests.support.batches import run_batch, stored_files
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows, no_faster_than, received
from tests.support.sending import eventually, inbound_form, post_inbound, send
from tests.support.stack import Account, WebhookReceiver, error_code


def new_sender_id() -> str:
    return f"Id {secrets.token_hex(3)}"


async def register(
    api: httpx.AsyncClient, account: Account, sender: str, **fields: object
) -> httpx.Response:
    return await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": sender, **fields}
    )


@pytest.fixture
async def id_account(api: httpx.AsyncClient, account: Account) -> Account:
    """The `account` with an alphanumeric sender ID of its own as its agent number."""
    sender = new_sender_id()
    response = await register(api, account, f" {sender} ", mps=None)
    assert response.status_code == 201, response.text
    assert response.json()["data"]["number"] == sender
    assert response.json()["data"]["kind"] == "sender_id"
    return Account(account_id=account.account_id, key=account.key, agent_number=sender)


async def test_a_sender_id_has_one_owner(
    api: httpx.AsyncClient, pool: asyncpg.Pool, id_account: Account
) -> None:
    other_id = await create_account(pool, f"other-{secrets.token_hex(3)}")
    other = Account(
        account_id=other_id, key=(await create_api_key(pool, other_id)).key, agent_number=""
    )
    for variant in (id_account.agent_number, id_account.agent_number.upper()):
        taken = await register(api, other, variant)
        assert (taken.status_code, error_code(taken)) == (409, "SENDER_TAKEN"), variant
        assert "another account" in taken.json()["errors"][0]["message"]
    # The holder itself, in another case: told it holds the ID already, as it wrote it.
    again = await register(api, id_account, id_account.agent_number.upper())
    assert (again.status_code, error_code(again)) == (409, "SENDER_TAKEN")
    assert "another account" not in again.json()["errors"][0]["message"]
    assert repr(id_account.agent_number) in again.json()["errors"][0]["message"]

    listed = await api.get("/v1/sms/numbers", headers=id_account.headers)
    kinds = {n["number"]: n["kind"] for n in listed.json()["data"]["numbers"]}
    assert kinds[id_account.agent_number] == "sender_id"
    assert sorted(kinds.values()) == ["number", "sender_id"]
    deleted = await api.delete(
        f"/v1/sms/numbers/{id_account.agent_number}", headers=id_account.headers
    )
    assert deleted.status_code == 200, deleted.text
    assert (await register(api, other, id_account.agent_number)).status_code == 201


@pytest.mark.parametrize(
    ("sender", "fields", "code"),
    [
        ("Acme Bank 12", {}, "INVALID_PHONE_NUMBER"),  # 12 characters
        ("Acmé", {}, "INVALID_PHONE_NUMBER"),
        ("Acme-Bank", {}, "INVALID_PHONE_NUMBER"),
        ("Acme", {"channel": "whatsapp"}, "INVALID_SENDER_ID"),
        ("Acme", {"webhook": "https://example.com/hook"}, "INVALID_SENDER_ID"),
    ],
)
async def test_what_is_not_a_sender_id_is_refused(
    api: httpx.AsyncClient, account: Account, sender: str, fields: dict, code: str
) -> None:
    response = await register(api, account, sender, **fields)
    assert (response.status_code, error_code(response)) == (400, code), response.text


async def test_a_batch_from_a_sender_id_sends_it_as_from_and_skips_opt_outs(
    api: httpx.AsyncClient,
    emulator_url: str,
    id_account: Account,
    webhooks: WebhookReceiver,
) -> None:
    recipients = unique_numbers(3)
    opted_out = await api.post(
        "/v1/opt-outs", headers=id_account.headers, json={"number": recipients[0]}
    )
    assert opted_out.status_code == 201, opted_out.text
    marker = secrets.token_hex(6)

    file_id, events = await run_batch(
        api, id_account, webhooks, recipients, message=f"from an id {marker}"
    )

    # The opted-out row is skipped, which makes the batch partial.
    assert events[-1]["status"] == "completed_partial", events
    got = await received(emulator_url, marker)
    assert sorted(m["to"] for m in got) == sorted(recipients[1:])
    assert {m["from"] for m in got} == {id_account.agent_number}
    rows = {r["to_number"]: r["status"] for r in await ledger_rows(api, id_account, file_id)}
    assert rows[recipients[0]] == "skipped", rows
    listed = await api.get("/v1/sms/conversations", headers=id_account.headers)
    assert listed.json()["data"]["conversations"] == []


async def test_a_whatsapp_batch_refuses_a_sender_id_for_its_lists_too(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    """A list's own sender is checked as the batch's is: from a sender ID, every WhatsApp
    message of the list would fail at the carrier. Refused before anything is stored."""
    sender = new_sender_id()
    assert (await register(api, account, sender)).status_code == 201
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "customers"})
    assert created.status_code == 201, created.text
    contacts = await api.post(
        f"/v1/lists/{created.json()['data']['id']}/contacts",
        headers=account.headers,
        json={"contacts": [{"phone_number": unique_numbers(1)[0]}]},
    )
    assert contacts.status_code == 200, contacts.text

    files_before = await stored_files(pool, account)
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "hola",
                "channel": "whatsapp",
            },
            "lists": [{"id": created.json()["data"]["id"], "agent_number": sender}],
        },
    )

    assert (response.status_code, error_code(response)) == (400, "INVALID_SENDER_ID")
    assert sender in response.json()["errors"][0]["message"]
    assert await stored_files(pool, account) == files_before


async def test_a_sender_id_takes_no_webhook_later_either(
    api: httpx.AsyncClient, id_account: Account
) -> None:
    response = await api.patch(
        f"/v1/sms/numbers/{id_account.agent_number}",
        headers=id_account.headers,
        json={"webhook": "https://example.com/hook"},
    )
    assert (response.status_code, error_code(response)) == (400, "INVALID_SENDER_ID")


async def test_a_sender_id_is_paced_by_its_own_limit(
    api: httpx.AsyncClient, emulator_url: str, id_account: Account, webhooks: WebhookReceiver
) -> None:
    mps = 4.0
    changed = await api.patch(
        f"/v1/sms/numbers/{id_account.agent_number}",
        headers=id_account.headers,
        json={"mps": mps},
    )
    assert changed.status_code == 200, changed.text
    marker = secrets.token_hex(6)

    _, events = await run_batch(
        api, id_account, webhooks, unique_numbers(9), message=f"paced {marker}"
    )

    assert events[-1]["status"] == "completed", events
    got = await received(emulator_url, marker)
    assert len(got) == 9
    assert no_faster_than(got, mps)


async def test_the_mobivate_originator_may_be_a_sender_id(
    api: httpx.AsyncClient, emulator_url: str, id_account: Account
) -> None:
    marker = secrets.token_hex(6)
    recipients = unique_numbers(2)
    response = await api.post(
        "/send/batch",
        headers={"authorization": f"Bearer {id_account.key}"},
        json={
            "recipients": [{"recipient": n.removeprefix("+")} for n in recipients],
            "text": f"dialect {marker}",
            "originator": id_account.agent_number,
        },
    )
    assert response.status_code == 200, response.text

    got = await eventually(
        lambda: received(emulator_url, marker), lambda found: len(found) == len(recipients)
    )
    assert {m["from"] for m in got} == {id_account.agent_number}


async def test_a_sender_id_cannot_converse_or_receive(
    api: httpx.AsyncClient, settings: Settings, emulator_url: str, id_account: Account
) -> None:
    user = unique_numbers(1)[0]
    sent = await send(
        api, id_account, user, agent_number=id_account.agent_number, agent_message="hi"
    )
    assert (sent.status_code, error_code(sent)) == (400, "SENDER_ID_CANNOT_CONVERSE")
    assert await emulator_messages(emulator_url, to=user) == []

    form = inbound_form(settings, to=id_account.agent_number, from_=user, body="STOP")
    inbound = await post_inbound(api, settings, form)
    assert (inbound.status_code, error_code(inbound)) == (404, "AGENT_NUMBER_NOT_FOUND")
    listed = await api.get("/v1/sms/conversations", headers=id_account.headers)
    assert listed.json()["data"]["conversations"] == []
    opt_outs = await api.get("/v1/opt-outs", headers=id_account.headers)
    assert user not in {o["number"] for o in opt_outs.json()["data"]["opt_outs"]}
