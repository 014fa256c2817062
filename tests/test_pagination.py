"""The one pagination style of Herald's own list endpoints (docs/API.md, Pagination): `limit`
and an opaque `cursor` in, `next_cursor` out. Walking any list by its cursors with a small
page returns every item exactly once, in the list's order, and the last page's cursor is null;
a cursor the endpoint did not give is 400 `INVALID_CURSOR`; and no list route takes the old
`offset` or `after`."""

import base64
import json
from datetime import datetime
from typing import Any

import httpx
import pytest

from api import pagination
from api.app import create_app
from api.services import conversations as conversations_service
from tests.support.batches import run_batch
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.pages import every_item, every_page
from tests.support.sending import send_ok
from tests.support.stack import Account, WebhookReceiver, error_code

# Single reads whose reply holds a list of objects that is part of the one thing read.
WHOLE_READS = {"/v1/sms/conversations/{conversation_id}"}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for option in schema.get("anyOf", []) + schema.get("allOf", []):
        if option.get("type") != "null":
            return _resolve(spec, option)
    return schema


def _is_object_array(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    schema = _resolve(spec, schema)
    return schema.get("type") == "array" and "properties" in _resolve(spec, schema.get("items", {}))


def _has_object_array(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    """Whether `schema` is an array of objects or has one as a property."""
    return _is_object_array(spec, schema) or any(
        _is_object_array(spec, prop) for prop in schema.get("properties", {}).values()
    )


def test_every_list_route_pages_by_cursor_and_none_takes_offset_or_after() -> None:
    spec = create_app().openapi()
    lists, whole_reads, wrong = set(), set(), []
    for path, operations in spec["paths"].items():
        operation = operations.get("get")
        if not path.startswith("/v1/") or operation is None:
            continue
        params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        wrong += [f"{path} takes {name}" for name in params & {"offset", "after"}]
        reply = operation["responses"]["200"]["content"].get("application/json")
        if reply is None:
            continue
        data = _resolve(spec, _resolve(spec, reply["schema"])["properties"]["data"])
        if not _has_object_array(spec, data):
            continue
        if path in WHOLE_READS:
            whole_reads.add(path)
            continue
        lists.add(path)
        if not {"cursor", "limit"} <= params:
            wrong.append(f"{path} has no cursor and limit")
        if "next_cursor" not in data.get("properties", {}):
            wrong.append(f"{path} answers no next_cursor")
        if data.get("type") == "array":
            wrong.append(f"{path} answers a bare array")

    assert wrong == []
    assert whole_reads == WHOLE_READS
    assert lists == {
        "/v1/sms/numbers",
        "/v1/campaigns",
        "/v1/sms/batches",
        "/v1/sms/batch/{batch_id}/messages",
        "/v1/sms/batch/{batch_id}/errors",
        "/v1/sms/batch/{batch_id}/logs",
        "/v1/sms/batch/{batch_id}/deliveries",
        "/v1/sms/conversations",
        "/v1/sms/conversations/{conversation_id}/messages",
        "/v1/opt-outs",
        "/v1/lists",
        "/v1/lists/{list_id}/contacts",
    }


async def _fill(api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver) -> dict:
    """Three or more items in every list of the account; the paths of its lists and the key
    of each list's items."""
    headers = account.headers
    for number in unique_numbers(2):
        added = await api.post("/v1/sms/numbers", headers=headers, json={"number": number})
        assert added.status_code == 201, added.text
    templates = {"english": "Hi {{name}}"}
    for name in ("a", "b", "c"):
        body = {"name": name, "sender": account.agent_number, "templates": templates}
        created = await api.post("/v1/campaigns", headers=headers, json=body)
        assert created.status_code == 201, created.text
    list_ids = []
    for name in ("a", "b", "c"):
        created = await api.post("/v1/lists", headers=headers, json={"name": name})
        assert created.status_code == 201, created.text
        list_ids.append(created.json()["data"]["id"])
    contacts = [{"phone_number": n} for n in unique_numbers(5)]
    added = await api.post(
        f"/v1/lists/{list_ids[0]}/contacts", headers=headers, json={"contacts": contacts}
    )
    assert added.status_code == 200, added.text
    for number in unique_numbers(3):
        opted = await api.post("/v1/opt-outs", headers=headers, json={"number": number})
        assert opted.status_code == 201, opted.text
    users = unique_numbers(3)
    for user in users:
        await send_ok(api, account, user, agent_message="hi")
    talked = await send_ok(api, account, users[0], agent_message="again")
    rows = [[n] for n in unique_numbers(5)] + [["12"], ["34"], ["56"]]
    first, _ = await run_batch(api, account, webhooks, csv_bytes(["phone_number"], rows[:2]))
    batch, _ = await run_batch(api, account, webhooks, csv_bytes(["phone_number"], rows))
    await run_batch(api, account, webhooks, csv_bytes(["phone_number"], rows[1:2]))
    return {
        "/v1/sms/numbers": "numbers",
        "/v1/campaigns": "campaigns",
        "/v1/lists": "lists",
        f"/v1/lists/{list_ids[0]}/contacts": "contacts",
        "/v1/opt-outs": "opt_outs",
        "/v1/sms/conversations": "conversations",
        f"/v1/sms/conversations/{talked['conversation_id']}/messages": "messages",
        "/v1/sms/batches": "batches",
        f"/v1/sms/batch/{batch}/messages": "messages",
        f"/v1/sms/batch/{batch}/errors": "rejected_rows",
        f"/v1/sms/batch/{batch}/logs": "events",
        f"/v1/sms/batch/{batch}/deliveries": "deliveries",
        f"/v1/sms/batch/{first}/messages?status=sent": "messages",
    }


def _newest_first(items: list[dict], id_key: str) -> bool:
    keys = [(datetime.fromisoformat(i["created_at"]), i[id_key]) for i in items]
    return keys == sorted(keys, reverse=True)


async def test_walking_every_list_by_its_cursors_returns_each_item_once_in_order(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    lists = await _fill(api, account, webhooks)

    for target, items in lists.items():
        path, _, query = target.partition("?")
        params = dict([query.split("=")]) if query else {}
        whole = await api.get(path, headers=account.headers, params={**params, "limit": 1000})
        assert whole.status_code == 200, whole.text
        expected = whole.json()["data"][items]
        pages = await every_page(api, account, path, items, limit=2, params=params)

        assert whole.json()["data"]["next_cursor"] is None, target
        assert len(expected) >= 2, (target, expected)
        assert [item for page in pages for item in page] == expected, target
        assert len(pages) == (len(expected) + 1) // 2, target
        assert [len(page) for page in pages[:-1]] == [2] * (len(pages) - 1), target
        assert len({json.dumps(item, sort_keys=True) for item in expected}) == len(expected)
    batches = await every_item(api, account, "/v1/sms/batches", "batches", limit=1)
    conversations = await every_item(
        api, account, "/v1/sms/conversations", "conversations", limit=1
    )
    assert len(batches) == 3 and _newest_first(batches, "batch_id")
    assert len(conversations) >= 3 and _newest_first(conversations, "conversation_id")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_a_cursor_the_endpoint_did_not_give_is_400_invalid_cursor(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    batch, _ = await run_batch(
        api, account, webhooks, csv_bytes(["phone_number"], [[n] for n in unique_numbers(2)])
    )
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "a"})
    list_id = created.json()["data"]["id"]
    talked = (await send_ok(api, account, unique_numbers(1)[0], agent_message="hi"))[
        "conversation_id"
    ]
    # Each list and the name its cursors carry (a batch's and a mailing list's name their own).
    lists = {
        f"/v1/lists/{list_id}/contacts": f"contacts of {list_id}",
        "/v1/sms/numbers": "numbers",
        "/v1/campaigns": "campaigns",
        "/v1/lists": "lists",
        "/v1/opt-outs": "opt_outs",
        "/v1/sms/conversations": "conversations",
        f"/v1/sms/conversations/{talked}/messages": f"messages of conversation {talked}",
        "/v1/sms/batches": "batches",
        f"/v1/sms/batch/{batch}/messages": f"messages of {batch}",
        f"/v1/sms/batch/{batch}/errors": f"errors of {batch}",
        f"/v1/sms/batch/{batch}/logs": f"logs of {batch}",
        f"/v1/sms/batch/{batch}/deliveries": f"deliveries of {batch}",
    }

    def garbage(of: str) -> list[str]:
        named = json.dumps(of)
        return [
            "",
            "garbage!",
            "%%%",
            "WzBd=====",
            _b64("not json"),
            _b64('{"seq": 1}'),
            _b64("[]"),
            _b64(f"[{named}]"),
            _b64(f"[{named}, 1, 2, 3, 4]"),
            _b64(f'[{named}, "\\u0000", "\\ud800"]'),
            _b64(f'[{named}, "\\u0000"]'),
            _b64(f"[{named}, 1e400, null]"),
            _b64("[" * 150 + "]" * 150),
            _b64(f"[{named}, {2**70}, {2**70}]"),
            # Before year 1 in UTC, as PostgreSQL is given it.
            _b64(f'[{named}, "0001-01-01T00:00:00+14:00", "6c429a7d-9f75-4dd2-91c9-c63022f7859c"]'),
            "A" * (pagination.MAX_CURSOR_CHARS + 1),
        ]

    refused = {}
    for path, of in lists.items():
        for index, cursor in enumerate(garbage(of)):
            response = await api.get(path, headers=account.headers, params={"cursor": cursor})
            refused[(path, index)] = (response.status_code, error_code(response))

    assert set(refused.values()) == {(400, "INVALID_CURSOR")}, {
        where: reply for where, reply in refused.items() if reply != (400, "INVALID_CURSOR")
    }
    # A key past every item, within 64 bits, is the page after the last: empty, not an error.
    for path, of in list(lists.items())[-4:]:
        past = pagination.encode((2**31,), of=of)
        response = await api.get(path, headers=account.headers, params={"cursor": past})
        assert response.status_code == 200, (path, response.text)
        assert response.json()["data"]["next_cursor"] is None


async def test_a_cursor_of_one_list_is_refused_by_another_of_the_same_key(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    """A cursor is the key of its own list: given to a list sorted by a key of the same shape
    (another batch's ledger, the batch's log, the campaigns) it is refused, not read as a
    place in that list."""
    recipients = csv_bytes(["phone_number"], [[n] for n in unique_numbers(2)])
    first, _ = await run_batch(api, account, webhooks, recipients)
    second, _ = await run_batch(api, account, webhooks, recipients)

    async def next_cursor(path: str) -> str:
        walked = await api.get(path, headers=account.headers, params={"limit": 1})
        cursor = walked.json()["data"]["next_cursor"]
        assert cursor is not None, (path, walked.text)
        return cursor

    given = {
        f"/v1/sms/batch/{first}/messages": [
            f"/v1/sms/batch/{second}/messages",
            f"/v1/sms/batch/{first}/logs",
            "/v1/sms/batches",
        ],
        f"/v1/sms/batch/{first}/logs": [
            f"/v1/sms/batch/{second}/logs",
            f"/v1/sms/batch/{first}/messages",
        ],
        "/v1/sms/batches": ["/v1/campaigns", "/v1/lists", "/v1/sms/conversations"],
    }
    answers = {}
    for source, others in given.items():
        cursor = await next_cursor(source)
        for other in [source, *others]:
            reply = await api.get(other, headers=account.headers, params={"cursor": cursor})
            answers[(source, other)] = (
                reply.status_code,
                error_code(reply) if reply.is_error else None,
            )

    assert answers == {
        (source, other): (200, None) if other == source else (400, "INVALID_CURSOR")
        for source, others in given.items()
        for other in [source, *others]
    }


async def test_a_conversations_read_shows_its_first_messages_and_a_cursor_to_the_rest(
    api: httpx.AsyncClient, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversation has no end while the user keeps writing: its read returned every
    message, without bound. It shows the first MESSAGES_SHOWN; its messages' own list has
    the rest, from `messages_next_cursor`."""
    monkeypatch.setattr(conversations_service, "MESSAGES_SHOWN", 2)
    user = unique_numbers(1)[0]
    texts = ["one", "two", "three"]
    for text in texts:
        sent = await send_ok(api, account, user, agent_message=text)
    conversation = f"/v1/sms/conversations/{sent['conversation_id']}"

    read = (await api.get(conversation, headers=account.headers)).json()["data"]
    rest = await api.get(
        f"{conversation}/messages",
        headers=account.headers,
        params={"cursor": read["messages_next_cursor"]},
    )

    assert [m["body"] for m in read["messages"]] == texts[:2]
    assert [m["body"] for m in rest.json()["data"]["messages"]] == texts[2:]
    assert rest.json()["data"]["next_cursor"] is None
