"""The batch pipeline end to end on the real stack: file in, every message out once."""

import asyncio
import secrets
from typing import Any

import httpx
from temporalio import client
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from settings import Settings
from tests.support.batches import FINAL, phases, start, start_marked_batch
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.sending import eventually
from tests.support.stack import Account, WebhookReceiver, api_client


async def test_ten_thousand_personalised_rows_are_each_sent_once(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    run = secrets.token_hex(6)
    numbers = unique_numbers(10_000)
    names = {number: f"Name{i}" for i, number in enumerate(numbers)}
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number", "first_name"], list(names.items()))
    )

    response = await start(
        api,
        account,
        file_id,
        status_webhook=webhooks.url(run),
        name="ten thousand",
        **{
            "global": {
                "agent_number": account.agent_number,
                "agent_message": "Hi {{ first_name }} [" + run + "]",
                "metadata": {"run": run},
            }
        },
    )

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data == {
        "message": "SMS batch processing initiated via Temporal workflow",
        "batch_id": file_id,
        "workflow_id": f"sms-batch-{file_id}",
    }
    events = await webhooks.wait_for(run, *FINAL)
    # One POST per phase, as Bland's contract posts them: no progress event among them.
    assert [e["status"] for e in events] == [
        "validating",
        "dispatching",
        "in_progress_chunked",
        "completed",
    ]
    final = events[-1]
    assert final["messages_total"] == 10_000
    assert final["messages_successful"] == 10_000
    assert final["messages_failed"] == final["messages_skipped"] == 0
    assert all(e["metadata"] == {"run": run} for e in events)
    assert all(e["batch_id"] == file_id and e["workflow_id"] == data["workflow_id"] for e in events)

    received = await emulator_messages(emulator_url, body_contains=run)
    assert len(received) == 10_000
    assert sorted(m["to"] for m in received) == numbers
    assert all(m["body"] == f"Hi {names[m['to']]} [{run}]" for m in received)
    assert {m["from"] for m in received} == {account.agent_number}

    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    assert batch["status"] == "completed"
    assert batch["counts"] == {"sent": 10_000, "rejected": 0}
    assert batch["rows_total"] == 10_000
    assert batch["temporal_ui_url"].endswith(f"/workflows/sms-batch-{file_id}")

    logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    recorded = [e["payload"] for e in logs["data"]["events"]]
    # The progress events (ten chunks of the test stack's 1,000 rows) are recorded all the same.
    progress = [p for p in recorded if p not in events]
    assert [p for p in recorded if p in events] == events
    assert progress
    assert all(p["status"] == "in_progress_chunked" for p in progress)
    assert all(p["message"].startswith("Requested: 10000. Validated: 10000.") for p in progress)


async def test_progress_events_are_posted_too_when_the_request_asks(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(5_000), status_webhook_progress=True
    )

    events = await webhooks.wait_for(marker, *FINAL)

    assert phases(events) == ["validating", "dispatching", "in_progress_chunked", "completed"]
    assert len(events) > len(phases(events))
    logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    assert [e["payload"] for e in logs["data"]["events"]] == events


async def marked_request(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, numbers: list[str]
) -> tuple[str, str, dict[str, Any]]:
    """A file of `numbers` attached, a fresh marker, and a batch request for the file whose
    webhook path and message name the marker."""
    marker = secrets.token_hex(6)
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in numbers])
    )
    body = {
        "status_webhook": webhooks.url(marker),
        "global": {"agent_number": account.agent_number, "agent_message": f"once {marker}"},
    }
    return file_id, marker, body


async def test_the_request_repeated_once_temporal_forgot_its_run_starts_nothing(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal: Client,
) -> None:
    numbers = unique_numbers(3)
    file_id, marker, body = await marked_request(api, account, webhooks, numbers)
    assert (await start(api, account, file_id, **body)).status_code == 200
    await webhooks.wait_for(marker, *FINAL)
    handle = temporal.get_workflow_handle(f"sms-batch-{file_id}")
    # As the namespace's retention ends a closed run's history.
    await temporal.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=temporal.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id),
        )
    )
    await eventually(lambda: _forgotten(handle), bool)

    repeated = await start(api, account, file_id, **body)
    await asyncio.sleep(1)

    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["data"]["batch_id"] == file_id
    assert await _forgotten(handle)
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == len(numbers)


