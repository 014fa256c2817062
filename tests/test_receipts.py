"""Delivery receipts: every message carries the StatusCallback URL; the status endpoint checks
the signature and moves messages forward only, even when a receipt comes before its send is
recorded. Receipts are posted here as the carrier signs them (the in-process API cannot be
reached by the emulator; tests/test_local_stack.py sees the emulator's own)."""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from twilio.request_validator import RequestValidator

from api.services.receipts import ReceiptIntake, apply_receipts
from settings import Settings
from store import conversation_messages, messages, receipts
from store.db import create_pool
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.databases import blocked_behind
from tests.support.delivery import (
    answer_when_its_insert_fails,
    appliers_idle,
    ledger_rows,
    receipt,
    receipts_applied,
    rows_on_the_wire,
    scheduled_rows,
    sent_batch,
)
from tests.support.sending import (
    conversation,
    conversation_when,
    eventually,
    queued_agent_message,
    received_by,
    send,
)
from tests.support.stack import (
    AUTH_TOKEN,
    Account,
    Configure,
    WebhookReceiver,
    api_client,
    error_code,
)
from workflows.statuses import LedgerStatus

STATUS_PATH = "/v1/webhooks/twilio/status"
# How many receipts were ever appended to the queue (its identity's last value).
QUEUED_SO_FAR = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM receipt_queue_id_seq"


@pytest.mark.parametrize(("seq", "attempt"), [(0, 1), (7, 2), (10**17, 999_999_999)])
def test_a_slices_keyed_urls_are_keyed_url_and_name_their_send(seq: int, attempt: int) -> None:
    url = "https://herald.test/v1/webhooks/twilio/status"
    key = receipts.MessageKey(uuid.uuid4(), seq, attempt)

    keyed = receipts.KeyedUrls(url, key.batch_id).of(seq, attempt)

    assert keyed == receipts.keyed_url(url, key) == f"{url}?m={key.batch_id}.{seq}.{attempt}"
    base, _, query = keyed.partition("?")
    assert (base, receipts.message_key(query)) == (url, key)


async def post_receipt(
    api: httpx.AsyncClient,
    settings: Settings,
    form: dict[str, str],
    *,
    token: str = AUTH_TOKEN,
    url: str | None = None,
    query: str = "",
) -> httpx.Response:
    """Post `form` signed as Twilio signs it: over Herald's public URL of the endpoint (with
    `query`, if given)."""
    called = settings.status_callback_url + (f"?{query}" if query else "")
    signature = RequestValidator(token).compute_signature(url or called, form)
    path = STATUS_PATH + (f"?{query}" if query else "")
    return await api.post(path, data=form, headers={"X-Twilio-Signature": signature})


def key_of(file_id: str, seq: int, attempt: int = 1) -> str:
    """The query of the StatusCallback URL of a batch row's send (receipts.keyed_url)."""
    key = receipts.MessageKey(uuid.UUID(file_id), seq, attempt)
    return receipts.keyed_url("", key).removeprefix("?")


async def test_every_message_asks_the_carrier_for_receipts_at_the_public_url_with_its_key(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(5))
    await webhooks.wait_for(marker, *FINAL)

    received = await emulator_messages(emulator_url, body_contains=marker)
    seqs = dict(
        await pool.fetch(
            "SELECT to_number, seq FROM messages WHERE batch_id = $1", uuid.UUID(file_id)
        )
    )

    assert len(received) == 5
    # Each message's own row: the ledger key of the number it went to.
    assert {m["status_callback"] for m in received} == {
        f"http://127.0.0.1:{settings.api_port}{STATUS_PATH}?m={file_id}.{seqs[m['to']]}.1"
        for m in received
    }
    assert sorted(seqs.values()) == list(range(5))


async def test_receipts_move_messages_forward_and_never_back(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
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

    await receipts_applied(pool, [r["carrier_sid"] for r in rows])

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
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
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
        # Not the carrier's encoding: past the receipt lane, the route checks it the same.
        await api.post(
            STATUS_PATH,
            data=form,
            files={"f": ("f.txt", b"x")},
            headers={"X-Twilio-Signature": signed_for_sent},
        ),
    ]

    assert [r.status_code for r in replies] == [403] * 5
    assert not await pool.fetchval(
        "SELECT count(*) FROM receipt_queue WHERE carrier_sid = $1", rows[0]["carrier_sid"]
    )
    assert {r.json()["errors"][0]["error"] for r in replies} == {"INVALID_SIGNATURE"}
    assert [r["status"] for r in await ledger_rows(api, account, file_id)] == ["sent"]
    missing = await post_receipt(api, settings, {"MessageStatus": "delivered"})
    assert missing.status_code == 400


