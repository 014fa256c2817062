"""Reconciliation of `uncertain` rows against the real carrier emulator: it finds the very
message the row's send made, however the send addressed and worded it, and no other."""

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.reconciliation import CLOCK_SLACK, ReconciliationActivities, carrier_list
from metrics import WorkerMetrics
from settings import Settings
from store import messages, receipts
from tests.support.batches import FINAL, recorded_batch, start, start_marked_batch
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows, own_worker, receipts_applied
from tests.support.sending import twilio_carrier
from tests.support.stack import Account, Configure, WebhookReceiver, api_client
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


@pytest.fixture
async def reconciliation(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[ReconciliationActivities]:
    carrier = twilio_carrier(settings)
    async with httpx.AsyncClient() as http:
        yield ReconciliationActivities(
            pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
        )
    await carrier.close()


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
    try:
        found = await ActivityEnvironment().run(
            carrier_list,
            carrier,
            unique_numbers(1)[0],
            unique_numbers(1)[0],
            (f"AC{secrets.token_hex(16)}", "revoked"),
        )
    finally:
        await carrier.close()

    assert found is None
