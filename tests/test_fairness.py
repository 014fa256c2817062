"""Fairness between batches (docs/WORKFLOWS.md, Fairness between batches): every batch's
carrier requests go to the send queue, served by workers apart from the batches' own steps
(validation, events, chunk scheduling, the end), so sends backed up, however many, hold back
no other batch's steps; and a batch's short database steps (its events, the ledger's close)
run as local activities, inside its own workflow tasks, so a small batch takes fewer steps to
its end; and a batch whose rows fit one send slice, or a few, sends them from its own
workflow, without chunk workflows, to the same end as a chunked batch."""

import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from settings import Settings
from tests.support.batches import FINAL, phases, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import ledger_rows, own_worker
from tests.support.sending import eventually
from tests.support.stack import Account, Configure, WebhookReceiver, api_client
from worker import herald_worker
from workflows.contracts import batch_workflow_id


async def send_queues(temporal: Client, file_id: str) -> set[str]:
    """The task queues a batch that fits one slice scheduled its send activities on (from
    its own workflow: it has no chunk workflow)."""
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    return {
        e.activity_task_scheduled_event_attributes.task_queue.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "send_slice"
    }


async def test_sends_backed_up_hold_back_no_other_batchs_steps(
    temporal: Client,
    settings: Settings,
    account: Account,
    other_account: Account,
    webhooks: WebhookReceiver,
) -> None:
    async with own_worker(temporal, settings, worker_role="control") as own:
        async with api_client(own) as api:
            # No worker serves the send queue yet: A's sends wait there, all of them.
            first, first_marker = await start_marked_batch(
                api, account, webhooks, unique_numbers(6)
            )
            await webhooks.wait_for(first_marker, "in_progress")
            second, second_marker = await start_marked_batch(
                api, other_account, webhooks, unique_numbers(6)
            )
            # B validates, dispatches and schedules its sends meanwhile, on the control worker.
            await webhooks.wait_for(second_marker, "in_progress")
            waiting = await api.get(f"/v1/sms/batch/{first}", headers=account.headers)
            assert waiting.json()["data"]["counts"].get("sent", 0) == 0
            senders = own.model_copy(update={"worker_role": "send"})
            async with herald_worker(temporal, senders) as sending, sending:
                first_events = await webhooks.wait_for(first_marker, "completed")
                second_events = await webhooks.wait_for(second_marker, "completed")

    assert first_events[-1]["messages_successful"] == 6
    assert second_events[-1]["messages_successful"] == 6
    assert await send_queues(temporal, first) == {own.send_task_queue}
    assert await send_queues(temporal, second) == {own.send_task_queue}


async def activity_steps(temporal: Client, file_id: str) -> tuple[list[str], list[str]]:
    """The batch workflow's activities by type, in order: those scheduled on a task queue,
    and those it ran as local activities (recorded as markers)."""
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    local = [
        json.loads(e.marker_recorded_event_attributes.details["data"].payloads[0].data)[
            "activity_type"
        ]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    return scheduled, local


async def test_a_small_batch_runs_its_database_steps_within_its_workflow_tasks(
    api: httpx.AsyncClient,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
) -> None:
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(100))
    events = await webhooks.wait_for(marker, *FINAL)

    assert phases(events) == ["validating", "dispatching", "in_progress", "completed"]
    assert [e["status"] for e in events].count("completed") == 1
    assert events[-1]["messages_successful"] == 100
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == 100
    scheduled, local = await activity_steps(temporal, file_id)
    # Only validation, the one slice (on the send queue, from the batch itself), the webhook
    # posts and the two opening reports wait in a task queue; no reconciliation, since no
    # row is uncertain.
    assert set(scheduled) == {
        "validate_recipients",
        "send_slice",
        "deliver_status_events",
        "record_status",
    }
    assert scheduled.count("send_slice") == 1
    # `validating`, queued beside the validation so as not to hold its start back; then
    # `dispatching` and `in_progress`, queued so as not to hold the send's start back: the
    # slice is scheduled with the first, before the second.
    reports = [i for i, step in enumerate(scheduled) if step == "record_status"]
    assert len(reports) == 3
    assert reports[0] < scheduled.index("validate_recipients")
    assert reports[1] < scheduled.index("send_slice") < reports[2]
    assert local[-2:] == ["finish_ledger", "record_status"]
    # The progress events, recorded (in /logs) though not posted.
    logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    assert local[:-2].count("record_status") == len(logs["data"]["events"]) - 4
    assert "has_uncertain" in local