async def test_a_signed_receipt_whose_sid_is_no_message_sid_is_refused(
    api: httpx.AsyncClient, settings: Settings, pool: asyncpg.Pool
) -> None:
    # A sid too long for the receipt queue's index failed the statement it shared with the
    # receipts that came with it: each answered 503.
    sids = ["SM" + secrets.token_hex(2000), "SM" + secrets.token_hex(15), "XX" + "0" * 32]
    replies = [await post_receipt(api, settings, receipt(sid, "delivered")) for sid in sids]

    assert [(r.status_code, error_code(r)) for r in replies] == [(400, "INVALID_REQUEST")] * 3
    assert not await pool.fetchval(
        "SELECT count(*) FROM receipt_queue WHERE carrier_sid = ANY($1)", sids
    )


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
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
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

    await receipts_applied(pool, [sid])

    assert [r.status_code for r in replies] == [204] * 4
    [row] = await ledger_rows(api, account, file_id)
    assert (row["status"], row["error_code"], row["carrier_sid"]) == ("undelivered", "30003", sid)


async def test_a_single_send_asks_for_receipts_and_its_status_follows_them(
    api: httpx.AsyncClient,
    account: Account,
    emulator_url: str,
    settings: Settings,
    pool: asyncpg.Pool,
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
    await receipts_applied(pool, [m["sid"] for m in carried.values()])

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
    message_id = await queued_agent_message(pool, account, user, "early receipt")
    assert await conversation_messages.claim_message(pool, message_id)

    await receipts.queue_receipts(pool, [receipts.Receipt(sid, "delivered", None)])
    then = await conversation_messages.message_status(pool, message_id)
    await conversation_messages.record_outcome(pool, message_id, status="sent", carrier_sid=sid)

    assert then[:2] == ("sending", None)
    assert (await conversation_messages.message_status(pool, message_id))[:2] == (
        "delivered",
        None,
    )


async def test_a_burst_of_receipts_through_two_api_processes_is_applied_whole(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1000)
    sids = [r["carrier_sid"] for r in rows]
    in_flight = asyncio.Semaphore(300)

    async def post_all(clients: list[httpx.AsyncClient], forms: list[dict[str, str]]) -> set[int]:
        async def post(client: httpx.AsyncClient, form: dict[str, str]) -> int:
            async with in_flight:
                return (await post_receipt(client, settings, form)).status_code

        return set(
            await asyncio.gather(
                *(post(clients[i % len(clients)], form) for i, form in enumerate(forms))
            )
        )

    async with api_client(settings) as second:
        # As the carrier sends them: `sent`, then the final one, twice over for some.
        burst = [receipt(sid, s) for sid in sids for s in ("sent", "delivered")]
        burst += [receipt(sid, "delivered") for sid in sids[::3]]
        queued_before = await pool.fetchval(QUEUED_SO_FAR)
        burst_replies = await post_all([api, second], burst)
        # Each answer came once the statement taking its receipt (shared by concurrent
        # callbacks) had committed; every message held its sid, so that statement applied
        # it: the ledger shows it with no wait for an applier.
        applied = await ledger_rows(api, account, file_id)
        late = [receipt(sid, "undelivered", "30003") for sid in sids[::2]]
        late += [receipt(sid, "sent") for sid in sids[1::2]]
        late_replies = await post_all([second, api], late)
        # Nothing went through the queue: a repeated or later receipt of a final message
        # changes nothing, and is not kept either.
        queued = await pool.fetchval(QUEUED_SO_FAR) - queued_before

    assert len(burst) + len(late) > 3000
    assert queued == 0
    assert burst_replies == late_replies == {204}
    assert [(r["status"], r["error_code"]) for r in applied] == [("delivered", None)] * 1000
    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"], r["carrier_sid"]) for r in after] == [
        ("delivered", None, sid) for sid in sids
    ]
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    assert batch["counts"]["delivered"] == 1000


