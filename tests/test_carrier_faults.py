"""Carrier faults on the real stack: 429s with Retry-After and 5xx at set rates, timeouts,
refused connections and carrier opt-outs. Each batch ends with every row in one terminal
state and no number sent twice."""

import asyncio
import json
from datetime import datetime

import httpx
import pytest
from temporalio.client import Client

from deploy.local.emulator import (
    MALFORMED,
    NO_ANSWER,
    NUL_REFUSAL,
    SERVER_ERROR_AFTER_ACCEPTING,
    Carrier,
    Faults,
    running,
)
from deploy.local.processes import free_port
from settings import Settings
from tests.support.batches import FINAL, run_batch, start_marked_batch
from tests.support.builders import csv_bytes, emulator_messages, unique_numbers
from tests.support.delivery import (
    assert_each_row_once,
    ledger_rows,
    own_worker,
    run_on_own_worker,
)
from tests.support.sending import OPTED_OUT_AT_CARRIER, conversation, eventually, send_ok
from tests.support.stack import AUTH_TOKEN, Account, Configure, WebhookReceiver, api_client
from tests.support.workers import CARRIER_TIMEOUT_SECONDS
from workflows.batch import BatchWorkflow
from workflows.contracts import ReconcileResult, batch_workflow_id


async def refused_by_code(emulator_url: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{emulator_url}/_emulator/stats")).json()["refused"]


async def test_a_throttled_message_waits_out_retry_after_and_is_sent_once(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    temporal: Client,
) -> None:
    numbers = unique_numbers(10)
    throttled = numbers[0]
    await carrier(retry_after_seconds=2, scripted={throttled: [429]})

    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    final = (await webhooks.wait_for(marker, *FINAL))[-1]
    handle = temporal.get_workflow_handle(batch_workflow_id(file_id))
    await handle.result()
    progress = await handle.query(BatchWorkflow.progress)

    received = await emulator_messages(emulator_url, body_contains=marker)
    rows = await ledger_rows(api, account, file_id)
    assert assert_each_row_once(rows, received, 10) == {"sent": 10}
    assert final["status"] == "completed"
    assert {r["to_number"]: r["attempts"] for r in rows} == {
        n: 2 if n == throttled else 1 for n in numbers
    }
    at = {m["to"]: datetime.fromisoformat(m["received_at"]) for m in received}
    waited = at[throttled] - max(t for n, t in at.items() if n != throttled)
    assert waited.total_seconds() >= 2
    # The slice's deferred attempt sent nine, the next one: the batch counts all ten.
    assert (progress.sent, progress.failed) == (10, 0)


@pytest.mark.parametrize(
    ("faults", "refusal_code"),
    [
        ({"rate_429": 0.25, "retry_after_seconds": 1}, "20429"),
        ({"rate_5xx": 0.25}, "20503"),
    ],
    ids=["429-with-retry-after", "5xx"],
)
async def test_refusals_at_a_set_rate_end_with_every_row_sent_once(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    faults: dict[str, float],
    refusal_code: str,
) -> None:
    before = (await refused_by_code(emulator_url)).get(refusal_code, 0)
    await carrier(**faults)

    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(60))
    final = (await webhooks.wait_for(marker, *FINAL))[-1]

    refused = (await refused_by_code(emulator_url)).get(refusal_code, 0) - before
    received = await emulator_messages(emulator_url, body_contains=marker)
    rows = await ledger_rows(api, account, file_id)
    assert assert_each_row_once(rows, received, 60) == {"sent": 60}
    assert (final["status"], final["messages_successful"]) == ("completed", 60)
    # About 15 refusals at this rate. A refused row is sent again by its slice's attempt
    # when the carrier takes it within the attempt, else by the next attempt (then its
    # `attempts` counts two): how many go each way depends on timing.
    retried = [r for r in rows if r["attempts"] > 1]
    assert refused >= 5
    assert refused >= len(retried)


