"""A reply's conversation takes its recipient's request data from the row's ledger row, kept
at validation by either engine: the batch's file is not read again (it was read up to the row
for every conversation, 0.4 s and the whole file in memory for the last row of 1,000,000),
and a mailing list's contact gets its own fields, not those of the file's row of its number."""

import json
import secrets
import uuid

import asyncpg
import httpx
import pytest

from settings import Settings
from store import numbers
from tests.support.batches import FINAL, start, start_marked_batch, wait_for_status
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.sending import inbound_form, post_inbound
from tests.support.stack import Account, WebhookReceiver

DEFAULTS = {"plan": "gold", "region": "us"}


def plain_file(first: str, second: str) -> bytes:
    """A plain CSV: the column engine's."""
    return csv_bytes(
        ["phone_number", "request_data.account_id", "customer_name", "request_data.plan"],
        [[first, "acc_001", "Alice", " "], [second, "acc_002", "Bob", "silver"]],
    )


def json_file(first: str, second: str) -> bytes:
    """A JSON array: the row engine's."""
    rows = [
        {
            "phone_number": first,
            "customer_name": "Alice",
            "request_data": {"account_id": "acc_001"},
        },
        {
            "phone_number": second,
            "customer_name": "Bob",
            "request_data": {"account_id": "acc_002", "plan": "silver"},
        },
    ]
    return json.dumps(rows).encode()


async def _conversation_data(api: httpx.AsyncClient, account: Account, user: str) -> object:
    response = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )
    [conversation] = response.json()["data"]["conversations"]
    return conversation["request_data"]


@pytest.mark.parametrize("make_file", [plain_file, json_file])
async def test_a_reply_takes_its_rows_request_data_from_the_ledger(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
    make_file: object,
) -> None:
    assert callable(make_file)
    first, second = unique_numbers(2)
    marker = secrets.token_hex(6)
    file_id = await attach(api, account.headers, make_file(first, second))
    response = await start(
        api,
        account,
        file_id,
        status_webhook=webhooks.url(marker),
        column_mapping={"customer_name": "request_data"},
        **{
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "Hi {{customer_name}}",
                "request_data": DEFAULTS,
            }
        },
    )
    assert response.status_code == 200, response.text
    events = await webhooks.wait_for(marker, *FINAL)
    assert events[-1]["status"] == "completed", events[-1]
    # The file as stored now has no rows: a reply that read it would find none of theirs.
    await pool.execute(
        "UPDATE files SET content = $2 WHERE account_id = $1",
        account.account_id,
        b"phone_number,request_data.account_id,customer_name\n",
    )

    for user in (first, second):
        form = inbound_form(settings, to=account.agent_number, from_=user, body="Yes")
        assert (await post_inbound(api, settings, form)).status_code == 200

    # A blank cell leaves the default; the row's values win over the batch's.
    assert await _conversation_data(api, account, first) == {
        **DEFAULTS,
        "account_id": "acc_001",
        "customer_name": "Alice",
    }
    assert await _conversation_data(api, account, second) == {
        "plan": "silver",
        "region": "us",
        "account_id": "acc_002",
        "customer_name": "Bob",
    }


async def list_of_lou(api: httpx.AsyncClient, account: Account, number: str) -> str:
    """A mailing list of the account holding one contact, `number`, whose `NAME` is Lou; its
    id."""
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "customers"})
    list_id: str = created.json()["data"]["id"]
    added = await api.post(
        f"/v1/lists/{list_id}/contacts",
        headers=account.headers,
        json={"contacts": [{"phone_number": number, "NAME": "Lou"}]},
    )
    assert added.status_code in (200, 201), added.text
    return list_id


async def test_a_reply_from_a_lists_contact_takes_the_contacts_fields(
    api: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    inline, listed = unique_numbers(2)
    list_id = await list_of_lou(api, account, listed)
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": [{"phone_number": inline, "NAME": "Ina"}],
            "lists": [{"id": list_id}],
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "Hi {{NAME}}",
                "request_data": {"NAME": "friend"},
            },
        },
    )
    assert response.status_code == 200, response.text
    batch = await wait_for_status(api, account, response.json()["data"]["batch_id"], *FINAL)
    assert batch["status"] == "completed", batch

    for user in (inline, listed):
        form = inbound_form(settings, to=account.agent_number, from_=user, body="Yes")
        assert (await post_inbound(api, settings, form)).status_code == 200

    # The inline row's `NAME` is a template variable, not request data; the contact's fields
    # are its request data (activities/recipients/contacts.py).
    assert await _conversation_data(api, account, inline) == {"NAME": "friend"}
    assert await _conversation_data(api, account, listed) == {"NAME": "Lou"}


