"""Bland's batch fields are not dropped (issue 16): a WhatsApp batch goes out as WhatsApp
through the carrier, and a reply from a batch recipient opens a conversation that carries the
batch's fields and the recipient's merged request data."""

import json
import secrets
import uuid

import asyncpg
import httpx

from settings import Settings
from tests.support.batches import FINAL, start
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.sending import inbound_form, post_inbound
from tests.support.stack import Account, WebhookReceiver, error_code


async def _run(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    content: bytes,
    **body: object,
) -> list[dict]:
    marker = secrets.token_hex(6)
    file_id = await attach(api, account.headers, content)
    response = await start(api, account, file_id, status_webhook=webhooks.url(marker), **body)
    assert response.status_code == 200, response.text
    return await webhooks.wait_for(marker, *FINAL)


async def _run_to_ann(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    to: str,
    **settings_global: object,
) -> list[dict]:
    """A batch of one row, `to` named Ann, with these `global` fields besides the sender."""
    content = csv_bytes(["phone_number", "name"], [[to, "Ann"]])
    fields = {"agent_number": account.agent_number, **settings_global}
    return await _run(api, account, webhooks, content, **{"global": fields})


async def test_a_whatsapp_batch_reaches_the_carrier_as_whatsapp_messages_with_its_content(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    numbers = unique_numbers(2)
    content_sid = "HX" + secrets.token_hex(16)

    events = await _run(
        api,
        account,
        webhooks,
        csv_bytes(["phone_number"], [[n] for n in numbers]),
        **{
            "global": {
                "agent_number": account.agent_number,
                "channel": "whatsapp",
                "content_sid": content_sid,
                "content_variables": {"1": "Spring", "2": "20%"},
            }
        },
    )

    assert events[-1]["status"] == "completed", events[-1]
    sent = [
        m
        for n in numbers
        for m in await emulator_messages(emulator_url, to=f"whatsapp:{n}")
        if m["content_sid"] == content_sid
    ]
    assert sorted(m["to"] for m in sent) == [f"whatsapp:{n}" for n in numbers]
    assert {m["from"] for m in sent} == {f"whatsapp:{account.agent_number}"}
    assert [json.loads(m["content_variables"]) for m in sent] == [{"1": "Spring", "2": "20%"}] * 2
    assert {m["body"] for m in sent} == {""}


async def test_rows_may_give_their_own_content_template_and_variables(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    first, second, third = unique_numbers(3)
    batch_sid, own_sid = ("HX" + secrets.token_hex(16) for _ in range(2))
    rows = [
        {"phone_number": first, "content_variables": {"1": "Ann"}},
        {"phone_number": second, "content_sid": own_sid, "content_variables": '{"1": "Bob"}'},
        {"phone_number": third},
    ]
    file_id = await attach(api, account.headers, json.dumps(rows).encode())
    marker = secrets.token_hex(6)
    response = await start(
        api,
        account,
        file_id,
        status_webhook=webhooks.url(marker),
        **{
            "global": {
                "agent_number": account.agent_number,
                "channel": "whatsapp",
                "content_sid": batch_sid,
                "content_variables": {"1": "friend"},
            }
        },
    )
    assert response.status_code == 200, response.text
    assert (await webhooks.wait_for(marker, *FINAL))[-1]["status"] == "completed"

    sent = {
        n: await emulator_messages(emulator_url, to=f"whatsapp:{n}") for n in (first, second, third)
    }
    assert {
        n: [(m["content_sid"], json.loads(m["content_variables"])) for m in found]
        for n, found in sent.items()
    } == {
        first: [(batch_sid, {"1": "Ann"})],
        second: [(own_sid, {"1": "Bob"})],
        third: [(batch_sid, {"1": "friend"})],
    }


async def test_a_plain_csv_row_may_name_its_own_template(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    """A CSV file without quotes is validated by columns: its rows are numbered the same."""
    numbers = unique_numbers(3)
    batch_sid, own_sid = ("HX" + secrets.token_hex(16) for _ in range(2))
    content = csv_bytes(
        ["phone_number", "content_sid"], [[numbers[0], ""], ["", ""], [numbers[1], own_sid]]
    )
    content += f"{numbers[2]},\n".encode()

    events = await _run(
        api,
        account,
        webhooks,
        content,
        **{"global": {"agent_number": account.agent_number, "content_sid": batch_sid}},
    )

    assert events[-1]["status"] == "completed", events[-1]
    found = [
        (n, m["content_sid"]) for n in numbers for m in await emulator_messages(emulator_url, to=n)
    ]
    assert found == [(numbers[0], batch_sid), (numbers[1], own_sid), (numbers[2], batch_sid)]


async def test_a_whatsapp_batch_with_a_message_sends_its_text_on_whatsapp(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    to = unique_numbers(1)[0]

    events = await _run_to_ann(
        api, account, webhooks, to, channel="whatsapp", agent_message="Hi {{name}} " + marker
    )

    assert events[-1]["status"] == "completed"
    sent = await emulator_messages(emulator_url, body_contains=marker)
    assert [(m["to"], m["body"], m["content_sid"]) for m in sent] == [
        (f"whatsapp:{to}", f"Hi Ann {marker}", None)
    ]


async def test_an_sms_batch_stays_sms(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    to = unique_numbers(1)[0]

    await _run(
        api,
        account,
        webhooks,
        csv_bytes(["phone_number"], [[to]]),
        **{"global": {"agent_number": account.agent_number, "agent_message": marker}},
    )

    sent = await emulator_messages(emulator_url, body_contains=marker)
    assert [(m["to"], m["from"]) for m in sent] == [(to, account.agent_number)]


async def test_a_sender_id_cannot_send_a_whatsapp_batch(
    api: httpx.AsyncClient, account: Account
) -> None:
    sender_id = "Acme" + secrets.token_hex(3)
    added = await api.post("/v1/sms/numbers", headers=account.headers, json={"number": sender_id})
    assert added.status_code == 201, added.text
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [["+12015550123"]]))

    response = await start(
        api,
        account,
        file_id,
        **{"global": {"agent_number": sender_id, "channel": "whatsapp", "content_sid": "HX1"}},
    )

    assert (response.status_code, error_code(response)) == (400, "INVALID_SENDER_ID")


async def test_batch_fields_are_checked_for_type(api: httpx.AsyncClient, account: Account) -> None:
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [["+12015550123"]]))
    wrong: list[dict[str, object]] = [
        {"pathway_id": 7},
        {"persona_id": ["p"]},
        {"channel": "fax"},
        {"disposition_ids": "d1"},
        {"citation_schema_ids": [1, {}]},
        {"content_variables": "[1]"},
        {"pathway_version": 1.5},
        {"persona_settings": "fast"},
        {"start_node_id": 7},
        {"persona_version": [1]},
    ]
    for fields in wrong:
        settings_global = {"agent_number": account.agent_number, "agent_message": "x", **fields}
        response = await start(api, account, file_id, **{"global": settings_global})
        assert (response.status_code, error_code(response)) == (400, "INVALID_GLOBAL_FORMAT"), (
            fields
        )


async def test_a_reply_to_a_batch_opens_a_conversation_with_the_batch_fields(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
) -> None:
    first, second = unique_numbers(2)
    content = csv_bytes(
        ["phone_number", "request_data.account_id", "customer_name", "request_data.plan", "note"],
        [[first, "acc_001", "Alice", "", "a"], [second, "acc_002", "Bob", "silver", "b"]],
    )
    events = await _run(
        api,
        account,
        webhooks,
        content,
        column_mapping={"customer_name": "request_data"},
        **{
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "Hi {{customer_name}}",
                "pathway_id": "pathway_xyz789",
                "persona_id": "persona_1",
                "channel": "sms",
                "disposition_ids": ["d1"],
                "citation_schema_ids": ["c1", "c2"],
                "metadata": {"campaign": "spring"},
                "request_data": {"plan": "gold", "region": "us"},
            }
        },
    )
    assert events[-1]["status"] == "completed", events[-1]

    for user in (first, second):
        form = inbound_form(settings, to=account.agent_number, from_=user, body="Yes please")
        assert (await post_inbound(api, settings, form)).status_code == 200

    alice = (await _conversations(api, account, first))[0]
    assert alice["request_data"] == {
        "plan": "gold",
        "region": "us",
        "account_id": "acc_001",
        "customer_name": "Alice",
    }
    listed = await _conversations(api, account, second)
    assert len(listed) == 1
    detail = (
        await api.get(
            f"/v1/sms/conversations/{listed[0]['conversation_id']}", headers=account.headers
        )
    ).json()["data"]
    for read in (listed[0], detail):
        assert read["metadata"] == {"campaign": "spring"}
        # The row's values win over the batch's defaults (a blank cell leaves the default);
        # mapped and dotted columns are request data, a plain column (`note`) is not.
        assert read["request_data"] == {
            "plan": "silver",
            "region": "us",
            "account_id": "acc_002",
            "customer_name": "Bob",
        }
        assert (read["pathway_id"], read["persona_id"]) == ("pathway_xyz789", "persona_1")
        assert read["disposition_ids"] == ["d1"]
        assert read["citation_schema_ids"] == ["c1", "c2"]
        assert read["batch_id"] is not None


