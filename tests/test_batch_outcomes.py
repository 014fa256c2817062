"""How a batch ends when rows are bad, numbers fail at the carrier, or the file is unusable;
and the reads that show it: counts, the ledger by status and page, the batch list."""

import asyncio
import json
import secrets

import httpx
from temporalio.client import Client

from settings import Settings
from tests.support.batches import FINAL, phases, run_batch, start, wait_for_status
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.delivery import own_worker
from tests.support.pages import every_page
from tests.support.stack import Account, WebhookReceiver, api_client


async def test_rejected_skipped_and_carrier_failed_rows_end_completed_partial(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    good = unique_numbers(6)
    rows = [
        *[[n] for n in good],
        [good[0]],  # duplicate: skipped
        ["not a number"],  # rejected: invalid_number
        [""],  # rejected: blank_number
        ["+15005550001"],  # carrier 21211: failed
        ["+15005550009"],  # carrier 21614: failed
    ]

    file_id, events = await run_batch(
        api,
        account,
        webhooks,
        csv_bytes(["phone_number", "x"], [[*r, "x"] for r in rows]),
        f"partial {marker}",
    )

    final = events[-1]
    assert final["status"] == "completed_partial"
    assert (final["messages_total"], final["messages_successful"]) == (11, 6)
    assert (final["messages_failed"], final["messages_skipped"]) == (2, 3)
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == 6
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    assert batch["counts"] == {"sent": 6, "skipped": 1, "failed": 2, "rejected": 2}
    failed = (
        await api.get(
            f"/v1/sms/batch/{file_id}/messages",
            headers=account.headers,
            params={"status": "failed"},
        )
    ).json()["data"]["messages"]
    assert {(m["to_number"], m["error_code"]) for m in failed} == {
        ("+15005550001", "21211"),
        ("+15005550009", "21614"),
    }
    assert all(m["carrier_sid"] is None and m["attempts"] == 1 for m in failed)
    skipped = (
        await api.get(
            f"/v1/sms/batch/{file_id}/messages",
            headers=account.headers,
            params={"status": "skipped"},
        )
    ).json()["data"]["messages"]
    assert [(m["to_number"], m["error_code"]) for m in skipped] == [(good[0], "duplicate")]


async def test_a_file_without_phone_number_fails_at_validating(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    """A large JSON file's keys are not read at request time: the batch finds the column
    missing (a CSV file's header, or a small file, is refused before the 200)."""
    rows = [{"phone": f"+1201555{i:04d}"} for i in range(3000)]
    file_id, events = await run_batch(api, account, webhooks, json.dumps(rows).encode(), "never")

    assert phases(events) == ["validating", "failed"]
    assert events[-1]["code"] == "source_invalid"
    assert "phone_number" in events[-1]["reason"]
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    assert (batch["status"], batch["code"]) == ("failed", "source_invalid")
    assert batch["finished_at"] is not None


async def test_a_batch_whose_every_send_fails_ends_failed(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    _, events = await run_batch(
        api,
        account,
        webhooks,
        csv_bytes(["phone_number"], [["+15005550001"], ["+15005550004"]]),
        "refused",
    )

    final = events[-1]
    assert (final["status"], final["code"]) == ("failed", "all_sends_failed")
    assert (final["messages_failed"], final["messages_successful"]) == (2, 0)


async def test_a_failing_webhook_receiver_does_not_hold_the_batch_back(
    temporal: Client, settings: Settings, account: Account, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    numbers = unique_numbers(3)
    # One retry of each event (a durable timer each), not the session's three.
    async with (
        own_worker(temporal, settings, webhook_retry_schedule_seconds=[0.1]) as own,
        api_client(own) as api,
    ):
        file_id = await attach(
            api, account.headers, csv_bytes(["phone_number"], [[n] for n in numbers])
        )
        response = await start(
            api,
            account,
            file_id,
            status_webhook="http://127.0.0.1:9/refused",
            **{"global": {"agent_number": account.agent_number, "agent_message": marker}},
        )
        assert response.status_code == 200, response.text

        batch = await wait_for_status(api, account, file_id, *FINAL)
        deliveries = await wait_for_deliveries(api, account, file_id)

    assert batch["status"] == "completed"
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == 3
    assert all(d["status_code"] is None and d["error"] for d in deliveries)
    assert all(d["url"] == "http://127.0.0.1:9/refused" for d in deliveries)


async def wait_for_deliveries(api: httpx.AsyncClient, account: Account, file_id: str) -> list:
    """The delivery attempts once the final event's attempt is recorded too."""
    async with asyncio.timeout(60):
        while True:
            logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
            attempts = (
                await api.get(f"/v1/sms/batch/{file_id}/deliveries", headers=account.headers)
            ).json()["data"]["deliveries"]
            # Events are posted in order (a progress repeat is not posted at all): the final
            # event's attempt comes last.
            final = max(e["seq"] for e in logs["data"]["events"] if e["status"] in FINAL)
            if final in {d["event_seq"] for d in attempts}:
                return attempts
            await asyncio.sleep(0.2)


async def test_ledger_pages_and_batch_list(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    numbers = unique_numbers(25)
    first, _ = await run_batch(
        api, account, webhooks, csv_bytes(["phone_number"], [[n] for n in numbers]), "page"
    )
    second, _ = await run_batch(
        api, account, webhooks, csv_bytes(["phone_number"], [[numbers[0]]]), "second"
    )

    pages = await every_page(api, account, f"/v1/sms/batch/{first}/messages", "messages", limit=10)
    listed = await every_page(api, account, "/v1/sms/batches", "batches", limit=1)

    assert [len(page) for page in pages] == [10, 10, 5]
    assert [m["to_number"] for page in pages for m in page] == numbers
    assert [[b["batch_id"] for b in page] for page in listed] == [[second], [first]]
    bad = await api.get(
        f"/v1/sms/batch/{first}/messages", headers=account.headers, params={"status": "nope"}
    )
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["error"] == "INVALID_REQUEST"


async def test_sender_numbers_are_added_listed_and_removed(
    api: httpx.AsyncClient, account: Account
) -> None:
    added = await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": "12015550199"}
    )
    invalid = await api.post("/v1/sms/numbers", headers=account.headers, json={"number": "abc!"})
    listed = (await api.get("/v1/sms/numbers", headers=account.headers)).json()["data"]["numbers"]
    removed = await api.delete("/v1/sms/numbers/+12015550199", headers=account.headers)
    again = await api.delete("/v1/sms/numbers/+12015550199", headers=account.headers)
    after = (await api.get("/v1/sms/numbers", headers=account.headers)).json()["data"]["numbers"]

    assert added.status_code == 201
    assert added.json()["data"]["number"] == "+12015550199"
    assert invalid.status_code == 400
    assert invalid.json()["errors"][0]["error"] == "INVALID_PHONE_NUMBER"
    assert [n["number"] for n in listed] == [account.agent_number, "+12015550199"]
    assert removed.status_code == 200
    assert again.status_code == 404
    assert again.json()["errors"][0]["error"] == "NUMBER_NOT_FOUND"
    assert [n["number"] for n in after] == [account.agent_number]