async def test_two_appliers_on_one_queue_take_each_receipt_once(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 300)
    sids = [r["carrier_sid"] for r in rows]
    finals = [receipts.Receipt(sid, "failed", "30008") for sid in sids]
    await receipts.queue_receipts(pool, finals + finals)
    other_process = await create_pool(settings.dsn)
    taken: list[list[int]] = [[], []]

    async def drain(applier: asyncpg.Pool, into: list[int]) -> None:
        while claimed := await receipts.apply_queued(applier, 25):
            into += claimed

    try:
        await asyncio.gather(drain(pool, taken[0]), drain(other_process, taken[1]))
    finally:
        await other_process.close()

    # The API's own applier may take some too; none is taken twice.
    assert not set(taken[0]) & set(taken[1])
    assert len(set(taken[0])) == len(taken[0]) and len(set(taken[1])) == len(taken[1])
    # What the API's applier holds (skipped by the two drains above) is in once it commits.
    await receipts_applied(pool, sids)
    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"]) for r in after] == [("failed", "30008")] * 300


async def test_an_applier_cancelled_as_a_receipt_arrives_stops(pool: asyncpg.Pool) -> None:
    """The API's shutdown cancels its applier; a cancel in the same moment as the arrival of a
    receipt was lost on Python 3.11 (asyncio.wait_for), and the shutdown waited for ever."""
    arrived = asyncio.Event()
    applier = asyncio.create_task(apply_receipts(pool, arrived))

    async def idle() -> bool:  # it waits for the next receipt
        return bool(arrived._waiters)

    await eventually(idle, bool)
    arrived.set()
    applier.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(applier, 5)


async def test_a_receipt_whose_insert_fails_is_answered_503_and_taken_when_posted_again(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1)
    form = receipt(rows[0]["carrier_sid"], "delivered")
    failed = await answer_when_its_insert_fails(pool, lambda: post_receipt(api, settings, form))
    again = await post_receipt(api, settings, form)
    await receipts_applied(pool, [rows[0]["carrier_sid"]])

    # Never a 2xx for a receipt that was not stored: the carrier posts it again.
    assert failed.status_code == 503
    assert error_code(failed) == "RECEIPT_NOT_QUEUED"
    assert again.status_code == 204
    after = await ledger_rows(api, account, file_id)
    assert [r["status"] for r in after] == ["delivered"]


@pytest.mark.parametrize("noticed", [True, False], ids=["noticed", "not-yet-noticed"])
async def test_receipts_after_postgresql_ended_the_intakes_idle_connection_are_taken(
    noticed: bool,
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    """The intake holds one connection between statements. When PostgreSQL ends it while it
    is idle (a restart, an idle timeout), the next receipts are taken on a new connection,
    not answered 503, whether asyncpg has noticed the loss before the statement (`noticed`:
    the next receipt comes once the backend is gone) or may not have (it comes at once)."""
    file_id, rows = await sent_batch(api, account, webhooks, 2)
    first, second = (r["carrier_sid"] for r in rows)
    async with await create_pool(settings.dsn, min_size=1, max_size=1) as own:
        held = await own.fetchval("SELECT pg_backend_pid()")
        intake = ReceiptIntake(own)
        try:
            await intake.put(receipts.Receipt(first, "delivered", None))
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", held)
            if noticed:
                await eventually(
                    lambda: pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", held
                    ),
                    lambda alive: alive == 0,
                )
            await intake.put(receipts.Receipt(second, "undelivered", "30003"))
        finally:
            await intake.close()

    after = await ledger_rows(api, account, file_id)
    assert [r["status"] for r in after] == ["delivered", "undelivered"]


async def test_a_kept_receipts_apply_that_deadlocks_with_another_transaction_runs_again(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1)
    sid = rows[0]["carrier_sid"]
    # The receipt came before the send was recorded: kept, waiting for its row.
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status, error_code)"
        " VALUES ($1, 'failed', '30008')",
        sid,
    )
    async with pool.acquire() as other:
        transaction = other.transaction()
        await transaction.start()
        # This transaction's own deadlock check comes after the apply's: the apply is the one
        # PostgreSQL ends, as it may end the applier's or the worker's statement at full rate.
        await other.execute("SET LOCAL deadlock_timeout = '10s'")
        await other.execute("UPDATE messages SET updated_at = now() WHERE carrier_sid = $1", sid)
        applying = asyncio.create_task(
            messages.apply_kept_receipts(pool, uuid.UUID(file_id), [sid])
        )
        await blocked_behind(pool, other)
        # The apply waits for this transaction's row; this one now waits for the apply's
        # lock on the queue: a deadlock.
        await other.execute("LOCK TABLE receipt_queue IN ACCESS EXCLUSIVE MODE")
        await transaction.commit()
    await applying

    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"]) for r in after] == [("failed", "30008")]