async def chunk_workflows(temporal: Client, file_id: str) -> list[str]:
    """The child workflows the batch started, by id."""
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]


# The same rows run in the batch's own workflow, then as chunk workflows: as one slice
# (`batch-one-slice-inline`), then as slices of 2 in a chunk; in seven slices of 2 in four
# chunks of 4, three at once (`batch-slices-inline`), then with `inline_slices` one short.
SIDE_BY_SIDE = pytest.mark.parametrize(
    ("rows", "inline", "chunked", "chunks", "sending"),
    [
        (9, {"slice_size": 9}, {"slice_size": 2}, 1, "in_progress"),
        (
            13,
            {"chunk_size": 4, "slice_size": 2, "chunk_window": 3, "inline_slices": 7},
            {"chunk_size": 4, "slice_size": 2, "chunk_window": 3, "inline_slices": 6},
            4,
            "in_progress_chunked",
        ),
    ],
    ids=["one-slice", "few-slices"],
)


async def batch_end(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    numbers: list[str],
) -> dict[str, Any]:
    """A batch of `numbers` on `settings`, run to its end: its phases, final counts, ledger,
    the carrier's requests and its chunk workflows."""
    async with api_client(settings) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        events = await webhooks.wait_for(marker, *FINAL)
        rows = await ledger_rows(api, account, file_id)
    final = events[-1]
    return {
        "phases": phases(events),
        "final": {k: v for k, v in final.items() if k.startswith("messages_")},
        "rows": sorted((r["to_number"], r["status"], r["error_code"]) for r in rows),
        "carrier": sorted(
            m["to"] for m in await emulator_messages(emulator_url, body_contains=marker)
        ),
        "chunks": [c.rsplit("/", 1)[1] for c in await chunk_workflows(temporal, file_id)],
    }


@SIDE_BY_SIDE
async def test_a_batch_of_a_few_slices_sends_without_chunks_to_the_chunked_end(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    rows: int,
    inline: dict[str, int],
    chunked: dict[str, int],
    chunks: int,
    sending: str,
) -> None:
    # Two the carrier refuses (21211, 21614), so that the ends have failures to compare.
    numbers = [*unique_numbers(rows - 2), "+15005550001", "+15005550009"]
    ends = [
        await batch_end(
            settings.model_copy(update=dispatch), temporal, account, webhooks, emulator_url, numbers
        )
        for dispatch in (inline, chunked)
    ]
    in_batch, as_chunks = [{k: v for k, v in end.items() if k != "chunks"} for end in ends]

    assert ends[0]["chunks"] == []
    assert ends[1]["chunks"] == [f"chunk-{index}" for index in range(chunks)]
    assert in_batch == as_chunks
    assert in_batch["phases"] == ["validating", "dispatching", sending, "completed_partial"]
    assert [r[1] for r in in_batch["rows"]].count("failed") == 2
    sent = [r[0] for r in in_batch["rows"] if r[1] == "sent"]
    assert sorted(sent) == sorted(numbers[:-2])
    assert set(sent) <= set(in_batch["carrier"])


