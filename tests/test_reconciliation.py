"""Reconciliation of `uncertain` rows against the real carrier emulator: it finds the very
message the row's send made, however the send addressed and worded it, and no other."""

import asyncio
import dataclasses
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.reconciliation import CLOCK_SLACK, ReconciliationActivities, carrier_list
from deploy.local.emulator import MESSAGES_PATH
from metrics import WorkerMetrics
from settings import Settings
from store import messages, receipts
from tests.support.batches import (
    FINAL,
    recorded_batch,
    sending_batch,
    start,
    start_marked_batch,
)
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows, own_worker, receipts_applied
from tests.support.sending import twilio_carrier
from tests.support.stack import AUTH_TOKEN, Account, Configure, WebhookReceiver, api_client
from tests.support.workers import CARRIER_TIMEOUT_SECONDS
from workflows.contracts import ReconcileInput, ReconcileResult

CONTENT_SID = "HX" + "5e" * 16


@pytest.mark.parametrize(
    ("fields", "address"),
    [
        pytest.param({"channel": "whatsapp", "agent_message": "hi"}, "whatsapp:", id="whatsapp"),
        pytest.param({"content_sid": CONTENT_SID}, "", id="content-template"),
    ],
)
async def test_an_uncertain_row_the_carrier_took_is_found_as_its_send_made_it(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    fields: dict[str, str],
    address: str,
) -> None:
    """The carrier takes the message but its answer is unreadable: the row is `uncertain`
    until reconciliation finds the message, on the batch's channel and with the text the send
    had (none compared for a content template, whose text the carrier renders)."""
    to = unique_numbers(1)[0]
    await carrier(malformed={to: ["truncated"]})
    marker = secrets.token_hex(6)
    # Reconciliation waits out the carrier timeout: a short one, not the default 30 s.
    async with (
        own_worker(temporal, settings, carrier_timeout_seconds=CARRIER_TIMEOUT_SECONDS) as own,
        api_client(own) as api,
    ):
        file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [[to]]))
        response = await start(
            api,
            account,
            file_id,
            status_webhook=webhooks.url(marker),
            **{"global": {"agent_number": account.agent_number, **fields}},
        )
        assert response.status_code == 200, response.text
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        [row] = await ledger_rows(api, account, file_id)

    received = await emulator_messages(emulator_url, to=address + to)
    assert len(received) == 1, received
    assert (row["status"], row["carrier_sid"], row["attempts"]) == ("sent", received[0]["sid"], 1)
    assert final["status"] == "completed"


