"""Account-wide carrier deferrals on the real stack: the carrier throttling every request of an
account (20429), or out of reach, for longer than the retry window pauses every running batch
of that account once, with one event, instead of retrying (or failing) row by row; batches of
another account send on."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from deploy.local.emulator import NO_ANSWER, Carrier, Faults, running
from deploy.local.processes import free_port
from settings import Settings
from tests.support.batches import FINAL, phases, run_batch, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows, own_worker
from tests.support.stack import AUTH_TOKEN, Account, Configure, WebhookReceiver, api_client
from tests.support.workers import CARRIER_TIMEOUT_SECONDS

# The retry window of the tests' own worker, and a throttled account's pause.
OUTAGE_SECONDS = 1.0
THROTTLE_PAUSE_SECONDS = 5.0


@asynccontextmanager
async def short_window(
    temporal: Client, settings: Settings, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An API whose batches run on a worker of their own, with the tests' short retry window
    and `changes` to its settings."""
    async with (
        own_worker(temporal, settings, carrier_outage_seconds=OUTAGE_SECONDS, **changes) as own,
        api_client(own) as api,
    ):
        yield api


async def paused_once(webhooks: WebhookReceiver, marker: str, code: str) -> dict:
    """The batch's `paused` event, once it has come."""
    events = await webhooks.wait_for(marker, "paused")
    [paused] = [e for e in events if e["status"] == "paused"]
    assert paused["code"] == code, paused
    return paused