async def test_a_receipt_for_a_recorded_send_is_applied_before_its_answer_and_never_queued(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 3)
    queued_before = await pool.fetchval(QUEUED_SO_FAR)

    replies = [
        await post_receipt(api, settings, receipt(rows[0]["carrier_sid"], "delivered")),
        await post_receipt(api, settings, receipt(rows[1]["carrier_sid"], "failed", "30008")),
    ]
    # Read at once: no applier ran in between that the test waits for.
    after = await ledger_rows(api, account, file_id)

    assert [r.status_code for r in replies] == [204, 204]
    assert [(r["status"], r["error_code"]) for r in after] == [
        ("delivered", None),
        ("failed", "30008"),
        ("sent", None),
    ]
    assert await pool.fetchval(QUEUED_SO_FAR) == queued_before


async def test_a_receipt_waiting_in_the_queue_stays_the_first_when_another_is_applied(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1)
    sid = rows[0]["carrier_sid"]
    async with pool.acquire() as holder:
        # The first receipt came before the sid was written, and no applier has taken it
        # yet (its row is held: they skip it).
        async with appliers_idle():
            await holder.execute(
                "INSERT INTO receipt_queue (carrier_sid, status, error_code)"
                " VALUES ($1, 'undelivered', '30003')",
                sid,
            )
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT FROM receipt_queue WHERE carrier_sid = $1 FOR UPDATE", sid)
        second = await post_receipt(api, settings, receipt(sid, "delivered"))
        # An applier may claim the second receipt (the first is held), not apply it: kept,
        # it would be the message's first.
        await receipts.apply_queued(pool, 100)
        then = await ledger_rows(api, account, file_id)
        waiting = await pool.fetchval(
            "SELECT count(*) FROM receipt_queue WHERE carrier_sid = $1", sid
        )
        kept = await pool.fetchval(
            "SELECT count(*) FROM carrier_receipts WHERE carrier_sid = $1", sid
        )
        await transaction.commit()
    await receipts_applied(pool, [sid])

    assert second.status_code == 204
    assert (then[0]["status"], waiting, kept) == ("sent", 2, 0)
    [row] = await ledger_rows(api, account, file_id)
    assert (row["status"], row["error_code"]) == ("undelivered", "30003")


async def test_a_kept_receipts_apply_locks_its_rows_in_key_order(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 20)
    sids = [r["carrier_sid"] for r in rows]
    # Kept the other way round from the rows' keys: read in the order they were kept, the
    # last row would be locked first.
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status) SELECT unnest($1::text[]), 'delivered'",
        sids[::-1],
    )
    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT FROM messages WHERE carrier_sid = $1 FOR UPDATE", sids[1])
        applying = asyncio.create_task(
            messages.apply_kept_receipts(pool, uuid.UUID(file_id), sids[::-1])
        )
        await blocked_behind(pool, holder)
        # Waiting for the second row by key, the apply holds the first and none after it:
        # whoever holds a row and wants one before it waits for no one in a cycle.
        free = await pool.fetch(
            "SELECT carrier_sid FROM messages WHERE carrier_sid = ANY($1::text[])"
            " FOR UPDATE SKIP LOCKED",
            [sids[0], *sids[2:]],
        )
        await transaction.commit()
    await applying

    assert {r["carrier_sid"] for r in free} == set(sids[2:])
    after = await ledger_rows(api, account, file_id)
    assert [r["status"] for r in after] == ["delivered"] * 20


@asynccontextmanager
async def row_held(pool: asyncpg.Pool, file_id: str, seq: int) -> AsyncIterator[asyncpg.Connection]:
    """The batch's row `seq` locked by a transaction of another connection (yielded) until
    the block ends, as a statement of the worker holds it while it runs; committed then."""
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute(
            "SELECT FROM messages WHERE batch_id = $1 AND seq = $2 FOR UPDATE",
            uuid.UUID(file_id),
            seq,
        )
        yield holder


