"""A send activity cancelled while it records its slice still records it: the rows the carrier
accepted end `sent`, not `sending` (and later `uncertain`). And an attempt presumed dead that
lives on records what the carrier answered it, over the `uncertain` its successor left. One
cancelled while its lanes wait for places in the account's limit of requests in flight sends
none of those rows; nor one cancelled while the statement that marks its rows `sending` waits;
nor does one send a row made another's while it waited for its sender's pace.
"""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities import outages
from activities.providers.http1 import NotSent
from activities.providers.in_flight import InFlightLimit, StoppedWaiting
from activities.providers.twilio import SendResult, TwilioCarrier, Verdict
from activities.sending import SendingActivities
from metrics import WorkerMetrics
from settings import Settings
from store import messages
from tests.support.batches import start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.databases import blocked_behind
from tests.support.delivery import ledger_rows
from tests.support.sending import eventually, twilio_carrier
from tests.support.stack import Account, Configure, WebhookReceiver
from workflows.contracts import SendCounts, SendSliceInput

ROWS = 6


@pytest.fixture
async def carrier_client(settings: Settings) -> AsyncIterator[TwilioCarrier]:
    carrier = twilio_carrier(settings, connections=settings.send_concurrency)
    yield carrier
    await carrier.close()


@pytest.fixture
async def sending(
    settings: Settings, pool: asyncpg.Pool, carrier_client: TwilioCarrier
) -> AsyncIterator[SendingActivities]:
    async with httpx.AsyncClient() as http:
        yield SendingActivities(
            pool=pool, carrier=carrier_client, http=http, settings=settings, metrics=WorkerMetrics()
        )


