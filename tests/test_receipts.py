"""Delivery receipts: every message carries the StatusCallback URL; the status endpoint checks
the signature and moves messages forward only, even when a receipt comes before its send is
recorded. Receipts are posted here as the carrier signs them (the in-process API cannot be
reached by the emulator; tests/test_local_stack.py sees the emulator's own)."""

import asyncio
import secrets

import asyncpg
import httpx
from twilio.request_validator import RequestValidator

from settings import Settings
from store import conversation_messages, conversations, receipts
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows
from tests.support.sending import conversation, conversation_when, received_by, send
from tests.support.stack import AUTH_TOKEN, Account, Configure, WebhookReceiver

STATUS_PATH = "/v1/webhooks/twilio/status"


def receipt(sid: str, status: str, error_code: str | None = None) -> dict[str, str]:
    """The form of a Twilio status callback."""
    form = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
    }
    if error_code:
        form["ErrorCode"] = error_code
    return form


async def post_receipt(
    api: httpx.AsyncClient,
    settings: Settings,
    form: dict[str, str],
    *,
    token: str = AUTH_TOKEN,
    url: str | None = None,
) -> httpx.Response:
    """Post `form` signed as Twilio signs it: over Herald's public URL of the endpoint."""
    signature = RequestValidator(token).compute_signature(url or settings.status_callback_url, form)
    return await api.post(STATUS_PATH, data=form, headers={"X-Twilio-Signature": signature})


async def sent_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, count: int
) -> tuple[str, list[dict]]:
    """A finished batch of `count` sent messages, and its ledger rows in seq order."""
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(count))
    await webhooks.wait_for(marker, *FINAL)
    rows = await ledger_rows(api, account, file_id)
    assert {r["status"] for r in rows} == {"sent"}
    return file_id, rows


async def test_every_message_asks_the_carrier_for_receipts_at_the_public_url(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    settings: Settings,
) -> None:
    _, marker = await start_marked_batch(api, account, webhooks, unique_numbers(5))
    await webhooks.wait_for(marker, *FINAL)

    received = await emulator_messages(emulator_url, body_contains=marker)

    assert len(received) == 5
    assert {m["status_callback"] for m in received} == {
        f"http://127.0.0.1:{settings.api_port}{STATUS_PATH}"
    }


async def test_receipts_move_messages_forward_and_never_back(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 4)
    delivered, undelivered, failed, still_sent = (r["carrier_sid"] for r in rows)

    replies = [
        await post_receipt(api, settings, receipt(delivered, "delivered")),
        await post_receipt(api, settings, receipt(delivered, "sent")),
        await post_receipt(api, settings, receipt(delivered, "undelivered", "30003")),
        await post_receipt(api, settings, receipt(undelivered, "undelivered", "30003")),
        await post_receipt(api, settings, receipt(undelivered, "undelivered", "30003")),
        await post_receipt(api, settings, receipt(undelivered, "delivered")),
        await post_receipt(api, settings, receipt(failed, "queued")),
        await post_receipt(api, settings, receipt(failed, "failed", "30008")),
        await post_receipt(api, settings, receipt(still_sent, "sent")),
        await post_receipt(api, settings, receipt("SM" + secrets.token_hex(16), "delivered")),
    ]

    assert [r.status_code for r in replies] == [204] * len(replies)
    assert all(r.content == b"" for r in replies)
    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"]) for r in after] == [
        ("delivered", None),
        ("undelivered", "30003"),
        ("failed", "30008"),
        ("sent", None),
    ]
    assert [r["carrier_sid"] for r in after] == [r["carrier_sid"] for r in rows]
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    assert batch["counts"] == {
        "delivered": 1,
        "undelivered": 1,
        "failed": 1,
        "sent": 1,
        "rejected": 0,
    }


async def test_a_receipt_without_a_good_signature_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1)
    form = receipt(rows[0]["carrier_sid"], "delivered")
    signed_for_sent = RequestValidator(AUTH_TOKEN).compute_signature(
        settings.status_callback_url, receipt(rows[0]["carrier_sid"], "sent")
    )

    replies = [
        await api.post(STATUS_PATH, data=form),
        await post_receipt(api, settings, form, token="another-token"),
        await post_receipt(api, settings, form, url=f"http://herald.test{STATUS_PATH}"),
        await api.post(STATUS_PATH, data=form, headers={"X-Twilio-Signature": signed_for_sent}),
    ]

    assert [r.status_code for r in replies] == [403] * 4
    assert {r.json()["errors"][0]["error"] for r in replies} == {"INVALID_SIGNATURE"}
    assert [r["status"] for r in await ledger_rows(api, account, file_id)] == ["sent"]
    missing = await post_receipt(api, settings, {"MessageStatus": "delivered"})
    assert missing.status_code == 400