async def ledger_writes(pool: asyncpg.Pool, file_id: str) -> list[tuple]:
    """Each row's sid, status and error code, and whether its last write was the one of its
    outcome (the time it was sent is the time it was last moved; None: it was not sent)."""
    rows = await pool.fetch(
        "SELECT carrier_sid, status, error_code, sent_at = updated_at AS one_write"
        " FROM messages WHERE batch_id = $1 ORDER BY seq",
        uuid.UUID(file_id),
    )
    return [tuple(r) for r in rows]


async def test_a_receipt_that_came_before_its_sid_is_taken_in_the_write_of_the_outcome(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    file_id, seqs = await rows_on_the_wire(api, account, webhooks, pool, 4)
    sids = ["SM" + secrets.token_hex(16) for _ in seqs]
    # The first message's receipts wait in the queue: the first of them counts. The second's
    # first one is kept (an applier took it before the sid was written), a later one waits
    # behind it. The fourth message's send failed: a receipt ranks no higher.
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status, error_code)"
        " VALUES ($1, 'failed', '30008')",
        sids[1],
    )
    await receipts.queue_receipts(
        pool,
        [
            receipts.Receipt(sids[0], "undelivered", "30003"),
            receipts.Receipt(sids[0], "delivered", None),
            receipts.Receipt(sids[1], "delivered", None),
            receipts.Receipt(sids[3], "delivered", None),
        ],
    )

    await messages.record_outcomes(
        pool,
        uuid.UUID(file_id),
        [
            messages.Outcome(seqs[0], LedgerStatus.SENT, sids[0]),
            messages.Outcome(seqs[1], LedgerStatus.SENT, sids[1]),
            messages.Outcome(seqs[2], LedgerStatus.SENT, sids[2]),
            messages.Outcome(seqs[3], LedgerStatus.FAILED, sids[3], "30007", "filtered"),
        ],
    )
    after = await ledger_writes(pool, file_id)
    counts = await messages.count_by_status(pool, uuid.UUID(file_id))
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    # Each row moved once: a receipt already there is taken in the write of the outcome.
    assert after == [
        (sids[0], "undelivered", "30003", True),
        (sids[1], "failed", "30008", True),
        (sids[2], "sent", None, True),
        # Refused by the carrier: never sent, no receipt taken.
        (sids[3], "failed", "30007", None),
    ]
    assert counts == {"undelivered": 1, "failed": 2, "sent": 1}