async def test_a_reply_to_a_lists_own_sender_takes_its_contacts_fields(
    api: httpx.AsyncClient, account: Account, settings: Settings, pool: asyncpg.Pool
) -> None:
    # The list's contacts are sent from the list's sender, not the batch's: a reply to it
    # was looked up by the batch's sender, and found no row (or an older batch's of it).
    listed = unique_numbers(1)[0]
    own_sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account.account_id, own_sender, "sms", None)
    list_id = await list_of_lou(api, account, listed)
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "lists": [{"id": list_id, "agent_number": own_sender}],
            "global": {"agent_number": account.agent_number, "agent_message": "Hi {{NAME}}"},
        },
    )
    assert response.status_code == 200, response.text
    batch = await wait_for_status(api, account, response.json()["data"]["batch_id"], *FINAL)
    assert batch["status"] == "completed", batch

    form = inbound_form(settings, to=own_sender, from_=listed, body="Yes")
    assert (await post_inbound(api, settings, form)).status_code == 200

    assert await _conversation_data(api, account, listed) == {"NAME": "Lou"}


async def test_a_row_validated_before_rows_kept_their_request_data_has_it_read_from_the_file(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    first, second = unique_numbers(2)
    content = plain_file(first, second)
    file_id, marker = await start_marked_batch(api, account, webhooks, content, message="Hi")
    assert (await webhooks.wait_for(marker, *FINAL))[-1]["status"] == "completed"
    # As a ledger written before the rows kept their request data has them, and its batch,
    # validated before it kept the rows validation skipped (migration 380).
    await pool.execute(
        "UPDATE messages SET request_data = NULL WHERE batch_id = $1", uuid.UUID(file_id)
    )
    await pool.execute(
        "UPDATE batches SET validated_skipped = NULL WHERE id = $1", uuid.UUID(file_id)
    )

    form = inbound_form(settings, to=account.agent_number, from_=second, body="Yes")
    assert (await post_inbound(api, settings, form)).status_code == 200

    assert await _conversation_data(api, account, second) == {
        "account_id": "acc_002",
        "plan": "silver",
    }


async def test_a_reply_to_a_large_json_file_without_request_data_does_not_read_the_file(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    """A JSON file (inline recipients are stored as one) with no request-data field keeps none
    in its ledger rows; its header is not in its first bytes once it is larger than they
    are, and each first reply read and parsed the whole file (up to 40 MB) to find none."""
    first, second = unique_numbers(2)
    padding = "x" * (40 * 1024)
    rows: list[dict[str, object]] = [{"phone_number": n, "note": padding} for n in (first, second)]
    file_id, marker = await start_marked_batch(
        api, account, webhooks, json.dumps(rows).encode(), message="Hi"
    )
    assert (await webhooks.wait_for(marker, *FINAL))[-1]["status"] == "completed"
    # The file as stored now gives the row request data: a reply that read it would take it.
    rows[1]["request_data"] = {"account_id": "acc_002"}
    await pool.execute(
        "UPDATE files SET content = $2 WHERE account_id = $1 AND id = $3",
        account.account_id,
        json.dumps(rows).encode(),
        uuid.UUID(file_id),
    )

    form = inbound_form(settings, to=account.agent_number, from_=second, body="Yes")
    assert (await post_inbound(api, settings, form)).status_code == 200

    assert await _conversation_data(api, account, second) is None


async def test_request_data_postgresql_cannot_store_is_kept_replaced(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    """A JSON file's `\\u0000` and lone surrogates, which no jsonb holds, in request data its
    message does not use: the batch is sent, and the reply gets them as U+FFFD."""
    [to] = unique_numbers(1)
    content = (
        b'[{"phone_number": "%s", "request_data": {"note": "a\\u0000b", "s": "\\ud800"}}]'
        % to.encode()
    )
    _, marker = await start_marked_batch(api, account, webhooks, content, message="Hi")
    assert (await webhooks.wait_for(marker, *FINAL))[-1]["status"] == "completed"

    form = inbound_form(settings, to=account.agent_number, from_=to, body="Yes")
    assert (await post_inbound(api, settings, form)).status_code == 200

    assert await _conversation_data(api, account, to) == {"note": "a\ufffdb", "s": "\ufffd"}