async def test_a_receipt_that_comes_before_its_send_is_recorded_is_applied_then(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    settings: Settings,
    carrier: Configure,
) -> None:
    # Answers take 0-2 s; a slice records its outcomes only when its last answer is in.
    await carrier(latency_jitter_ms=2000)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(20))
    async with asyncio.timeout(10):
        while not (accepted := await emulator_messages(emulator_url, body_contains=marker)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    first = accepted[0]

    reply = await post_receipt(api, settings, receipt(first["sid"], "delivered"))
    ledger_then = {r["to_number"]: r for r in await ledger_rows(api, account, file_id)}
    await webhooks.wait_for(marker, *FINAL)
    ledger_after = {r["to_number"]: r for r in await ledger_rows(api, account, file_id)}

    assert reply.status_code == 204
    assert (ledger_then[first["to"]]["status"], ledger_then[first["to"]]["carrier_sid"]) == (
        "sending",
        None,
    )
    row = ledger_after[first["to"]]
    assert (row["status"], row["carrier_sid"]) == ("delivered", first["sid"])
    others = [r["status"] for n, r in ledger_after.items() if n != first["to"]]
    assert others == ["sent"] * 19


async def test_a_replayed_receipt_changes_nothing_and_only_the_first_final_one_counts(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1)
    sid = rows[0]["carrier_sid"]
    first = receipt(sid, "undelivered", "30003")

    replies = [
        await post_receipt(api, settings, first),
        await post_receipt(api, settings, receipt(sid, "delivered")),
        await post_receipt(api, settings, first),
        await post_receipt(api, settings, receipt(sid, "undelivered", "30005")),
    ]

    assert [r.status_code for r in replies] == [204] * 4
    [row] = await ledger_rows(api, account, file_id)
    assert (row["status"], row["error_code"], row["carrier_sid"]) == ("undelivered", "30003", sid)


async def test_a_single_send_asks_for_receipts_and_its_status_follows_them(
    api: httpx.AsyncClient, account: Account, emulator_url: str, settings: Settings
) -> None:
    delivered_to, undelivered_to = unique_numbers(2)
    sends = {}
    for user in (delivered_to, undelivered_to):
        response = await send(api, account, user, agent_message="receipt please")
        assert response.status_code == 200, response.text
        sends[user] = response.json()["data"]
    carried = {user: (await received_by(emulator_url, user, 1))[0] for user in sends}
    assert {m["status_callback"] for m in carried.values()} == {
        f"http://127.0.0.1:{settings.api_port}{STATUS_PATH}"
    }
    for user in sends:
        await conversation_when(
            api,
            account,
            sends[user]["conversation_id"],
            lambda c: c["messages"][0]["status"] == "sent",
        )

    for form in (
        receipt(carried[delivered_to]["sid"], "delivered"),
        receipt(carried[undelivered_to]["sid"], "undelivered", "30003"),
    ):
        assert (await post_receipt(api, settings, form)).status_code == 204

    outcomes = {}
    for user, data in sends.items():
        [message] = (await conversation(api, account, data["conversation_id"]))["messages"]
        assert message["message_id"] == data["message_id"]
        outcomes[user] = (message["status"], message["error_code"])
    assert outcomes == {delivered_to: ("delivered", None), undelivered_to: ("undelivered", "30003")}


async def test_a_conversation_receipt_before_its_send_is_recorded_is_applied_then(
    pool: asyncpg.Pool, account: Account
) -> None:
    # A single send's outcome is recorded as soon as the carrier answers, so the race is
    # set up here in the store, in the order it would happen.
    user = unique_numbers(1)[0]
    sid = "SM" + secrets.token_hex(16)
    async with pool.acquire() as conn:
        opened = await conversations.open_conversation(
            conn,
            account_id=account.account_id,
            agent_number=account.agent_number,
            user_number=user,
            workflow_id=f"receipt-race-{secrets.token_hex(4)}",
            fields=conversations.ConversationFields(),
        )
        message_id = await conversation_messages.queue_agent_message(
            conn, conversation=opened, kind="message", body="early receipt"
        )
    assert await conversation_messages.claim_message(pool, message_id, first_attempt=True)

    await receipts.record_receipt(pool, sid, "delivered", None)
    then = await conversation_messages.message_status(pool, message_id)
    await conversation_messages.record_outcome(pool, message_id, status="sent", carrier_sid=sid)

    assert then == ("sending", None)
    assert await conversation_messages.message_status(pool, message_id) == ("delivered", None)