async def test_a_receipt_kept_while_the_outcome_is_written_is_applied_after_it(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    file_id, [seq] = await rows_on_the_wire(api, account, webhooks, pool, 1)
    sid = "SM" + secrets.token_hex(16)
    async with row_held(pool, file_id, seq) as holder:
        recording = asyncio.create_task(
            messages.record_outcomes(
                pool, uuid.UUID(file_id), [messages.Outcome(seq, LedgerStatus.SENT, sid)]
            )
        )
        await blocked_behind(pool, holder)
        # The outcome's statement has begun: it does not see the receipt an applier keeps
        # now (which saw no row with the sid to move, as none had it yet).
        await pool.execute(
            "INSERT INTO carrier_receipts (carrier_sid, status, error_code)"
            " VALUES ($1, 'undelivered', '30003')",
            sid,
        )
    await recording
    after = await ledger_writes(pool, file_id)
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    # Written `sent` first, then moved by the statement after it.
    assert after == [(sid, "undelivered", "30003", False)]


async def kept_then_later(
    api: httpx.AsyncClient, settings: Settings, pool: asyncpg.Pool, sids: list[str], later: str
) -> tuple[int, httpx.Response, int]:
    """How many receipts of `sids` are kept; then the answer to a `delivered` receipt of the
    sid `later`, and how many receipts it queued."""
    kept = await pool.fetchval(
        "SELECT count(*) FROM carrier_receipts WHERE carrier_sid = ANY($1::text[])", sids
    )
    queued_before = await pool.fetchval(QUEUED_SO_FAR)
    answer = await post_receipt(api, settings, receipt(later, "delivered"))
    return kept, answer, await pool.fetchval(QUEUED_SO_FAR) - queued_before


async def test_a_queued_receipt_of_a_message_already_final_is_dropped_not_kept(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, seqs = await rows_on_the_wire(api, account, webhooks, pool, 2)
    sids = ["SM" + secrets.token_hex(16) for _ in seqs]
    async with pool.acquire() as holder:
        # No applier takes the receipts before the sids are written: the appliers skip them.
        async with appliers_idle():
            await receipts.queue_receipts(
                pool,
                [
                    receipts.Receipt(sids[0], "undelivered", "30003"),
                    receipts.Receipt(sids[1], "delivered", None),
                ],
            )
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "SELECT FROM receipt_queue WHERE carrier_sid = ANY($1::text[]) FOR UPDATE", sids
            )
        await messages.record_outcomes(
            pool,
            uuid.UUID(file_id),
            [
                messages.Outcome(seq, LedgerStatus.SENT, sid)
                for seq, sid in zip(seqs, sids, strict=True)
            ],
        )
        await transaction.commit()
    # The API's applier takes them off the queue; their messages took them already.
    await receipts_applied(pool, sids)
    kept, later, queued = await kept_then_later(api, settings, pool, sids, sids[0])
    after = await ledger_writes(pool, file_id)
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert kept == 0
    # The later receipt finds its message final and no receipt kept: nothing to queue.
    assert (later.status_code, queued) == (204, 0)
    assert after == [
        (sids[0], "undelivered", "30003", True),
        (sids[1], "delivered", None, True),
    ]


async def test_a_queued_receipt_that_moves_its_message_is_not_kept(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 2)
    sids = [r["carrier_sid"] for r in rows]
    # Queued while the sids were being written (the intake found no row with them); the
    # messages are `sent` when an applier takes them: it moves them.
    await receipts.queue_receipts(
        pool,
        [
            receipts.Receipt(sids[0], "undelivered", "30003"),
            receipts.Receipt(sids[0], "delivered", None),
            receipts.Receipt(sids[1], "failed", "30008"),
        ],
    )
    await receipts_applied(pool, sids)
    kept, later, queued = await kept_then_later(api, settings, pool, sids, sids[1])
    after = await ledger_rows(api, account, file_id)

    assert kept == 0
    assert (later.status_code, queued) == (204, 0)
    assert [(r["status"], r["error_code"]) for r in after] == [
        ("undelivered", "30003"),
        ("failed", "30008"),
    ]


async def test_a_waves_write_run_again_finds_its_own_marks_and_not_another_attempts(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    """The same write run again, as after a connection closed once it had committed
    (activities/outages.py), returns the marks its first run made, their attempt counted
    once; another attempt's write (another token) marks none of them, nor moves them with
    its outcomes, so that no row is sent by two attempts nor loses the answer of the one
    that sent it."""
    file_id, seqs = await scheduled_rows(api, account, webhooks, pool, 4)
    batch_id = uuid.UUID(file_id)

    first = await messages.write_outcomes(pool, batch_id, [], mark=seqs[:3], by=7)
    again = await messages.write_outcomes(pool, batch_id, [], mark=seqs[:3], by=7)
    other = await messages.write_outcomes(pool, batch_id, [], mark=seqs, by=8)
    unknown = await messages.write_outcomes(pool, batch_id, [], mark=seqs)
    # The first attempt's answers: its own row moves, the other attempt's does not.
    await messages.write_outcomes(
        pool,
        batch_id,
        [
            messages.Outcome(seq=seqs[0], status=LedgerStatus.FAILED, error_code="21211"),
            messages.Outcome(seq=seqs[3], status=LedgerStatus.PENDING),
        ],
        by=7,
    )

    assert first.marked == again.marked == dict.fromkeys(seqs[:3], 1)
    assert other.marked == {seqs[3]: 1}
    assert unknown.marked == {}
    rows = await pool.fetch(
        "SELECT status, attempts, marked_by FROM messages WHERE batch_id = $1 ORDER BY seq",
        batch_id,
    )
    assert [tuple(r) for r in rows] == [
        ("failed", 1, 7),
        ("sending", 1, 7),
        ("sending", 1, 7),
        ("sending", 1, 8),
    ]


async def test_a_wave_is_marked_in_the_statement_that_writes_the_outcomes_of_the_last(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    file_id, seqs = await scheduled_rows(api, account, webhooks, pool, 6)
    batch_id = uuid.UUID(file_id)
    last, the_next = seqs[:3], seqs[3:]
    assert set((await messages.write_outcomes(pool, batch_id, [], mark=last)).marked) == set(last)
    sids = ["SM" + secrets.token_hex(16) for _ in last]
    await receipts.queue_receipts(pool, [receipts.Receipt(sids[0], "delivered", None)])

    written = await messages.write_outcomes(
        pool,
        batch_id,
        [
            messages.Outcome(seq=seq, status=LedgerStatus.SENT, carrier_sid=sid)
            for seq, sid in zip(last, sids, strict=True)
        ],
        # A row of the last wave is `sending`, not `pending`: it is not marked again.
        mark=[*the_next, last[1]],
    )

    assert set(written.marked) == set(the_next)
    # The first row took its queued receipt in the write; the others' are still to be looked up.
    assert written.unsettled == sids[1:]
    rows = await pool.fetch(
        "SELECT status, attempts FROM messages WHERE batch_id = $1 ORDER BY seq", batch_id
    )
    assert [tuple(r) for r in rows] == [
        ("delivered", 1),
        ("sent", 1),
        ("sent", 1),
        ("sending", 1),
        ("sending", 1),
        ("sending", 1),
    ]
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)


async def test_a_keyed_receipt_is_applied_by_its_key_before_the_sid_and_the_outcome_keeps_it(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, seqs = await rows_on_the_wire(api, account, webhooks, pool, 4)
    sids = ["SM" + secrets.token_hex(16) for _ in seqs]
    queued_before = await pool.fetchval(QUEUED_SO_FAR)

    # On the wire, no sid written yet: the first final receipt of each row counts.
    replies = [
        await post_receipt(api, settings, receipt(sids[0], "delivered"), query=key_of(file_id, 0)),
        await post_receipt(
            api, settings, receipt(sids[1], "undelivered", "30003"), query=key_of(file_id, 1)
        ),
        await post_receipt(api, settings, receipt(sids[1], "delivered"), query=key_of(file_id, 1)),
        await post_receipt(api, settings, receipt(sids[2], "sent"), query=key_of(file_id, 2)),
        await post_receipt(api, settings, receipt(sids[3], "delivered"), query=key_of(file_id, 3)),
    ]
    before_outcomes = await ledger_writes(pool, file_id)
    queued = await pool.fetchval(QUEUED_SO_FAR) - queued_before
    # The worker then writes the outcomes: the fourth's answer was lost (a timeout).
    await messages.record_outcomes(
        pool,
        uuid.UUID(file_id),
        [
            messages.Outcome(seqs[0], LedgerStatus.SENT, sids[0]),
            messages.Outcome(seqs[1], LedgerStatus.SENT, sids[1]),
            messages.Outcome(seqs[2], LedgerStatus.SENT, sids[2]),
            messages.Outcome(seqs[3], LedgerStatus.UNCERTAIN, None, "timeout", "no answer"),
        ],
    )
    after = await ledger_writes(pool, file_id)
    counts = await messages.count_by_status(pool, uuid.UUID(file_id))
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert [r.status_code for r in replies] == [204] * 5
    # Only the second row's later receipt, which its row did not take: the applier drops it.
    assert queued == 1
    # Each taken by the row's one write (a sent time for the row), before its sid was written.
    assert before_outcomes == [
        (sids[0], "delivered", None, True),
        (sids[1], "undelivered", "30003", True),
        (None, "sending", None, None),
        (sids[3], "delivered", None, True),
    ]
    # The outcome's write moves only rows still on the wire: a receipt's row keeps it, and
    # the row whose answer was lost is settled by its receipt, not left `uncertain`.
    assert after == [
        (sids[0], "delivered", None, True),
        (sids[1], "undelivered", "30003", True),
        (sids[2], "sent", None, True),
        (sids[3], "delivered", None, True),
    ]
    assert counts == {"delivered": 2, "undelivered": 1, "sent": 1}


async def test_a_keyed_receipt_moves_only_the_row_and_the_send_it_belongs_to(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 3)
    batch_id = uuid.UUID(file_id)
    sids = [r["carrier_sid"] for r in rows]
    seqs = [r["seq"] for r in rows]
    # The third row's first send failed: a retry sends it again, under a new sid.
    failed = await post_receipt(
        api, settings, receipt(sids[2], "failed", "30008"), query=key_of(file_id, seqs[2])
    )
    assert await messages.reopen(pool, batch_id, [LedgerStatus.FAILED]) == 1
    resent = await messages.write_outcomes(pool, batch_id, [], mark=[seqs[2]])
    assert resent.marked == {seqs[2]: 2}
    new_sid, lost_sid, other_sid = ("SM" + secrets.token_hex(16) for _ in range(3))
    queued_before = await pool.fetchval(QUEUED_SO_FAR)

    replies = [
        # Another sid under the first row's key.
        await post_receipt(
            api, settings, receipt(other_sid, "delivered"), query=key_of(file_id, seqs[0])
        ),
        # The second row's first final receipt, then a later one.
        await post_receipt(
            api, settings, receipt(sids[1], "delivered"), query=key_of(file_id, seqs[1])
        ),
        await post_receipt(
            api, settings, receipt(sids[1], "undelivered", "30003"), query=key_of(file_id, seqs[1])
        ),
        # While the third row is sent again: a late repeat of its first send's receipt.
        await post_receipt(
            api, settings, receipt(sids[2], "delivered"), query=key_of(file_id, seqs[2])
        ),
        # A key of no row.
        await post_receipt(api, settings, receipt(new_sid, "delivered"), query=key_of(file_id, 99)),
    ]
    while_resent = (await ledger_writes(pool, file_id))[2]
    # In one statement: a receipt of an earlier send whose sid never reached the row (its
    # answer was lost), the resend's, and a later one of the resend.
    async with pool.acquire() as conn:
        await receipts.take_receipts(
            conn,
            [
                receipts.Receipt(lost_sid, "undelivered", "30003", resend_key(file_id, seqs[2], 1)),
                receipts.Receipt(new_sid, "delivered", None, resend_key(file_id, seqs[2], 2)),
                receipts.Receipt(new_sid, "failed", "30008", resend_key(file_id, seqs[2], 2)),
            ],
        )
    # A key changed after it was signed.
    forged = await post_receipt(
        api,
        settings,
        receipt(sids[0], "undelivered", "30003"),
        url=f"{settings.status_callback_url}?{key_of(file_id, seqs[1])}",
        query=key_of(file_id, seqs[0]),
    )
    after = await ledger_writes(pool, file_id)

    assert failed.status_code == 204
    assert [r.status_code for r in replies] == [204] * 5
    assert error_code(forged) == "INVALID_SIGNATURE"
    # The six that moved no row are handed to the queue (where they move none either).
    assert await pool.fetchval(QUEUED_SO_FAR) - queued_before == 6
    assert while_resent == (sids[2], "sending", "30008", False)
    assert after == [
        (sids[0], "sent", None, True),
        (sids[1], "delivered", None, False),
        # The resend's first receipt writes its sid and the time it was sent.
        (new_sid, "delivered", None, True),
    ]


def resend_key(file_id: str, seq: int, attempt: int) -> receipts.MessageKey:
    return receipts.MessageKey(uuid.UUID(file_id), seq, attempt)


async def test_a_keyed_receipt_never_waits_for_a_row_the_worker_holds(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, [seq] = await rows_on_the_wire(api, account, webhooks, pool, 1)
    sid = "SM" + secrets.token_hex(16)
    queued_before = await pool.fetchval(QUEUED_SO_FAR)
    # The row locked, as the worker's write of its outcome locks it (in an order of its own:
    # a receipt that waited for it while holding another row deadlocked with it).
    async with row_held(pool, file_id, seq):
        reply = await asyncio.wait_for(
            post_receipt(
                api, settings, receipt(sid, "undelivered", "30003"), query=key_of(file_id, seq)
            ),
            timeout=10,
        )
        queued = await pool.fetchval(QUEUED_SO_FAR) - queued_before
    # Put off to the queue: the write of the outcome takes it, by its sid.
    await messages.record_outcomes(
        pool, uuid.UUID(file_id), [messages.Outcome(seq, LedgerStatus.SENT, sid)]
    )
    after = await ledger_writes(pool, file_id)
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert reply.status_code == 204
    assert queued == 1
    assert after == [(sid, "undelivered", "30003", True)]