async def _forgotten(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        await handle.describe()
    except RPCError as error:
        return error.status == RPCStatusCode.NOT_FOUND
    return False


async def test_repeating_the_request_returns_the_same_batch_and_sends_once(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    numbers = unique_numbers(5)
    file_id, run, body = await marked_request(api, account, webhooks, numbers)

    first = await start(api, account, file_id, **body)
    second = await start(api, account, file_id, **body)
    await webhooks.wait_for(run, *FINAL)
    third = await start(api, account, file_id, **body)
    # The same file's id in capitals: the same request.
    spelled = await start(api, account, file_id.upper(), **body)
    changed = await start(
        api, account, file_id, **{**body, "global": {**body["global"], "agent_message": "x"}}
    )

    assert first.status_code == second.status_code == third.status_code == 200
    assert first.json() == second.json() == third.json()
    assert spelled.status_code == 200, spelled.text
    assert spelled.json() == first.json()
    assert changed.status_code == 409
    assert changed.json()["errors"][0]["error"] == "BATCH_ALREADY_EXISTS"
    assert len(await emulator_messages(emulator_url, body_contains=run)) == 5


async def test_continue_as_new_keeps_every_run_history_bounded(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
) -> None:
    small = settings.model_copy(
        update={"chunk_size": 40, "slice_size": 20, "chunk_window": 2, "chunks_per_run": 3}
    )
    async with api_client(small) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(400))
        events = await webhooks.wait_for(marker, *FINAL)

    assert events[-1]["status"] == "completed"
    assert len(await emulator_messages(emulator_url, body_contains=marker)) == 400
    workflow_id = f"sms-batch-{file_id}"

    async def listed(query: str) -> list[client.WorkflowExecution]:
        return [r async for r in temporal.list_workflows(query)]

    # Temporal's visibility store lists a run a moment after it starts or closes.
    runs = await eventually(
        lambda: listed(f'WorkflowId = "{workflow_id}"'),
        lambda listing: len(listing) >= 4,  # 10 chunks, 3 per run
    )
    for execution in runs:
        handle = temporal.get_workflow_handle(workflow_id, run_id=execution.run_id)
        history = await handle.fetch_history()
        assert len(history.events) < 250
    chunks = await eventually(
        lambda: listed(f'WorkflowId STARTS_WITH "{workflow_id}/chunk-"'),
        lambda listing: len({r.id for r in listing}) >= 10,
    )
    assert len({r.id for r in chunks}) == 10


async def test_a_large_batch_is_sent_in_five_rounds_of_the_windows_chunks(
    settings: Settings,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
) -> None:
    # 400 rows in slices of 20, over `inline_slices`: five rounds of a window of two chunks
    # are 10 chunks of 40 rows, where `chunk_size` (20) made 20 chunks (`batch-balanced-chunks`).
    large = settings.model_copy(
        update={"chunk_size": 20, "slice_size": 20, "chunk_window": 2, "inline_slices": 2}
    )
    numbers = unique_numbers(400)
    async with api_client(large) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        events = await webhooks.wait_for(marker, *FINAL)

    assert events[-1]["status"] == "completed"
    assert events[-1]["messages_successful"] == 400
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert sorted(m["to"] for m in received) == sorted(numbers)
    workflow_id = f"sms-batch-{file_id}"
    expected = sorted(f"{workflow_id}/chunk-{index}" for index in range(10))

    async def chunks() -> list[str]:
        query = f'WorkflowId STARTS_WITH "{workflow_id}/chunk-"'
        return sorted([r.id async for r in temporal.list_workflows(query)])

    # Temporal's visibility store lists a run a moment after it starts.
    assert await eventually(chunks, lambda ids: len(ids) >= len(expected)) == expected
