"""Mailing lists on the real stack: `/v1/lists` and its contacts, a batch naming a list (in
Herald's API and as a Mobivate recipient) expanded when it is validated, and each account
seeing and using only its own lists."""

import asyncio
import json
import secrets
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from api import pagination
from api.services import mailing_lists as mailing_lists_service
from api.services.mailing_lists import ListNotFound, add_contacts
from settings import Settings
from store import batches, files
from tests.support.batches import FINAL, wait_for_status
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.stack import Account, api_client, error_code


async def new_list(api: httpx.AsyncClient, account: Account, **body: Any) -> str:
    response = await api.post(
        "/v1/lists", headers=account.headers, json={"name": "customers", **body}
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


async def add(
    api: httpx.AsyncClient, account: Account, list_id: str, contacts: list[dict[str, Any]]
) -> dict[str, Any]:
    response = await api.post(
        f"/v1/lists/{list_id}/contacts", headers=account.headers, json={"contacts": contacts}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def upload(
    api: httpx.AsyncClient, account: Account, path: str, content: bytes, name: str
) -> httpx.Response:
    return await api.post(
        path, headers=account.headers, files={"file": (name, content, "application/octet-stream")}
    )


async def contacts_of(api: httpx.AsyncClient, account: Account, list_id: str) -> dict[str, Any]:
    response = await api.get(
        f"/v1/lists/{list_id}/contacts", headers=account.headers, params={"limit": 1000}
    )
    assert response.status_code == 200, response.text
    return {c["phone_number"]: c["fields"] for c in response.json()["data"]["contacts"]}


async def test_a_list_is_created_listed_read_and_deleted(
    api: httpx.AsyncClient, account: Account
) -> None:
    list_id = await new_list(api, account, name="VIP")

    listed = (await api.get("/v1/lists", headers=account.headers)).json()["data"]["lists"]
    read = (await api.get(f"/v1/lists/{list_id}", headers=account.headers)).json()["data"]
    deleted = await api.delete(f"/v1/lists/{list_id}", headers=account.headers)
    again = await api.get(f"/v1/lists/{list_id}", headers=account.headers)

    assert [(item["id"], item["name"], item["contacts"]) for item in listed] == [
        (list_id, "VIP", 0)
    ]
    assert read["id"] == list_id and read["contacts"] == 0
    assert deleted.status_code == 200 and deleted.json()["data"] == {"deleted": list_id}
    assert again.status_code == 404 and error_code(again) == "LIST_NOT_FOUND"


async def test_a_list_may_keep_the_id_it_has_elsewhere_once(
    api: httpx.AsyncClient, account: Account
) -> None:
    wanted = str(uuid.uuid4())

    assert await new_list(api, account, id=wanted) == wanted
    taken = await api.post("/v1/lists", headers=account.headers, json={"name": "x", "id": wanted})

    assert taken.status_code == 409 and error_code(taken) == "LIST_ALREADY_EXISTS"


async def test_two_accounts_may_each_have_a_list_of_the_same_id(
    api: httpx.AsyncClient, account: Account, other_account: Account
) -> None:
    wanted = str(uuid.uuid4())
    await new_list(api, other_account, id=wanted)
    a, b = unique_numbers(2)
    await add(api, other_account, wanted, [{"phone_number": a}])

    mine = await api.post("/v1/lists", headers=account.headers, json={"name": "x", "id": wanted})
    await add(api, account, wanted, [{"phone_number": b}])

    assert mine.status_code == 201 and mine.json()["data"]["id"] == wanted
    assert list(await contacts_of(api, account, wanted)) == [b]
    assert list(await contacts_of(api, other_account, wanted)) == [a]
    deleted = await api.delete(f"/v1/lists/{wanted}", headers=account.headers)
    assert deleted.status_code == 200
    kept = await api.get(f"/v1/lists/{wanted}", headers=other_account.headers)
    assert kept.json()["data"]["contacts"] == 1


async def test_contacts_come_by_body_csv_or_json_and_go_singly_or_by_file(
    api: httpx.AsyncClient, account: Account
) -> None:
    list_id = await new_list(api, account)
    a, b, c, d, e = unique_numbers(5)
    path = f"/v1/lists/{list_id}/contacts"

    by_body = await add(
        api, account, list_id, [{"phone_number": a.removeprefix("+"), "NAME": "Ann", "AGE": 40}]
    )
    by_csv = await upload(
        api,
        account,
        f"{path}/upload",
        csv_bytes(["phone_number", "NAME"], [[b, "Bob"], ["not a number", "X"], [a, "Anna"]]),
        "contacts.csv",
    )
    by_json = await upload(
        api,
        account,
        f"{path}/upload",
        json.dumps(
            [{"phone_number": c, "request_data": {"NAME": "Cy"}}, {"phone_number": d}]
        ).encode(),
        "contacts.json",
    )
    await add(api, account, list_id, [{"phone_number": e}])

    assert by_body == {"added": 1, "contacts": 1, "rejected": 0, "rejected_rows": []}
    assert by_csv.status_code == 200, by_csv.text
    assert by_csv.json()["data"]["added"] == 2
    assert by_csv.json()["data"]["contacts"] == 2
    assert [(r["row_number"], r["code"]) for r in by_csv.json()["data"]["rejected_rows"]] == [
        (2, "invalid_number")
    ]
    assert by_json.status_code == 200, by_json.text
    assert await contacts_of(api, account, list_id) == {
        a: {"NAME": "Anna"},
        b: {"NAME": "Bob"},
        c: {"NAME": "Cy"},
        d: {},
        e: {},
    }

    one = await api.delete(f"{path}/{a}", headers=account.headers)
    none = await api.delete(f"{path}/{a}", headers=account.headers)
    by_file = await upload(
        api, account, f"{path}/remove", csv_bytes(["phone_number"], [[b], [c]]), "gone.csv"
    )

    assert one.json()["data"] == {"removed": 1, "contacts": 4}
    assert none.json()["data"] == {"removed": 0, "contacts": 4}
    assert by_file.status_code == 200, by_file.text
    assert by_file.json()["data"] == {"removed": 2, "contacts": 2}
    assert set(await contacts_of(api, account, list_id)) == {d, e}


async def test_an_upload_is_stored_block_by_block_all_or_nothing(
    api: httpx.AsyncClient, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload is read and stored a block of rows at a time, in one transaction (a file of
    3 million rows, read whole, took gigabytes of the API's memory, and its reply listed
    every row refused): a number in two blocks is one contact with the later fields, rows are
    numbered through the file, a file whose later block cannot be read adds nothing, and the
    reply shows the first of the refused rows with the count of all."""
    monkeypatch.setattr(mailing_lists_service, "CONTACT_BLOCK_ROWS", 2)
    monkeypatch.setattr(mailing_lists_service, "MAX_REJECTED_SHOWN", 2)
    list_id = await new_list(api, account)
    a, b, c = unique_numbers(3)
    path = f"/v1/lists/{list_id}/contacts"
    rows = [[a, "first"], ["x", ""], [b, ""], [a, "later"], ["y", ""], ["z", ""], [c, ""]]

    added = await upload(
        api, account, f"{path}/upload", csv_bytes(["phone_number", "NAME"], rows), "c.csv"
    )
    # Its third block ends in a quote never closed.
    broken = await upload(
        api,
        account,
        f"{path}/upload",
        csv_bytes(["phone_number"], [[n] for n in unique_numbers(4)]) + b'"+1201',
        "broken.csv",
    )
    removed = await upload(
        api, account, f"{path}/remove", csv_bytes(["phone_number"], [[a], [b], [a]]), "r.csv"
    )

    assert added.status_code == 200, added.text
    data = added.json()["data"]
    assert (data["added"], data["contacts"], data["rejected"]) == (3, 3, 3)
    assert [(r["row_number"], r["value"]) for r in data["rejected_rows"]] == [(2, "x"), (5, "y")]
    assert (broken.status_code, error_code(broken)) == (400, "INVALID_CONTACTS")
    assert removed.json()["data"] == {"removed": 2, "contacts": 1}
    assert await contacts_of(api, account, list_id) == {c: {}}


async def test_two_uploads_to_one_list_at_once_take_turns(
    api: httpx.AsyncClient, account: Account
) -> None:
    """Each upload locked its numbers' rows in its own file's order: two at once with the
    same numbers in opposite orders deadlocked, and PostgreSQL failed one (a 500)."""
    list_id = await new_list(api, account)
    numbers = unique_numbers(20_000)
    path = f"/v1/lists/{list_id}/contacts/upload"
    files = [
        csv_bytes(["phone_number", "NAME"], [[n, name] for n in order])
        for order, name in ((numbers, "up"), (numbers[::-1], "down"))
    ]

    answers = await asyncio.gather(
        *(upload(api, account, path, content, "c.csv") for content in files * 2)
    )

    assert [answer.status_code for answer in answers] == [200] * 4, [a.text for a in answers]
    assert (await api.get(f"/v1/lists/{list_id}", headers=account.headers)).json()["data"][
        "contacts"
    ] == len(numbers)


async def test_contacts_for_a_list_deleted_while_their_file_is_read_are_list_not_found(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    """The list found, then deleted by another request while the upload is read: 404
    LIST_NOT_FOUND (the contacts' insert meets the list's key), never a 500."""
    list_id = await new_list(api, account)

    async def read_while_deleted() -> bytes:
        deleted = await api.delete(f"/v1/lists/{list_id}", headers=account.headers)
        assert deleted.status_code == 200, deleted.text
        return csv_bytes(["phone_number"], [[unique_numbers(1)[0]]])

    with pytest.raises(ListNotFound):
        await add_contacts(pool, account.account_id, list_id, read_while_deleted)


@pytest.mark.parametrize("action", ["upload", "remove"])
async def test_two_file_parts_are_refused_not_one_of_them_dropped(
    api: httpx.AsyncClient, account: Account, action: str
) -> None:
    list_id = await new_list(api, account)
    a, b = unique_numbers(2)
    await add(api, account, list_id, [{"phone_number": a}, {"phone_number": b}])

    response = await api.post(
        f"/v1/lists/{list_id}/contacts/{action}",
        headers=account.headers,
        files=[
            ("file", ("a.csv", csv_bytes(["phone_number"], [[a]]), "text/csv")),
            ("file", ("b.csv", csv_bytes(["phone_number"], [[b]]), "text/csv")),
        ],
    )

    assert response.status_code == 400, response.text
    assert error_code(response) == "MULTIPLE_FILES"
    assert set(await contacts_of(api, account, list_id)) == {a, b}


async def test_a_file_without_a_number_column_is_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    list_id = await new_list(api, account)

    response = await upload(
        api,
        account,
        f"/v1/lists/{list_id}/contacts/upload",
        csv_bytes(["mobile"], [["+12015550123"]]),
        "contacts.csv",
    )

    assert response.status_code == 400, response.text
    assert error_code(response) == "INVALID_CONTACTS"


async def test_a_batch_of_lists_alone_needs_a_message_for_each_list(
    api: httpx.AsyncClient, account: Account
) -> None:
    """No global message and a list without its own: refused at once (it was accepted, then
    every contact of that list was rejected `missing_message` and the batch failed)."""
    with_message, without = await new_list(api, account), await new_list(api, account)
    for list_id in (with_message, without):
        await add(api, account, list_id, [{"phone_number": unique_numbers(1)[0]}])

    async def batch(*lists: dict[str, str]) -> httpx.Response:
        return await api.post(
            "/v1/sms/batch",
            headers=account.headers,
            json={
                "global": {"agent_number": account.agent_number},
                "lists": list(lists),
            },
        )

    refused = await batch({"id": with_message, "agent_message": "hi"}, {"id": without})
    accepted = await batch({"id": with_message, "agent_message": "hi"})

    assert refused.status_code == 400, refused.text
    assert error_code(refused) == "MISSING_AGENT_MESSAGE"
    assert accepted.status_code == 200, accepted.text
    final = await wait_for_status(api, account, accepted.json()["data"]["batch_id"], *FINAL)
    assert final["status"] == "completed", final


async def test_a_batch_holds_its_rows_with_its_lists_contacts_within_the_limit(
    settings: Settings, account: Account
) -> None:
    """The contacts of the lists a batch names count with its file's or inline rows against
    `HERALD_MAX_ROWS_PER_BATCH`, a list named twice twice (each naming expands it): a request
    naming one list 170,000 times was accepted, and its validation loaded the list as often
    before it counted a row."""
    small = settings.model_copy(update={"max_rows_per_batch": 3})
    numbers = unique_numbers(4)
    async with api_client(small) as api:
        list_id = await new_list(api, account)
        await add(api, account, list_id, [{"phone_number": n} for n in numbers[:2]])
        two_rows = await attach(
            api, account.headers, csv_bytes(["phone_number"], [[numbers[2]], [numbers[3]]])
        )
        one_row = await attach(api, account.headers, csv_bytes(["phone_number"], [[numbers[2]]]))

        async def batch(**body: Any) -> httpx.Response:
            return await api.post(
                "/v1/sms/batch",
                headers=account.headers,
                json={
                    "global": {"agent_number": account.agent_number, "agent_message": "hi"},
                    **body,
                },
            )

        answers = {
            "list twice": await batch(lists=[{"id": list_id}, {"id": list_id}]),
            "two inline": await batch(
                recipients=[{"phone_number": n} for n in numbers[2:]], lists=[{"id": list_id}]
            ),
            "two in a file": await batch(file_id=two_rows, lists=[{"id": list_id}]),
            "one in a file": await batch(file_id=one_row, lists=[{"id": list_id}]),
        }

    codes = {
        name: (answer.status_code, error_code(answer) if answer.is_error else None)
        for name, answer in answers.items()
    }
    assert codes == {
        "list twice": (400, "TOO_MANY_RECIPIENTS"),
        "two inline": (400, "TOO_MANY_RECIPIENTS"),
        "two in a file": (400, "TOO_MANY_RECIPIENTS"),
        "one in a file": (200, None),
    }
    assert "the 4 contacts of the lists named" in answers["list twice"].text
    assert "2 recipients and the 2 contacts" in answers["two inline"].text


async def test_a_batch_sends_to_its_lists_contacts_with_their_fields_as_tags(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    run = secrets.token_hex(6)
    inline, listed, opted_out, again = unique_numbers(4)
    first = await new_list(api, account)
    second = await new_list(api, account)
    await add(
        api,
        account,
        first,
        [
            {"phone_number": listed, "NAME": "Lou"},
            {"phone_number": opted_out, "NAME": "Otto"},
            {"phone_number": inline, "NAME": "Dup"},
        ],
    )
    await add(api, account, second, [{"phone_number": again}, {"phone_number": listed}])
    await api.post("/v1/opt-outs", headers=account.headers, json={"number": opted_out})

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": [{"phone_number": inline, "NAME": "Ina"}],
            "lists": [{"id": first}, {"id": second, "agent_message": "second {{NAME}} " + run}],
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "Hi {{NAME}} " + run,
                "request_data": {"NAME": "friend"},
            },
        },
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["data"]["batch_id"]
    batch = await wait_for_status(api, account, batch_id, *FINAL)
    assert batch["status"] == "completed_partial"
    received = await emulator_messages(emulator_url, body_contains=run)
    assert sorted((m["to"], m["body"]) for m in received) == sorted(
        [(inline, f"Hi Ina {run}"), (listed, f"Hi Lou {run}"), (again, f"second friend {run}")]
    )
    ledger = (await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)).json()[
        "data"
    ]["messages"]
    # The inline row first, then each list's contacts in number order; duplicates and
    # opt-outs are decided over the whole, as for one file.
    outcome = {inline: "duplicate", opted_out: "opted_out"}
    expected = [(inline, "sent", None)]
    expected += [
        (n, *(("skipped", outcome[n]) if n in outcome else ("sent", None)))
        for n in sorted([listed, opted_out, inline])
    ]
    expected += [
        (n, *(("skipped", "duplicate") if n == listed else ("sent", None)))
        for n in sorted([again, listed])
    ]
    assert [(m["to_number"], m["status"], m["error_code"]) for m in ledger] == expected


async def test_a_list_of_a_hundred_thousand_contacts_expands_in_validation(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    numbers = [f"+1201{7_000_000 + index:07d}" for index in range(100_000)]
    list_id = await new_list(api, account)
    uploaded = await upload(
        api,
        account,
        f"/v1/lists/{list_id}/contacts/upload",
        csv_bytes(["phone_number", "N"], [[n, str(i)] for i, n in enumerate(numbers)]),
        "big.csv",
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["data"]["contacts"] == 100_000

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "lists": [{"id": list_id}],
            "global": {"agent_number": account.agent_number, "agent_message": "n {{N}}"},
            "number_check": "possible",
            "schedule_at": "2099-01-01T00:00:00Z",
        },
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["data"]["batch_id"]
    # The API stored no contact: the batch's file is empty, its request names the list.
    stored = await batches.get_batch(pool, account.account_id, uuid.UUID(batch_id))
    assert stored is not None and stored["request"]["lists"] == [{"id": list_id}]
    assert (await files.file_content(pool, account.account_id, uuid.UUID(batch_id)))[1] == b"[]"
    batch = await wait_for_status(api, account, batch_id, "waiting_for_scheduled_messages")
    assert (batch["rows_total"], batch["recipients"], batch["rejected"]) == (100_000, 100_000, 0)
    last = (
        await api.get(
            f"/v1/sms/batch/{batch_id}/messages",
            headers=account.headers,
            params={"cursor": pagination.encode((99_998,), of=f"messages of {batch_id}")},
        )
    ).json()["data"]["messages"]
    assert [(m["to_number"], m["body"]) for m in last] == [(numbers[-1], "n 99999")]
    cancelled = await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)
    assert cancelled.status_code == 200, cancelled.text
    await wait_for_status(api, account, batch_id, "cancelled")


async def test_an_account_sees_and_uses_only_its_own_lists(
    api: httpx.AsyncClient, account: Account, other_account: Account
) -> None:
    theirs = await new_list(api, other_account)
    await add(api, other_account, theirs, [{"phone_number": unique_numbers(1)[0]}])
    path = f"/v1/lists/{theirs}"

    answers = [
        await api.get(path, headers=account.headers),
        await api.get(f"{path}/contacts", headers=account.headers),
        await api.post(
            f"{path}/contacts",
            headers=account.headers,
            json={"contacts": [{"phone_number": "+12015550123"}]},
        ),
        await api.delete(path, headers=account.headers),
        await api.post(
            "/v1/sms/batch",
            headers=account.headers,
            json={
                "lists": [{"id": theirs}],
                "global": {"agent_number": account.agent_number, "agent_message": "hi"},
            },
        ),
    ]
    mobivate = await api.post(
        "/send/batch",
        headers={"Authorization": f"Bearer {account.key}"},
        json={
            "recipients": [{"recipient": theirs, "meta": {"type": "mailinglist"}}],
            "text": "hi",
            "originator": account.agent_number,
        },
    )

    assert [(r.status_code, error_code(r)) for r in answers] == [(404, "LIST_NOT_FOUND")] * 5
    assert (await api.get("/v1/lists", headers=account.headers)).json()["data"]["lists"] == []
    assert mobivate.status_code == 404, mobivate.text
    assert mobivate.json()["error"]["name"] == "NotFoundError"
    assert mobivate.json()["error"]["code"] == "LIST_NOT_FOUND"
    assert (await contacts_of(api, other_account, theirs)) != {}


async def test_a_file_batch_takes_lists_too_each_from_its_own_sender(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    run = secrets.token_hex(6)
    in_file, listed = unique_numbers(2)
    sender = f"List{secrets.token_hex(3)}"
    registered = await api.post("/v1/sms/numbers", headers=account.headers, json={"number": sender})
    assert registered.status_code == 201, registered.text
    list_id = await new_list(api, account)
    await add(api, account, list_id, [{"phone_number": listed, "CITY": "Oslo"}])
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number", "CITY"], [[in_file, "Lima"]])
    )

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "file_id": file_id,
            "lists": [{"id": list_id, "agent_number": sender}],
            "global": {"agent_number": account.agent_number, "agent_message": "{{CITY}} " + run},
        },
    )
    unowned = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "lists": [{"id": list_id, "agent_number": "Nobody1"}],
            "global": {"agent_number": account.agent_number, "agent_message": "x"},
        },
    )

    assert response.status_code == 200, response.text
    batch = await wait_for_status(api, account, file_id, *FINAL)
    assert batch["status"] == "completed"
    received = await emulator_messages(emulator_url, body_contains=run)
    assert sorted((m["to"], m["from"], m["body"]) for m in received) == sorted(
        [(in_file, account.agent_number, f"Lima {run}"), (listed, sender, f"Oslo {run}")]
    )
    assert unowned.status_code == 404 and error_code(unowned) == "AGENT_NUMBER_NOT_FOUND"


async def test_a_list_sent_from_the_batchs_own_sender_has_rows_without_a_sender_of_their_own(
    api: httpx.AsyncClient, account: Account
) -> None:
    # Its rows showed `from_number`, which API.md keeps for a sender other than the batch's.
    list_id = await new_list(api, account)
    await add(api, account, list_id, [{"phone_number": unique_numbers(1)[0]}])

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "lists": [{"id": list_id, "agent_number": account.agent_number}],
            "global": {"agent_number": account.agent_number, "agent_message": "hi"},
        },
    )
    assert response.status_code == 200, response.text
    batch_id = response.json()["data"]["batch_id"]
    await wait_for_status(api, account, batch_id, *FINAL)
    listed = await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)

    [message] = listed.json()["data"]["messages"]
    assert message["from_number"] is None


async def test_a_variable_only_a_lists_contacts_give_is_no_reason_to_refuse_the_request(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    # The inline number has no NAME, the list's contact has: the request is taken, the list's
    # contact gets its text and the inline row alone is rejected, as the dialect documents.
    run = secrets.token_hex(6)
    inline, listed = unique_numbers(2)
    list_id = await new_list(api, account)
    await add(api, account, list_id, [{"phone_number": listed, "NAME": "Ada"}])

    response = await api.post(
        "/send/batch",
        headers={"Authorization": f"Bearer {account.key}"},
        json={
            "recipients": [
                {"recipient": inline.removeprefix("+")},
                {"recipient": list_id, "meta": {"type": "mailinglist"}},
            ],
            "text": "Hi {{NAME}} " + run,
            "originator": account.agent_number,
        },
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["record"]["id"]
    batch = await wait_for_status(api, account, batch_id, *FINAL)
    assert (batch["rows_total"], batch["recipients"], batch["rejected"]) == (2, 1, 1)
    received = await emulator_messages(emulator_url, body_contains=run)
    assert [(m["to"], m["body"]) for m in received] == [(listed, f"Hi Ada {run}")]
    errors = await api.get(f"/v1/sms/batch/{batch_id}/errors", headers=account.headers)
    assert [e["code"] for e in errors.json()["data"]["rejected_rows"]] == ["missing_variable"]