async def scheduled_slice(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> tuple[str, str, SendSliceInput]:
    """A batch of ROWS scheduled an hour ahead: its ledger is written, and nothing but the
    test sends it; (file_id, marker, its one slice)."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(ROWS), schedule_at=later
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    slice_input = SendSliceInput(
        batch_id=file_id,
        account_id=str(account.account_id),
        agent_number=account.agent_number,
        start=0,
        end=ROWS,
    )
    return file_id, marker, slice_input


async def first_wave_marked(api: httpx.AsyncClient, account: Account, file_id: str) -> None:
    """Once the slice has marked its first wave `sending`."""
    await eventually(
        lambda: ledger_rows(api, account, file_id), lambda rows: rows[0]["status"] == "sending"
    )


@contextmanager
def places_taken(limit: InFlightLimit) -> Iterator[None]:
    """Every free place in `limit` taken, as other slices' requests would, until the block
    ends."""
    taken = []
    while (epoch := limit.take()) is not None:
        taken.append(epoch)
    try:
        yield
    finally:
        for epoch in taken:
            limit.give_back(epoch, throttled=None)


@asynccontextmanager
async def last_write_held(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    env: ActivityEnvironment,
    sending: SendingActivities,
    slice_input: SendSliceInput,
) -> AsyncIterator[asyncio.Future[SendCounts]]:
    """The slice sent in `env` (yielded), its rows locked by this test once marked `sending`
    (with slow answers, before they come): its last write waits for the lock until the block
    ends."""
    async with pool.acquire() as holder:
        locked = holder.transaction()
        await locked.start()
        activity = asyncio.ensure_future(env.run(sending.send_slice, slice_input))
        await first_wave_marked(api, account, slice_input.batch_id)
        await holder.execute(
            "SELECT 1 FROM messages WHERE batch_id = $1 FOR UPDATE",
            uuid.UUID(slice_input.batch_id),
        )
        await blocked_behind(pool, holder)
        try:
            yield activity
        finally:
            await locked.rollback()


async def test_a_cancellation_during_the_record_still_records_the_slice(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
    sending: SendingActivities,
    carrier: Configure,
) -> None:
    # Slow enough answers that the slice is seen `sending`, and locked, before it is recorded.
    await carrier(latency_ms=1500)
    file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
    env = ActivityEnvironment()

    async with last_write_held(api, account, pool, env, sending, slice_input) as activity:
        env.cancel()
        await asyncio.sleep(0.5)

    with pytest.raises(asyncio.CancelledError):
        await activity
    received = await emulator_messages(emulator_url, body_contains=marker)
    statuses = [row["status"] for row in await ledger_rows(api, account, file_id)]
    assert len(received) == ROWS
    assert statuses == ["sent"] * ROWS


async def test_a_slice_cancelled_while_its_wave_is_marked_sends_none_of_it(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
    sending: SendingActivities,
) -> None:
    # The rows locked before the slice starts: its claim (which locks none of them) goes
    # through, and the statement that marks its first wave `sending` waits for this test.
    # Cancelled meanwhile, the lanes find their rows marked once the lock goes, and send
    # none: they go back to `pending`.
    file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
    env = ActivityEnvironment()
    async with pool.acquire() as holder:
        locked = holder.transaction()
        await locked.start()
        await holder.execute(
            "SELECT 1 FROM messages WHERE batch_id = $1 FOR UPDATE", uuid.UUID(file_id)
        )
        activity = asyncio.ensure_future(env.run(sending.send_slice, slice_input))
        await blocked_behind(pool, holder)
        env.cancel()
        await locked.rollback()

    with pytest.raises(asyncio.CancelledError):
        await activity
    rows = await ledger_rows(api, account, file_id)
    assert await emulator_messages(emulator_url, body_contains=marker) == []
    # Marked, never requested: no attempt counted.
    assert [(row["status"], row["attempts"]) for row in rows] == [("pending", 0)] * ROWS


async def test_outcomes_whose_wave_write_failed_are_written_by_the_slices_last_write(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    settings: Settings,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Waves of two rows. The statement that writes the first wave's outcomes and marks the
    # second fails for good (PostgreSQL away past the outage wait); the slice's last write,
    # once it is back, still writes those two `sent`, and nothing more is marked or sent.
    file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
    real = messages.write_outcomes
    calls = 0

    async def second_fails(*args: Any, **kwargs: Any) -> messages.Written:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("PostgreSQL away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(messages, "write_outcomes", second_fails)
    monkeypatch.setattr(outages, "OUTAGE_WAIT_SECONDS", 0.0)
    two_lanes = settings.model_copy(update={"send_concurrency": 2})
    carrier = twilio_carrier(two_lanes, connections=2)
    try:
        async with httpx.AsyncClient() as http:
            sending = SendingActivities(
                pool=pool, carrier=carrier, http=http, settings=two_lanes, metrics=WorkerMetrics()
            )
            with pytest.raises(ConnectionRefusedError):
                await ActivityEnvironment().run(sending.send_slice, slice_input)
    finally:
        await carrier.close()

    statuses = [row["status"] for row in await ledger_rows(api, account, file_id)]
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == 2
    assert statuses == ["sent"] * 2 + ["pending"] * (ROWS - 2)


async def test_a_slice_heartbeats_while_its_last_write_waits(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
    sending: SendingActivities,
    carrier: Configure,
) -> None:
    # A last write that waits (here for this test's lock on the rows) is no dead attempt:
    # Temporal would start the slice again, and the new attempt would take the rows for lost.
    await carrier(latency_ms=1500)
    file_id, _, slice_input = await scheduled_slice(api, account, webhooks)
    env = ActivityEnvironment()
    heartbeats: list[object] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    async with last_write_held(api, account, pool, env, sending, slice_input) as activity:
        before = len(heartbeats)
        await eventually(lambda: asyncio.sleep(0, len(heartbeats)), lambda n: n >= before + 2)
    await activity

    assert [row["status"] for row in await ledger_rows(api, account, file_id)] == ["sent"] * ROWS


async def test_a_late_attempt_settles_the_rows_its_successor_made_uncertain(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
    sending: SendingActivities,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=1500)
    file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
    first = asyncio.ensure_future(ActivityEnvironment().run(sending.send_slice, slice_input))
    await first_wave_marked(api, account, file_id)
    # The next attempt of the slice, as after a heartbeat timeout: it finds the rows `sending`.
    assert await messages.claim_slice(pool, uuid.UUID(file_id), 0, ROWS) == []
    made_uncertain = [r["status"] for r in await ledger_rows(api, account, file_id)]
    await first

    rows = await ledger_rows(api, account, file_id)
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert made_uncertain == ["uncertain"] * ROWS
    assert [r["status"] for r in rows] == ["sent"] * ROWS
    assert {r["to_number"]: r["carrier_sid"] for r in rows} == {m["to"]: m["sid"] for m in received}


async def test_a_cancelled_slice_sends_none_of_the_rows_waiting_for_a_place(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    sending: SendingActivities,
    carrier_client: TwilioCarrier,
) -> None:
    # The account's limit of requests in flight is all taken (by other slices, as when the
    # carrier throttles it): the slice's lanes mark their wave and wait for places.
    limit = carrier_client.in_flight_limit()
    with places_taken(limit):
        file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
        env = ActivityEnvironment()
        activity = asyncio.ensure_future(env.run(sending.send_slice, slice_input))
        await first_wave_marked(api, account, file_id)
        env.cancel()
        ended, _ = await asyncio.wait({activity}, timeout=10)
    # Places come free after the cancellation: nothing of the slice goes out with them.
    assert ended, "the cancelled slice waited for places in the limit"
    with pytest.raises(asyncio.CancelledError):
        await activity
    await asyncio.sleep(0.5)

    received = await emulator_messages(emulator_url, body_contains=marker)
    rows = await ledger_rows(api, account, file_id)
    assert received == []
    assert [(row["status"], row["attempts"]) for row in rows] == [("pending", 0)] * ROWS
    assert limit.in_flight == 0


@pytest.fixture
async def margin_of_half_a_second(
    settings: Settings, pool: asyncpg.Pool, carrier_client: TwilioCarrier
) -> AsyncIterator[SendingActivities]:
    """The send activities with a reconcile margin of 0.5 s: a row whose wave was marked
    longer ago renews its mark before it goes (_Waves.marked_at)."""
    own = settings.model_copy(update={"reconcile_margin_seconds": 0.5})
    async with httpx.AsyncClient() as http:
        yield SendingActivities(
            pool=pool, carrier=carrier_client, http=http, settings=own, metrics=WorkerMetrics()
        )


async def reopen_last_row(pool: asyncpg.Pool, file_id: str) -> str:
    """The batch's last row made `pending` again, as reconciliation reopens a row it found on
    no carrier list (its slice's attempt taken for dead, its rows made `uncertain`); its
    number."""
    number: str = await pool.fetchval(
        "UPDATE messages SET status = 'pending', marked_by = NULL, updated_at = now()"
        " WHERE batch_id = $1 AND seq = (SELECT max(seq) FROM messages WHERE batch_id = $1)"
        " RETURNING to_number",
        uuid.UUID(file_id),
    )
    return number


async def assert_sent_but(
    api: httpx.AsyncClient,
    account: Account,
    emulator_url: str,
    file_id: str,
    marker: str,
    left: str,
) -> None:
    """Every row of the batch sent by its slice but `left`, which is `pending`, never sent
    by the attempt that lost it (the batch sends it, once)."""
    received = await emulator_messages(emulator_url, body_contains=marker)
    rows = {r["to_number"]: r["status"] for r in await ledger_rows(api, account, file_id)}
    assert left not in {m["to"] for m in received}
    assert rows.pop(left) == "pending"
    assert set(rows.values()) == {"sent"}


async def test_a_row_reopened_while_it_waited_for_its_senders_pace_is_not_sent_by_its_slice(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
    margin_of_half_a_second: SendingActivities,
) -> None:
    # A sender of 2 messages a second: the slice marks its one wave of ROWS at once, and its
    # last row goes on the wire 2.5 s later, past the reconcile margin.
    paced = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": 2}
    )
    assert paced.status_code == 200, paced.text
    file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
    activity = asyncio.ensure_future(
        ActivityEnvironment().run(margin_of_half_a_second.send_slice, slice_input)
    )
    await eventually(
        lambda: emulator_messages(emulator_url, body_contains=marker), lambda found: bool(found)
    )
    left = await reopen_last_row(pool, file_id)
    counts = await activity

    await assert_sent_but(api, account, emulator_url, file_id, marker, left)
    assert counts.sent == ROWS - 1


async def test_a_row_reopened_while_it_waited_for_a_place_in_flight_is_not_sent_by_its_slice(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
    margin_of_half_a_second: SendingActivities,
    carrier_client: TwilioCarrier,
) -> None:
    # Every place in the account's limit of requests in flight is taken: the slice marks its
    # wave, and its lanes wait for places past the reconcile margin.
    with places_taken(carrier_client.in_flight_limit()):
        file_id, marker, slice_input = await scheduled_slice(api, account, webhooks)
        activity = asyncio.ensure_future(
            ActivityEnvironment().run(margin_of_half_a_second.send_slice, slice_input)
        )
        await first_wave_marked(api, account, file_id)
        await asyncio.sleep(1.0)
        left = await reopen_last_row(pool, file_id)
    counts = await activity

    await assert_sent_but(api, account, emulator_url, file_id, marker, left)
    assert counts.sent == ROWS - 1


async def test_a_request_whose_ready_check_says_no_or_fails_is_never_written(
    emulator_url: str, carrier_client: TwilioCarrier
) -> None:
    to, from_ = unique_numbers(2)
    body = f"ready-{uuid.uuid4().hex}"

    async def no() -> bool:
        return False

    async def broken() -> bool:
        raise OSError("PostgreSQL went away")

    async def yes() -> bool:
        return True

    async def send(ready: Callable[[], Awaitable[bool]]) -> SendResult:
        return await carrier_client.send(
            to=to, from_=from_, body=body, status_callback=None, ready=ready
        )

    with pytest.raises(StoppedWaiting):
        await send(no)
    # Not taken for the carrier's answer (an unreadable one would leave the row uncertain).
    with pytest.raises(NotSent) as failed:
        await send(broken)
    sent = await send(yes)

    assert isinstance(failed.value.__cause__, OSError)
    assert sent.verdict is Verdict.SENT
    assert [m["sid"] for m in await emulator_messages(emulator_url, body_contains=body)] == [
        sent.sid
    ]
    assert carrier_client.in_flight_limit().in_flight == 0


@pytest.mark.parametrize("attempt", [2, 1], ids=["a-retry", "a-new-activity-after-a-pause"])
async def test_the_next_attempt_applies_receipts_kept_while_the_one_before_died(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    sending: SendingActivities,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    attempt: int,
) -> None:
    # An attempt whose worker died between writing its sids and applying the receipts kept
    # for them meanwhile (they came before the sids were written): nothing applied them, and
    # the rows stayed `sent`.
    file_id, _, slice_input = await scheduled_slice(api, account, webhooks)

    async def died(*args: Any) -> None:
        raise RuntimeError("the worker died")

    with monkeypatch.context() as patched:
        patched.setattr(messages, "apply_kept_receipts", died)
        with pytest.raises(RuntimeError):
            await ActivityEnvironment().run(sending.send_slice, slice_input)
    sids = [row["carrier_sid"] for row in await ledger_rows(api, account, file_id)]
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status) SELECT unnest($1::text[]), 'delivered'",
        sids,
    )
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=attempt)

    await retry.run(sending.send_slice, slice_input)

    statuses = [row["status"] for row in await ledger_rows(api, account, file_id)]
    assert statuses == ["delivered"] * ROWS