async def test_a_retried_row_whose_answer_is_lost_is_not_given_its_earlier_failed_sid(
    temporal: Client,
    settings: Settings,
    pool: asyncpg.Pool,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    """A row sent, failed by its receipt, then retried: the retry's answer is unreadable, so
    the row is `uncertain`. The carrier holds both messages, with the same text, from the same
    sender; the retry's is the row's, not the earlier one, which no row holds any more."""
    to = unique_numbers(1)[0]
    async with (
        own_worker(temporal, settings, carrier_timeout_seconds=CARRIER_TIMEOUT_SECONDS) as own,
        api_client(own) as api,
    ):
        file_id, marker = await start_marked_batch(api, account, webhooks, [to])
        await webhooks.wait_for(marker, *FINAL)
        [first] = await emulator_messages(emulator_url, to=to)
        await receipts.queue_receipts(pool, [receipts.Receipt(first["sid"], "failed", "30008")])
        await receipts_applied(pool, [first["sid"]])
        [failed] = await ledger_rows(api, account, file_id)
        await carrier(malformed={to: ["truncated"]})
        # The retry's send comes well past the carrier's clock's slack after the first.
        sent_at = datetime.fromisoformat(first["received_at"]).timestamp()
        await asyncio.sleep(max(0.0, sent_at + CLOCK_SLACK.total_seconds() + 1 - time.time()))
        retry = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
        assert retry.status_code == 200, retry.text
        final = (await webhooks.wait_for(marker, *FINAL, times=2))[-1]
        [row] = await ledger_rows(api, account, file_id)

    received = await emulator_messages(emulator_url, to=to)
    assert (failed["status"], failed["carrier_sid"]) == ("failed", first["sid"])
    assert [m["sid"] for m in received][:1] == [first["sid"]] and len(received) == 2
    assert (row["status"], row["carrier_sid"], row["attempts"]) == ("sent", received[1]["sid"], 2)
    assert final["status"] == "completed"


@asynccontextmanager
async def reconciliation_activities(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[ReconciliationActivities]:
    carrier = twilio_carrier(settings)
    async with httpx.AsyncClient() as http:
        yield ReconciliationActivities(
            pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
        )
    await carrier.close()


@pytest.fixture
async def reconciliation(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[ReconciliationActivities]:
    async with reconciliation_activities(settings, pool) as activities:
        yield activities


async def uncertain_rows(
    pool: asyncpg.Pool, account: Account, batch_id: uuid.UUID, statuses: list[str]
) -> ReconcileInput:
    """Ledger rows of the carrier's unknown numbers, in these statuses, changed long enough
    ago that reconciliation waits for no request still on the wire; its input for them."""
    await pool.execute(
        "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body, status,"
        " attempts, updated_at) SELECT $1, i - 1, $2, i, n, 'x', s, 1, now() - interval '1 hour'"
        " FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS r(n, s, i)",
        batch_id,
        account.account_id,
        unique_numbers(len(statuses)),
        statuses,
    )
    return ReconcileInput(
        batch_id=str(batch_id), account_id=str(account.account_id), agent_number="+15550009999"
    )


async def test_a_retried_reconciliation_still_has_the_batch_send_the_rows_it_reopened(
    pool: asyncpg.Pool, account: Account, reconciliation: ReconciliationActivities
) -> None:
    """Reconciliation reopens the rows the carrier never got; an attempt of it run again
    (Temporal retries one that failed, or whose result was lost, after it had reopened them)
    finds them `pending`, not `uncertain`, and must still tell the batch to send them."""
    batch_id = await recorded_batch(pool, account)
    # Three rows the carrier never got, the middle one settled.
    input = await uncertain_rows(pool, account, batch_id, ["uncertain", "sent", "uncertain"])

    first = await ActivityEnvironment().run(reconciliation.reconcile_uncertain, input)
    again = await ActivityEnvironment().run(reconciliation.reconcile_uncertain, input)

    reopened = ReconcileResult(reopened=2, first_seq=0, end_seq=3)
    assert (first, again) == (reopened, reopened)
    assert await messages.count_by_status(pool, batch_id) == {"pending": 2, "sent": 1}


async def test_every_carrier_list_is_a_heartbeat(
    pool: asyncpg.Pool, account: Account, reconciliation: ReconciliationActivities
) -> None:
    """A batch with thousands of uncertain rows lists them for longer than the activity's
    heartbeat timeout (a minute): each list answered tells Temporal the attempt lives on, or
    it was timed out and a second attempt listed them all again beside it."""
    batch_id = await recorded_batch(pool, account)
    input = await uncertain_rows(pool, account, batch_id, ["uncertain"] * 20)
    beats: list[tuple[object, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    result = await env.run(reconciliation.reconcile_uncertain, input)

    assert result.reopened == 20
    assert len(beats) >= 20


async def test_a_carrier_list_refused_is_no_list_not_a_failure(settings: Settings) -> None:
    """A list whose page the carrier refuses for good (a 401: credentials revoked) raises
    twilio's base TwilioException, not TwilioRestException: it is no list (the rows stay
    `uncertain`), not an error that fails the activity on every attempt."""
    carrier = twilio_carrier(settings)
    user, sender = unique_numbers(2)
    try:
        with capture_logs() as logged:
            found = await ActivityEnvironment().run(
                carrier_list, carrier, user, sender, (f"AC{secrets.token_hex(16)}", "revoked")
            )
    finally:
        await carrier.close()

    assert found is None
    # Logged with the sender, not the user's number.
    [refused] = [line for line in logged if line["event"] == "carrier list refused"]
    assert refused["sender"] == sender
    assert user not in repr(logged)


async def carrier_message(settings: Settings, to: str, from_: str, body: str) -> str:
    """A message the carrier took from `from_` to `to`, as another send's; its sid."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            settings.carrier_url.rstrip("/")
            + MESSAGES_PATH.format(account_sid=settings.twilio_account_sid),
            data={"To": to, "From": from_, "Body": body},
            auth=(settings.twilio_account_sid, AUTH_TOKEN),
        )
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


async def sending_row(
    pool: asyncpg.Pool, account: Account, to: str, marked_ago: float = 0.0
) -> uuid.UUID:
    """A batch of the account, sending, with one row to `to` on the wire or answered:
    `sending`, marked `marked_ago` seconds ago, its sid not written yet."""
    batch_id = await sending_batch(pool, account)
    await pool.execute(
        "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body, status,"
        " attempts, marked_at) VALUES ($1, 0, $2, 1, $3, 'x', 'sending', 1,"
        " now() - make_interval(secs => $4))",
        batch_id,
        account.account_id,
        to,
        marked_ago,
    )
    return batch_id


@pytest.mark.parametrize(
    ("status", "marked_ago", "busy"),
    [("in_progress", 600.0, True), ("paused", 600.0, False), ("paused", 0.0, True)],
)
async def test_a_paused_batchs_row_left_sending_long_ago_is_no_send_on_the_wire(
    pool: asyncpg.Pool, account: Account, status: str, marked_ago: float, busy: bool
) -> None:
    """A sending batch's row counts however long ago it was marked (its answer may wait for
    its slice's next wave); a paused batch's slices have stopped and written what they had,
    so its row marked long ago is a dead attempt's, which kept reconciliation of its number
    waiting nine rounds."""
    number = unique_numbers(1)[0]
    other = await sending_row(pool, account, number, marked_ago)
    await pool.execute("UPDATE batches SET status = $2 WHERE id = $1", other, status)

    found = await messages.numbers_in_flight(
        pool,
        account.account_id,
        await recorded_batch(pool, account),
        [(account.agent_number, number)],
        35.0,
    )

    assert found == ({number} if busy else set())


@pytest.fixture
async def quick_reconciliation(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[ReconciliationActivities]:
    """As `reconciliation`, with a carrier timeout of 0.5 s: it waits 1 s for a send."""
    quick = settings.model_copy(update={"carrier_timeout_seconds": 0.5})
    async with reconciliation_activities(quick, pool) as activities:
        yield activities


@pytest.mark.parametrize("marked_ago", [0.0, 600.0], ids=["marked-now", "marked-long-ago"])
async def test_a_message_of_a_send_still_on_the_wire_is_not_taken_for_an_uncertain_rows(
    pool: asyncpg.Pool,
    account: Account,
    settings: Settings,
    quick_reconciliation: ReconciliationActivities,
    monkeypatch: pytest.MonkeyPatch,
    marked_ago: float,
) -> None:
    """The carrier never got the row's request; another batch's send to the same number,
    with the same text, is on the wire or answered: its message is at the carrier, its sid
    not in the ledger yet. Taken for the row's, the row was `sent` and never sent, and one
    message was two rows'. Reconciliation waits for that send, then finds its message held.
    Also when the send's wave was marked long ago: a slow sender's slice writes its answers
    only as it marks its next wave, minutes later."""
    batch_id = await recorded_batch(pool, account)
    input = await uncertain_rows(pool, account, batch_id, ["uncertain"])
    [row] = await messages.uncertain_rows(pool, batch_id)
    other_batch = await sending_row(pool, account, row.to_number, marked_ago)
    theirs = await carrier_message(settings, row.to_number, input.agent_number, "x")
    # How often it has asked which numbers have sends on the wire.
    asks = 0
    asked_again = asyncio.Event()
    in_flight = getattr(messages, "numbers_in_flight", None)

    async def counted(*args: Any) -> set[str]:
        nonlocal asks
        assert in_flight is not None
        busy: set[str] = await in_flight(*args)
        asks += 1
        if asks == 2:
            asked_again.set()
        return busy

    monkeypatch.setattr(messages, "numbers_in_flight", counted, raising=False)
    reconciling = asyncio.create_task(
        ActivityEnvironment().run(quick_reconciliation.reconcile_uncertain, input)
    )
    # Once it has waited a round for the send on the wire and asks again (or, if it took
    # the send's message for the row's, once it is done).
    await asyncio.wait(
        [asyncio.create_task(asked_again.wait()), reconciling],
        timeout=30,
        return_when=asyncio.FIRST_COMPLETED,
    )
    # The other send's answer is written while the row waits.
    await pool.execute(
        "UPDATE messages SET status = 'sent', carrier_sid = $2 WHERE batch_id = $1",
        other_batch,
        theirs,
    )
    result = await asyncio.wait_for(reconciling, 60)

    holders = await pool.fetch("SELECT batch_id FROM messages WHERE carrier_sid = $1", theirs)
    assert [h["batch_id"] for h in holders] == [other_batch]
    assert result == ReconcileResult(reopened=1, first_seq=0, end_seq=1)
    assert await messages.count_by_status(pool, batch_id) == {"pending": 1}


async def test_two_uncertain_rows_to_one_number_take_their_own_messages_oldest_first(
    pool: asyncpg.Pool,
    account: Account,
    settings: Settings,
    quick_reconciliation: ReconciliationActivities,
) -> None:
    """Two batches' rows to one number, with one text, each `uncertain`: each message was
    made after its own row's mark, so the first row's is the oldest after its mark. Taking
    the newest, the first row took the second's message, which left the second none: it was
    sent again."""
    first_batch, second_batch = (
        await recorded_batch(pool, account),
        await recorded_batch(pool, account),
    )
    first = await uncertain_rows(pool, account, first_batch, ["uncertain"])
    [row] = await messages.uncertain_rows(pool, first_batch)
    await pool.execute(
        "UPDATE messages SET marked_at = now() - interval '10 seconds' WHERE batch_id = $1",
        first_batch,
    )
    first_message = await carrier_message(settings, row.to_number, first.agent_number, "x")
    await asyncio.sleep(CLOCK_SLACK.total_seconds() + 1.1)
    await pool.execute(
        "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body, status,"
        " attempts, marked_at, updated_at) VALUES ($1, 0, $2, 1, $3, 'x', 'uncertain', 1,"
        " now(), now() - interval '1 hour')",
        second_batch,
        account.account_id,
        row.to_number,
    )
    second_message = await carrier_message(settings, row.to_number, first.agent_number, "x")
    second = dataclasses.replace(first, batch_id=str(second_batch))

    for input in (first, second):
        await ActivityEnvironment().run(quick_reconciliation.reconcile_uncertain, input)

    held = await pool.fetch(
        "SELECT batch_id, status, carrier_sid FROM messages WHERE batch_id = ANY($1::uuid[])",
        [first_batch, second_batch],
    )
    assert {(h["batch_id"], h["status"], h["carrier_sid"]) for h in held} == {
        (first_batch, "sent", first_message),
        (second_batch, "sent", second_message),
    }


async def test_two_reconciliations_at_once_never_give_one_message_to_two_rows(
    pool: asyncpg.Pool,
    account: Account,
    settings: Settings,
    quick_reconciliation: ReconciliationActivities,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two batches' uncertain rows to one number reconciled at once, one message at the
    carrier: both read it as free before either wrote it, and both took it."""
    batches = [await recorded_batch(pool, account) for _ in range(2)]
    first = await uncertain_rows(pool, account, batches[0], ["uncertain"])
    [row] = await messages.uncertain_rows(pool, batches[0])
    await pool.execute(
        "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body, status,"
        " attempts, updated_at) VALUES ($1, 0, $2, 1, $3, 'x', 'uncertain', 1,"
        " now() - interval '1 hour')",
        batches[1],
        account.account_id,
        row.to_number,
    )
    only = await carrier_message(settings, row.to_number, first.agent_number, "x")
    inputs = [dataclasses.replace(first, batch_id=str(b)) for b in batches]

    # Each held before it settles its row until the other is there too: both have read what
    # the carrier has, and what the ledger holds, before either writes.
    arrived = 0
    both = asyncio.Event()
    settle = messages.settle_uncertain

    async def together(*args: Any) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 30)
        return await settle(*args)

    monkeypatch.setattr(messages, "settle_uncertain", together)
    await asyncio.gather(
        *(
            ActivityEnvironment().run(quick_reconciliation.reconcile_uncertain, input)
            for input in inputs
        )
    )

    holders = await pool.fetch("SELECT batch_id FROM messages WHERE carrier_sid = $1", only)
    assert len(holders) == 1
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE batch_id = ANY($1::uuid[]) AND status = 'pending'",
            batches,
        )
        == 1
    )


async def test_a_template_rows_message_another_batchs_uncertain_row_may_own_is_not_taken(
    pool: asyncpg.Pool,
    account: Account,
    settings: Settings,
    quick_reconciliation: ReconciliationActivities,
) -> None:
    """A row sent with a content template matches any message of its pair (the carrier
    renders its text). Another batch's `uncertain` row to the pair, with its own text, may
    own the message found: taken, that batch's reconciliation found none and sent its text
    again (twice to the user), and the template was never sent. The row stays `uncertain`,
    neither taken nor sent again; the other batch's row takes its message."""
    batch_id = await recorded_batch(pool, account, {"global": {"content_sid": "HX" + "7a" * 16}})
    input = await uncertain_rows(pool, account, batch_id, ["uncertain"])
    [row] = await messages.uncertain_rows(pool, batch_id)
    other_batch = await sending_batch(pool, account)
    await pool.execute(
        "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, from_number,"
        " body, status, attempts, updated_at) VALUES ($1, 0, $2, 1, $3, $4, 'their text',"
        " 'uncertain', 1, now() - interval '1 hour')",
        other_batch,
        account.account_id,
        row.to_number,
        input.agent_number,
    )
    theirs = await carrier_message(settings, row.to_number, input.agent_number, "their text")

    result = await ActivityEnvironment().run(quick_reconciliation.reconcile_uncertain, input)
    await ActivityEnvironment().run(
        quick_reconciliation.reconcile_uncertain,
        dataclasses.replace(input, batch_id=str(other_batch)),
    )

    assert result == ReconcileResult(unresolved=1)
    assert await messages.count_by_status(pool, batch_id) == {"uncertain": 1}
    holders = await pool.fetch("SELECT batch_id FROM messages WHERE carrier_sid = $1", theirs)
    assert [h["batch_id"] for h in holders] == [other_batch]