async def test_a_one_slice_batch_pauses_itself_on_its_carrier_error_rate(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    # 600 rows in one slice of 1,000, 400 of them refused (21612): over the batch's default
    # error rate. The rate is checked as a slice ends, so the one slice has sent every row
    # by then: the batch pauses, with the event, and ends with nothing left to resume.
    numbers = unique_numbers(600)
    await carrier(scripted={number: [400] for number in numbers[:400]})
    async with api_client(settings.model_copy(update={"slice_size": 1000})) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        events = await webhooks.wait_for(marker, *FINAL)
        rows = await ledger_rows(api, account, file_id)

    assert await chunk_workflows(temporal, file_id) == []
    assert phases(events) == [
        "validating",
        "dispatching",
        "in_progress",
        "paused",
        "completed_partial",
    ]
    paused = events[-2]
    assert (paused["code"], set(paused["error_codes"])) == ("carrier_error_rate", {"21612"})
    final = events[-1]
    assert (final["messages_failed"], final["messages_successful"]) == (400, 200)
    assert sorted(r["status"] for r in rows).count("failed") == 400


async def test_a_one_slice_batch_paused_by_the_carrier_resumes_or_cancels(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    # The carrier throttles every request (20429) past the worker's retry window: the one
    # slice stops with its rows `pending`, and both batches of the account pause, with a
    # back-off far longer than the test, so that only an operator resumes or cancels them.
    # It throttles until it is told to stop, however many tries the slice makes by then.
    resumed_numbers, cancelled_numbers = unique_numbers(5), unique_numbers(5)
    await carrier(
        scripted={number: [429] * 100 for number in [*resumed_numbers, *cancelled_numbers]}
    )
    async with (
        own_worker(
            temporal,
            settings,
            carrier_outage_seconds=1.0,
            carrier_throttle_pause_seconds=3600.0,
        ) as own,
        api_client(own) as api,
    ):
        resumed, resumed_marker = await start_marked_batch(api, account, webhooks, resumed_numbers)
        cancelled, cancelled_marker = await start_marked_batch(
            api, account, webhooks, cancelled_numbers
        )
        for marker in (resumed_marker, cancelled_marker):
            events = await webhooks.wait_for(marker, "paused")
            assert events[-1]["code"] == "carrier_throttled", events[-1]
        for file_id in (resumed, cancelled):
            # A batch paused by the other's signal records `paused` while its slice, cancelled,
            # still records its rows: they are back `pending` once it has.
            await eventually(
                functools.partial(ledger_rows, api, account, file_id),
                lambda rows: {r["status"] for r in rows} == {"pending"},
            )

        await carrier(scripted={})
        resume = await api.post(f"/v1/sms/batch/{resumed}/resume", headers=account.headers)
        cancel = await api.post(f"/v1/sms/batch/{cancelled}/cancel", headers=account.headers)
        assert (resume.status_code, cancel.status_code) == (200, 200), (resume.text, cancel.text)
        resumed_events = await webhooks.wait_for(resumed_marker, *FINAL)
        cancelled_events = await webhooks.wait_for(cancelled_marker, *FINAL)
        resumed_rows = await ledger_rows(api, account, resumed)
        cancelled_rows = await ledger_rows(api, account, cancelled)

    assert await chunk_workflows(temporal, resumed) == []
    assert await chunk_workflows(temporal, cancelled) == []
    assert resumed_events[-1]["status"] == "completed"
    assert phases(resumed_events).count("paused") == 1
    assert {r["status"] for r in resumed_rows} == {"sent"}
    assert cancelled_events[-1]["status"] == "cancelled"
    assert {r["status"] for r in cancelled_rows} == {"cancelled"}


async def test_a_one_slice_batch_not_spread_expires_what_it_has_not_sent_by_expire_at(
    api: httpx.AsyncClient,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # 200 rows in one slice of 250, sent at once (not spread), 96 requests in flight: with
    # the carrier taking 2 s a request, the last rows are still to send at `expire_at`.
    await carrier(latency_ms=2000)
    expire_at = datetime.now(UTC) + timedelta(seconds=3)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(200), expire_at=expire_at.isoformat()
    )
    events = await webhooks.wait_for(marker, *FINAL)
    rows = await ledger_rows(api, account, file_id)
    sent = await emulator_messages(emulator_url, body_contains=marker)

    assert await chunk_workflows(temporal, file_id) == []
    final = events[-1]
    assert final["status"] == "completed_partial"
    assert final["messages_expired"] >= 1
    assert final["messages_successful"] == len(sent)
    assert final["messages_successful"] + final["messages_expired"] == 200
    statuses = [r["status"] for r in rows]
    assert statuses.count("expired") == final["messages_expired"]
    assert set(statuses) <= {"sent", "expired"}