async def scheduled_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> tuple[str, str]:
    """A batch of the account that is running, waiting for its schedule an hour away."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(3), schedule_at=later
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    return file_id, marker


async def test_account_throttling_pauses_every_running_batch_of_the_account_once_then_resumes(
    temporal: Client,
    settings: Settings,
    account: Account,
    other_account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(5)
    # The carrier throttles the batch's first two requests to each number (429, code 20429).
    await carrier(scripted={number: [429, 429] for number in numbers})
    async with short_window(
        temporal, settings, carrier_throttle_pause_seconds=THROTTLE_PAUSE_SECONDS
    ) as api:
        waiting_file, waiting = await scheduled_batch(api, account, webhooks)
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        other_file, other_events = await run_batch(api, other_account, webhooks, unique_numbers(5))

        paused = await paused_once(webhooks, marker, "carrier_throttled")
        # Throttled, not failed: the rows wait, `pending`, for the pause to end.
        assert {r["status"] for r in await ledger_rows(api, account, file_id)} == {"pending"}
        assert paused["error_codes"] == {"20429": 1}
        assert f"resumes by itself in {THROTTLE_PAUSE_SECONDS:g} s" in paused["reason"]
        assert (await paused_once(webhooks, waiting, "carrier_throttled"))["reason"] == (
            paused["reason"]
        )

        # No operator: the batches resume by themselves after the back-off.
        events = await webhooks.wait_for(marker, *FINAL)
        await webhooks.wait_for(waiting, "waiting_for_scheduled_messages", times=2)
        rows = await ledger_rows(api, account, file_id)
        cancel = await api.post(f"/v1/sms/batch/{waiting_file}/cancel", headers=account.headers)
        assert cancel.status_code == 200, cancel.text
        waiting_events = await webhooks.wait_for(waiting, *FINAL)
        other_rows = await ledger_rows(api, other_account, other_file)

    assert events[-1]["status"] == "completed"
    assert sum(e["status"] == "paused" for e in events) == 1
    assert sum(e["status"] == "paused" for e in waiting_events) == 1
    # Two throttled attempts within the retry window, then one that sent each row once.
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 3)}
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert sorted(m["to"] for m in received) == sorted(numbers)
    # The other account's batch, on the same worker, never paused.
    assert other_events[-1]["status"] == "completed"
    assert "paused" not in phases(other_events)
    assert {r["status"] for r in other_rows} == {"sent"}


async def test_an_operators_pause_of_a_throttled_batch_holds_it_with_an_event_of_its_own(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    # Held for good, the batch recorded nothing: it kept the auto-pause's code and its
    # reason, "resumes by itself in 5 s", which it never did.
    numbers = unique_numbers(3)
    await carrier(scripted={number: [429, 429] for number in numbers})
    async with short_window(
        temporal, settings, carrier_throttle_pause_seconds=THROTTLE_PAUSE_SECONDS
    ) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await paused_once(webhooks, marker, "carrier_throttled")
        held = await api.post(f"/v1/sms/batch/{file_id}/pause", headers=account.headers)
        await webhooks.wait_for(marker, "paused", times=2)
        await asyncio.sleep(THROTTLE_PAUSE_SECONDS + 1)
        batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()
        resumed = await api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
        final = await webhooks.wait_for(marker, *FINAL)

    assert held.status_code == resumed.status_code == 200
    # Past the back-off, still paused, by the operator; then sent once resumed.
    assert (batch["data"]["status"], batch["data"]["code"]) == ("paused", None)
    assert [(e["status"], e.get("code")) for e in final][-4:] == [
        ("paused", "carrier_throttled"),
        ("paused", None),
        ("in_progress", None),
        ("completed", None),
    ]


async def test_an_unreachable_carrier_pauses_every_running_batch_of_the_account_once(
    temporal: Client,
    settings: Settings,
    api: httpx.AsyncClient,
    account: Account,
    other_account: Account,
    webhooks: WebhookReceiver,
) -> None:
    port = free_port()
    emulator = Carrier(auth_token=AUTH_TOKEN, faults=Faults())
    numbers = unique_numbers(5)
    # The account's batches go through a worker whose carrier refuses connections (nothing
    # listens on its port) until the emulator starts there.
    async with short_window(
        temporal, settings, twilio_api_url=f"http://127.0.0.1:{port}"
    ) as own_api:
        waiting_file, waiting = await scheduled_batch(own_api, account, webhooks)
        file_id, marker = await start_marked_batch(own_api, account, webhooks, numbers)
        other_file, other_events = await run_batch(api, other_account, webhooks, unique_numbers(5))

        paused = await paused_once(webhooks, marker, "carrier_unreachable")
        assert paused["error_codes"] == {"connect": 1}
        assert "resume them once the carrier is back" in paused["reason"]
        await paused_once(webhooks, waiting, "carrier_unreachable")
        # Nothing failed one by one: the rows wait, `pending`.
        assert {r["status"] for r in await ledger_rows(own_api, account, file_id)} == {"pending"}
        assert not emulator.received

        async with running(emulator, "127.0.0.1", port):
            resumed = await own_api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
            assert resumed.status_code == 200, resumed.text
            events = await webhooks.wait_for(marker, *FINAL)
            rows = await ledger_rows(own_api, account, file_id)
        cancel = await own_api.post(f"/v1/sms/batch/{waiting_file}/cancel", headers=account.headers)
        assert cancel.status_code == 200, cancel.text
        waiting_events = await webhooks.wait_for(waiting, *FINAL)

    assert events[-1]["status"] == "completed"
    assert sum(e["status"] == "paused" for e in events) == 1
    assert sum(e["status"] == "paused" for e in waiting_events) == 1
    assert {r["status"] for r in rows} == {"sent"}
    assert sorted(m.to for m in emulator.received) == sorted(numbers)
    assert other_events[-1]["status"] == "completed"
    assert "paused" not in phases(other_events)
    assert {r["status"] for r in await ledger_rows(api, other_account, other_file)} == {"sent"}


@pytest.mark.parametrize(
    ("answer", "code", "carrier_timeout"),
    [
        # Each 500 may come after the carrier created the message.
        pytest.param(500, "20500", CARRIER_TIMEOUT_SECONDS, id="server-error"),
        # A carrier that takes each request and never answers (its load balancer holding
        # them): each row waited out the carrier timeout, `uncertain`, every row of every
        # slice, and no batch paused.
        pytest.param(NO_ANSWER, "no_answer", 1.0, id="no-answer"),
    ],
)
async def test_a_carrier_failing_every_request_leaves_only_its_requests_in_flight_uncertain(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    answer: int,
    code: str,
    carrier_timeout: float,
) -> None:
    """Such a row is `uncertain`, and its slice stops at once, so the batch pauses with the
    rest of its rows `pending`."""
    numbers = unique_numbers(20)
    await carrier(scripted={number: [answer] * 10 for number in numbers})
    # Reconciliation waits out the carrier timeout: a short one, not the default 30 s.
    async with short_window(
        temporal, settings, send_concurrency=2, carrier_timeout_seconds=carrier_timeout
    ) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        paused = await paused_once(webhooks, marker, "carrier_unreachable")
        at_pause = [r["status"] for r in await ledger_rows(api, account, file_id)]

        await carrier(scripted={})
        resumed = await api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
        assert resumed.status_code == 200, resumed.text
        events = await webhooks.wait_for(marker, *FINAL)
        rows = await ledger_rows(api, account, file_id)

    assert set(paused["error_codes"]) == {code}
    # Two requests in flight an attempt, a few attempts in the retry window.
    assert 0 < at_pause.count("uncertain") <= 8
    assert at_pause.count("pending") == 20 - at_pause.count("uncertain")
    # The carrier kept none of them: each is found missing or sent after the resume, once.
    assert events[-1]["status"] == "completed"
    assert {r["status"] for r in rows} == {"sent"}
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert sorted(m["to"] for m in received) == sorted(numbers)


async def test_a_throttling_that_outlasts_its_back_off_gets_one_twice_as_long(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    """The batch paused for 2 s resumes into a carrier that still throttles every request:
    its next pause is for 4 s (each back-off the throttling outlasts, twice the last, up to
    an hour), and it sends once the throttling lifts."""
    [number] = unique_numbers(1)
    await carrier(scripted={number: [429] * 1000})
    async with short_window(temporal, settings, carrier_throttle_pause_seconds=2.0) as api:
        _, marker = await start_marked_batch(api, account, webhooks, [number])
        events = await webhooks.wait_for(marker, "paused", times=2)
        await carrier(scripted={})
        final = await webhooks.wait_for(marker, *FINAL)

    reasons = [e["reason"] for e in events if e["status"] == "paused"]
    assert [r.rsplit(" in ", 1)[1] for r in reasons] == ["2 s", "4 s"], reasons
    assert final[-1]["status"] == "completed"