async def test_a_batch_field_stored_before_it_was_checked_is_left_off_its_replies(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    user = unique_numbers(1)[0]
    events = await _run(
        api,
        account,
        webhooks,
        csv_bytes(["phone_number"], [[user]]),
        **{"global": {"agent_number": account.agent_number, "agent_message": "Hi"}},
    )
    assert events[-1]["status"] == "completed", events[-1]
    # As a batch accepted before `global` checked these fields kept them.
    await pool.execute(
        "UPDATE batches SET request = jsonb_set(request, '{global}', request->'global' || $2)"
        " WHERE id = $1",
        uuid.UUID(events[-1]["batch_id"]),
        {"pathway_version": 1.5, "persona_settings": "fast", "start_node_id": "node_1"},
    )

    form = inbound_form(settings, to=account.agent_number, from_=user, body="Yes")
    assert (await post_inbound(api, settings, form)).status_code == 200
    listed = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )

    assert listed.status_code == 200, listed.text
    [read] = listed.json()["data"]["conversations"]
    assert (read["start_node_id"], read["pathway_version"], read["persona_settings"]) == (
        "node_1",
        None,
        None,
    )


async def test_a_conversation_whose_stored_field_does_not_fit_still_reads(
    api: httpx.AsyncClient, account: Account, settings: Settings, pool: asyncpg.Pool
) -> None:
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=account.agent_number, from_=user, body="Hello")
    assert (await post_inbound(api, settings, form)).status_code == 200
    # As a reply to such a batch stored its fields before they were checked.
    await pool.execute(
        "UPDATE conversations SET stored_fields = $3 WHERE account_id = $1 AND user_number = $2",
        account.account_id,
        user,
        {"persona_settings": "fast", "persona_id": "persona_1"},
    )

    listed = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )

    assert listed.status_code == 200, listed.text
    [read] = listed.json()["data"]["conversations"]
    assert (read["persona_id"], read["persona_settings"]) == ("persona_1", None)
    detail = await api.get(
        f"/v1/sms/conversations/{read['conversation_id']}", headers=account.headers
    )
    assert detail.status_code == 200, detail.text


async def _conversations(api: httpx.AsyncClient, account: Account, user: str) -> list[dict]:
    response = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )
    return response.json()["data"]["conversations"]


async def test_a_batch_without_request_data_columns_gives_its_defaults(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    to = unique_numbers(1)[0]
    events = await _run_to_ann(
        api, account, webhooks, to, agent_message="Hi {{name}}", request_data={"plan": "gold"}
    )
    assert events[-1]["status"] == "completed"

    form = inbound_form(settings, to=account.agent_number, from_=to, body="hello")
    assert (await post_inbound(api, settings, form)).status_code == 200

    [found] = await _conversations(api, account, to)
    assert (found["request_data"], found["metadata"]) == ({"plan": "gold"}, None)
    assert found["batch_id"] is not None