async def test_an_account_limited_in_requests_in_flight_is_sent_to_within_its_limit(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # Twilio refuses an account's requests beyond its limit in flight (20429). A worker of its
    # own, whose lanes could keep 192 in flight, learns the limit of 20 (InFlightLimit)
    # instead of being refused about as often as it is answered.
    rows_count = 1500
    before = (await refused_by_code(emulator_url)).get("20429", 0)
    await carrier(latency_ms=50, max_in_flight=20)
    _, marker, events, rows = await run_on_own_worker(
        temporal, settings, account, webhooks, unique_numbers(rows_count)
    )
    final = events[-1]

    refused = (await refused_by_code(emulator_url)).get("20429", 0) - before
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert assert_each_row_once(rows, received, rows_count) == {"sent": rows_count}
    assert (final["status"], final["messages_successful"]) == ("completed", rows_count)
    assert 0 < refused < rows_count * 0.1


async def settled_messages(
    api: httpx.AsyncClient, account: Account, conversation_id: str
) -> list[dict]:
    """The conversation's messages, once none is `queued`, `sending` or `uncertain`."""
    detail = await eventually(
        lambda: conversation(api, account, conversation_id),
        lambda found: (
            bool(found["messages"])
            and all(
                m["status"] not in ("queued", "sending", "uncertain") for m in found["messages"]
            )
        ),
    )
    return detail["messages"]


async def reconciled(temporal: Client, file_id: str) -> ReconcileResult:
    """What the batch's reconciliation step returned, from its workflow history."""
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    completed = [
        e.activity_task_completed_event_attributes
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    [result] = [
        c.result for c in completed if scheduled[c.scheduled_event_id] == "reconcile_uncertain"
    ]
    return ReconcileResult(**json.loads(result.payloads[0].data))


async def test_sends_that_time_out_are_reconciled_with_the_carrier_never_sent_again(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # Answers take 0-1 s and the worker waits 0.5 s: about half the sends time out, and are
    # `uncertain` until reconciliation finds each on the carrier.
    await carrier(latency_jitter_ms=1000)
    file_id, marker, events, rows = await run_on_own_worker(
        temporal, settings, account, webhooks, unique_numbers(60), carrier_timeout_seconds=0.5
    )

    received = await emulator_messages(emulator_url, body_contains=marker)
    assert assert_each_row_once(rows, received, 60) == {"sent": 60}
    assert {r["to_number"]: r["carrier_sid"] for r in rows} == {m["to"]: m["sid"] for m in received}
    assert all(r["error_code"] is None and r["attempts"] == 1 for r in rows)
    final = events[-1]
    assert (final["status"], final["messages_successful"], final["messages_uncertain"]) == (
        "completed",
        60,
        0,
    )
    # The timed-out rows were `uncertain` until reconciliation settled them as `sent`.
    settled = await reconciled(temporal, file_id)
    assert 0 < settled.sent < 60 and settled.reopened == 0


async def test_a_request_the_carrier_never_got_is_found_missing_and_sent_again(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(10)
    lost = numbers[:3]
    # The first request to each of these gets no answer, and the carrier keeps nothing of it.
    await carrier(scripted={number: [NO_ANSWER] for number in lost})
    # A timeout well under the emulator's hold (NO_ANSWER_SECONDS), and long enough that no
    # connection to it times out on a loaded machine (a `connect` deferral is an attempt too).
    file_id, marker, events, rows = await run_on_own_worker(
        temporal, settings, account, webhooks, numbers, carrier_timeout_seconds=1.0
    )
    final = events[-1]

    received = await emulator_messages(emulator_url, body_contains=marker)
    assert assert_each_row_once(rows, received, 10) == {"sent": 10}
    assert sorted(m["to"] for m in received) == sorted(numbers)
    settled = await reconciled(temporal, file_id)
    assert (settled.sent, settled.reopened) == (0, 3)
    assert sorted(r["attempts"] for r in rows) == [1] * 7 + [2] * 3
    assert (final["status"], final["messages_successful"]) == ("completed", 10)


async def test_a_row_whose_send_after_reconciliation_is_lost_too_is_reconciled_again(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(4)
    # The first two requests to it get no answer and the carrier keeps neither.
    await carrier(scripted={numbers[0]: [NO_ANSWER, NO_ANSWER]})
    _, marker, events, rows = await run_on_own_worker(
        temporal, settings, account, webhooks, numbers, carrier_timeout_seconds=1.0
    )
    final = events[-1]

    received = await emulator_messages(emulator_url, body_contains=marker)
    assert assert_each_row_once(rows, received, 4) == {"sent": 4}
    assert sorted(r["attempts"] for r in rows) == [1, 1, 1, 3]
    assert (final["status"], final["messages_successful"], final["messages_uncertain"]) == (
        "completed",
        4,
        0,
    )


async def test_a_server_error_is_reconciled_with_the_carrier_never_sent_twice(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    """A 500 may come after the carrier created the message (Twilio's 20500): the row is
    `uncertain`, found on the carrier if it has it, sent again only if it has not."""
    numbers = unique_numbers(20)
    kept, refused = numbers[:2], numbers[2:4]
    await carrier(
        malformed={number: [SERVER_ERROR_AFTER_ACCEPTING] for number in kept},
        scripted={number: [500] for number in refused},
    )
    # Reconciliation waits out the carrier timeout: a short one, not the default 30 s.
    file_id, marker, events, rows = await run_on_own_worker(
        temporal,
        settings,
        account,
        webhooks,
        numbers,
        carrier_timeout_seconds=CARRIER_TIMEOUT_SECONDS,
    )
    final = events[-1]

    received = await emulator_messages(emulator_url, body_contains=marker)
    assert assert_each_row_once(rows, received, 20) == {"sent": 20}
    assert {r["to_number"]: r["carrier_sid"] for r in rows} == {m["to"]: m["sid"] for m in received}
    settled = await reconciled(temporal, file_id)
    assert (settled.sent, settled.reopened) == (2, 2)
    assert (final["status"], final["messages_successful"], final["messages_uncertain"]) == (
        "completed",
        20,
        0,
    )


async def test_a_carrier_that_refuses_connections_is_retried_until_it_answers(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    port = free_port()
    emulator = Carrier(auth_token=AUTH_TOKEN, faults=Faults())
    numbers = unique_numbers(20)
    async with (
        own_worker(temporal, settings, twilio_api_url=f"http://127.0.0.1:{port}") as own,
        api_client(own) as api,
    ):
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        async with asyncio.timeout(30):
            while True:
                refused_twice = await ledger_rows(api, account, file_id)
                if refused_twice and min(r["attempts"] for r in refused_twice) >= 2:
                    break
                await asyncio.sleep(0.2)
        async with running(emulator, "127.0.0.1", port):
            final = (await webhooks.wait_for(marker, *FINAL))[-1]
            rows = await ledger_rows(api, account, file_id)

    assert {r["status"] for r in refused_twice} <= {"pending", "sending"}
    received = [m.as_json() for m in emulator.received]
    assert assert_each_row_once(rows, received, 20) == {"sent": 20}
    assert final["status"] == "completed"
    assert all(r["attempts"] >= 2 for r in rows)


async def test_a_carrier_opt_out_fails_the_message_and_later_batches_skip_the_number(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    numbers = [OPTED_OUT_AT_CARRIER, *unique_numbers(2)]
    content = csv_bytes(["phone_number"], [[n] for n in numbers])

    first, first_events = await run_batch(api, account, webhooks, content, "first")
    second, second_events = await run_batch(api, account, webhooks, content, "second")

    first_rows = await ledger_rows(api, account, first)
    second_rows = await ledger_rows(api, account, second)
    assert first_events[-1]["status"] == second_events[-1]["status"] == "completed_partial"
    assert {r["to_number"]: (r["status"], r["error_code"]) for r in first_rows} == {
        OPTED_OUT_AT_CARRIER: ("failed", "21610"),
        numbers[1]: ("sent", None),
        numbers[2]: ("sent", None),
    }
    assert {r["to_number"]: (r["status"], r["error_code"]) for r in second_rows} == {
        OPTED_OUT_AT_CARRIER: ("skipped", "opted_out"),
        numbers[1]: ("sent", None),
        numbers[2]: ("sent", None),
    }
    assert second_rows[0]["attempts"] == 0
    listed = (await api.get("/v1/opt-outs", headers=account.headers)).json()["data"]["opt_outs"]
    assert [(o["number"], o["source"]) for o in listed] == [(OPTED_OUT_AT_CARRIER, "carrier")]


async def test_a_malformed_accepting_answer_is_that_rows_outcome_only(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # One slice; the carrier takes all 40, but answers four of them in ways nobody can read,
    # and refuses a 41st in words PostgreSQL cannot store.
    refused, *numbers = unique_numbers(41)
    spoiled = dict(zip(numbers[::10], MALFORMED, strict=True))
    await carrier(malformed={refused: [NUL_REFUSAL]} | {n: [kind] for n, kind in spoiled.items()})

    # Reconciliation waits out the carrier timeout: a short one, not the default 30 s.
    file_id, marker, events, rows = await run_on_own_worker(
        temporal,
        settings,
        account,
        webhooks,
        [refused, *numbers],
        carrier_timeout_seconds=CARRIER_TIMEOUT_SECONDS,
    )
    final = events[-1]

    received = await emulator_messages(emulator_url, body_contains=marker)
    by_number = {r["to_number"]: r for r in rows}
    assert by_number.pop(refused)["status"] == "failed"
    # The four unreadable answers made only their own rows `uncertain` (the other 36 were
    # recorded `sent` by their slice); reconciliation then found each on the carrier.
    assert assert_each_row_once(list(by_number.values()), received, 40) == {"sent": 40}
    assert {n: r["carrier_sid"] for n, r in by_number.items()} == {
        m["to"]: m["sid"] for m in received
    }
    settled = await reconciled(temporal, file_id)
    assert (settled.sent, settled.reopened) == (len(spoiled), 0)
    assert all(r["attempts"] == 1 for r in rows)
    assert (final["status"], final["messages_successful"], final["messages_uncertain"]) == (
        "completed_partial",
        40,
        0,
    )


async def test_an_uncertain_single_send_is_reconciled_with_the_carrier(
    temporal: Client,
    settings: Settings,
    account: Account,
    emulator_url: str,
    carrier: Configure,
) -> None:
    """A single send whose request got no answer: the carrier's list says whether it has the
    message (then it is `sent`, with its sid) or not (then it is sent again), never twice."""
    lost, slow = unique_numbers(2)
    # The first request to `lost` gets no answer, and the carrier keeps nothing of it.
    await carrier(scripted={lost: [NO_ANSWER]})
    # The carrier's list is read a margin after the request is given up, once the message
    # the carrier took 1 s to create is there: 0.5 s (the suite's) raced it under load.
    async with (
        own_worker(
            temporal, settings, carrier_timeout_seconds=0.5, reconcile_margin_seconds=2.0
        ) as own,
        api_client(own) as api,
    ):
        resent = await send_ok(api, account, lost, agent_message="hello")
        [resent_row] = await settled_messages(api, account, resent["conversation_id"])
        # Every answer now comes after the worker has given up on it; the carrier keeps it.
        await carrier(latency_ms=1000)
        found = await send_ok(api, account, slow, agent_message="hello")
        [found_row] = await settled_messages(api, account, found["conversation_id"])

    [to_lost] = await emulator_messages(emulator_url, to=lost)
    [to_slow] = await emulator_messages(emulator_url, to=slow)
    # `sent`, or already `delivered` by the carrier's receipt.
    assert {resent_row["status"], found_row["status"]} <= {"sent", "delivered"}
    assert (resent_row["carrier_sid"], found_row["carrier_sid"]) == (to_lost["sid"], to_slow["sid"])
    assert (resent_row["attempts"], found_row["attempts"]) == (2, 1)


@pytest.mark.parametrize(
    "content",
    [{}, {"content_sid": "HX" + "3c" * 16}],
    ids=["text", "content-template"],
)
async def test_a_single_send_answered_with_a_server_error_is_found_on_the_carrier(
    temporal: Client,
    settings: Settings,
    account: Account,
    emulator_url: str,
    carrier: Configure,
    content: dict[str, str],
) -> None:
    """Found in the carrier's list, once. A content template's message is listed with the
    template's text, not the Body sent with it: compared with that Body, it was never found,
    and the send went again (the user got it twice)."""
    user = unique_numbers(1)[0]
    await carrier(malformed={user: [SERVER_ERROR_AFTER_ACCEPTING]})
    async with (
        own_worker(temporal, settings, carrier_timeout_seconds=CARRIER_TIMEOUT_SECONDS) as own,
        api_client(own) as api,
    ):
        sent = await send_ok(api, account, user, agent_message="hello", **content)
        [row] = await settled_messages(api, account, sent["conversation_id"])

    [received] = await emulator_messages(emulator_url, to=user)
    assert row["status"] in ("sent", "delivered")
    assert (row["carrier_sid"], row["attempts"]) == (received["sid"], 1)
