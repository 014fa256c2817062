"""Operators steer batches: cancel (API, `temporal` CLI signal, Temporal cancellation),
pause and resume, retry of failed rows, search attributes, and the live event stream."""

import asyncio
import base64
import json
import secrets
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import httpx
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.services import batch_events
from api.services import batches as batch_service
from deploy.local.temporal import TEMPORAL_BIN
from settings import Settings
from store import accounts, events, messages
from store.accounts import create_api_key, revoke_api_key
from tests.support.batches import (
    FINAL,
    phases,
    recorded_batch,
    start,
    start_marked_batch,
    wait_for_status,
    waiting_batch,
)
from tests.support.builders import attach, csv_bytes, slow_to_validate, unique_numbers
from tests.support.delivery import (
    assert_each_row_once,
    ledger_rows,
    own_worker,
    received,
    wait_until_received,
)
from tests.support.sending import eventually, served_api
from tests.support.stack import Account, Configure, WebhookReceiver, api_client, error_code
from tests.support.workers import CARRIER_TIMEOUT_SECONDS
from workflows.contracts import BatchProgress, batch_workflow_id
from workflows.statuses import LedgerStatus

# With this latency the session's worker sends a few hundred messages a second: a batch of
# RECIPIENTS runs long enough to be steered in the middle.
SLOW_CARRIER_MS = 1000
RECIPIENTS = 4000


@pytest.fixture(params=[1, 16], ids=["chunks", "inline"])
async def steered_api(
    request: pytest.FixtureRequest, settings: Settings, worker: None
) -> AsyncIterator[httpx.AsyncClient]:
    """The API, its batch of RECIPIENTS sent in four chunk workflows of four slices (of 250),
    or its 16 slices run in the batch's own workflow (patch `batch-slices-inline`): both are
    steered the same way."""
    async with api_client(settings.model_copy(update={"inline_slices": request.param})) as api:
        yield api


async def ledger_counts(api: httpx.AsyncClient, account: Account, file_id: str) -> dict[str, int]:
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    return batch["counts"]


async def temporal_cli(temporal_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `temporal` CLI, without blocking the loop the session's worker runs on."""
    process = await asyncio.create_subprocess_exec(
        str(TEMPORAL_BIN),
        *args,
        "--address",
        temporal_address,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    return subprocess.CompletedProcess(
        args, process.returncode or 0, stdout.decode(), stderr.decode()
    )


async def assert_cancelled_cleanly(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    file_id: str,
    marker: str,
    cancelled_at: float,
) -> dict[str, Any]:
    """The batch ends `cancelled` soon after the cancel; nothing is sent after its final
    event; every row is accounted for once. Returns the final event."""
    events = await webhooks.wait_for(marker, *FINAL)
    ended_after = time.monotonic() - cancelled_at
    at_end = await received(emulator_url, marker)
    await asyncio.sleep(1.5)
    later = await received(emulator_url, marker)
    counts = await ledger_counts(api, account, file_id)

    final = events[-1]
    assert final["status"] == "cancelled"
    assert ended_after < 10
    assert len(later) == len(at_end)
    assert max(Counter(m["to"] for m in later).values()) == 1
    assert counts.get("sent", 0) == len(later) == final["messages_successful"]
    assert counts.get("cancelled", 0) == final["messages_cancelled"] > 0
    assert sum(v for k, v in counts.items() if k != "rejected") == RECIPIENTS
    assert set(counts) <= {"sent", "cancelled", "uncertain", "rejected"}
    return final


async def test_cancel_through_the_api_stops_sends_and_accounts_for_every_row(
    steered_api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    api = steered_api
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(RECIPIENTS))
    await wait_until_received(emulator_url, marker, 200)

    response = await api.post(
        f"/v1/sms/batch/{file_id}/cancel", headers=account.headers, json={"reason": "wrong list"}
    )
    cancelled_at = time.monotonic()

    assert response.status_code == 200, response.text
    assert response.json()["data"]["action"] == "cancel"
    final = await assert_cancelled_cleanly(
        api, account, webhooks, emulator_url, file_id, marker, cancelled_at
    )
    assert (final["code"], final["reason"]) == ("cancelled", "wrong list")
    again = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)
    assert again.status_code == 409
    assert again.json()["errors"][0]["error"] == "BATCH_ALREADY_FINISHED"


async def test_cancel_signal_from_the_temporal_cli(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal_address: str,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(RECIPIENTS))
    await wait_until_received(emulator_url, marker, 200)
    query = await temporal_cli(
        temporal_address,
        "workflow",
        "query",
        "--workflow-id",
        f"sms-batch-{file_id}",
        "--type",
        "progress",
        "--output",
        "json",
    )

    cli = await temporal_cli(
        temporal_address,
        "workflow",
        "signal",
        "--workflow-id",
        f"sms-batch-{file_id}",
        "--name",
        "cancel",
        "--input",
        '"operator said stop"',
    )
    cancelled_at = time.monotonic()

    assert cli.returncode == 0, cli.stderr
    assert query.returncode == 0, query.stderr
    progress = json.loads(query.stdout)["queryResult"][0]
    assert (progress["status"], progress["recipients"]) == ("in_progress_chunked", RECIPIENTS)
    final = await assert_cancelled_cleanly(
        api, account, webhooks, emulator_url, file_id, marker, cancelled_at
    )
    assert final["reason"] == "operator said stop"


async def test_temporal_cancellation_ends_like_the_cancel_signal(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal_address: str,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(RECIPIENTS))
    await wait_until_received(emulator_url, marker, 200)

    cli = await temporal_cli(
        temporal_address, "workflow", "cancel", "--workflow-id", f"sms-batch-{file_id}"
    )
    cancelled_at = time.monotonic()

    assert cli.returncode == 0, cli.stderr
    final = await assert_cancelled_cleanly(
        api, account, webhooks, emulator_url, file_id, marker, cancelled_at
    )
    assert final["reason"] == "cancelled through Temporal"


async def test_a_cancel_during_validation_stops_the_validation(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    rows = 200_000
    file_id = await attach(api, account.headers, slow_to_validate(rows))
    marker = f"validation-{file_id}"
    response = await start(api, account, file_id, status_webhook=webhooks.url(marker))
    assert response.status_code == 200, response.text
    await webhooks.wait_for(marker, "validating")

    cancelled = await api.post(
        f"/v1/sms/batch/{file_id}/cancel", headers=account.headers, json={"reason": "wrong file"}
    )

    assert cancelled.status_code == 200, cancelled.text
    events = await webhooks.wait_for(marker, *FINAL)
    final = events[-1]
    assert (final["status"], final["reason"]) == ("cancelled", "wrong file")
    assert "dispatching" not in phases(events)
    # The validation was cut short: its activity was cancelled, its ledger rolled back.
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    assert any(e.HasField("activity_task_canceled_event_attributes") for e in history.events)
    counts = await ledger_counts(api, account, file_id)
    assert sum(counts.values()) < rows


async def test_a_resume_of_a_paused_batch_being_cancelled_is_ignored(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    # The resume went through while the validation was being cut short: `validating` was
    # recorded between `paused` and `cancelled`, and the batch showed it meanwhile.
    file_id = await attach(api, account.headers, slow_to_validate(200_000))
    marker = f"validation-{file_id}"
    response = await start(api, account, file_id, status_webhook=webhooks.url(marker))
    assert response.status_code == 200, response.text
    await webhooks.wait_for(marker, "validating")
    paused = await api.post(f"/v1/sms/batch/{file_id}/pause", headers=account.headers)
    await webhooks.wait_for(marker, "paused")

    cancelled = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)
    resumed = await api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL)

    assert [r.status_code for r in (paused, cancelled, resumed)] == [200] * 3, resumed.text
    assert phases(events) == ["validating", "paused", "cancelled"]


async def test_a_batch_paused_before_it_sends_records_each_phase_it_reached_on_resume(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """Paused while it waits for `schedule_at`, a batch goes on to `dispatching` and
    `in_progress` once it passes, its chunks paused: the resume records both, in order,
    `dispatching` with its counts, not only the last phase reached."""
    # Far enough ahead that the upload, the validation and the pause come first, on a loaded
    # machine too.
    at = datetime.now(UTC) + timedelta(seconds=8)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(3), schedule_at=at.isoformat()
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    paused = await api.post(f"/v1/sms/batch/{file_id}/pause", headers=account.headers)
    await webhooks.wait_for(marker, "paused")
    handle = temporal.get_workflow_handle(batch_workflow_id(file_id))
    await eventually(
        lambda: handle.query("progress", result_type=BatchProgress),
        lambda progress: progress.chunks_total > 0,
    )

    resumed = await api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL)

    assert paused.status_code == resumed.status_code == 200, (paused.text, resumed.text)
    assert phases(events) == [
        "validating",
        "waiting_for_scheduled_messages",
        "paused",
        "dispatching",
        "in_progress",
        "completed",
    ]
    [dispatching] = [e for e in events if e["status"] == "dispatching"]
    assert dispatching["message"].startswith("Requested: 3. Validated: 3."), dispatching


async def test_pause_holds_every_send_until_resume(
    steered_api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    api = steered_api
    await carrier(latency_ms=SLOW_CARRIER_MS)
    numbers = unique_numbers(RECIPIENTS)
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await wait_until_received(emulator_url, marker, 200)

    paused = await api.post(f"/v1/sms/batch/{file_id}/pause", headers=account.headers)
    await webhooks.wait_for(marker, "paused")
    # `paused` is recorded once the slices are asked to stop: their requests on the wire land,
    # then each slice records them (no row `sending`), and no more leave.
    await eventually(
        lambda: ledger_counts(api, account, file_id), lambda counts: not counts.get("sending")
    )
    held = len(await received(emulator_url, marker))
    await asyncio.sleep(2)
    still_held = len(await received(emulator_url, marker))
    status = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()
    await carrier(latency_ms=0)
    resumed = await api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL)

    assert paused.status_code == resumed.status_code == 200
    assert held == still_held < RECIPIENTS
    assert status["data"]["status"] == "paused"
    assert phases(events)[-3:] == ["paused", "in_progress_chunked", "completed"]
    sent = await received(emulator_url, marker)
    assert sorted(m["to"] for m in sent) == numbers
    assert (await ledger_counts(api, account, file_id)) == {"sent": RECIPIENTS, "rejected": 0}


async def test_retry_sends_the_failed_rows_again_and_nothing_else(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(20)
    refused = numbers[:3]
    await carrier(scripted={number: [400] for number in refused})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    first = (await webhooks.wait_for(marker, *FINAL))[-1]
    nothing = await api.post(
        f"/v1/sms/batch/{file_id}/retry", headers=account.headers, json={"statuses": ["uncertain"]}
    )

    retry = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    running = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL, times=2)

    assert (first["status"], first["messages_failed"]) == ("completed_partial", 3)
    assert nothing.status_code == 409
    assert nothing.json()["errors"][0]["error"] == "NOTHING_TO_RETRY"
    assert retry.status_code == 200, retry.text
    assert retry.json()["data"]["rows"] == 3
    assert running.status_code == 409
    assert running.json()["errors"][0]["error"] == "BATCH_NOT_FINISHED"
    final = events[-1]
    assert (final["status"], final["messages_successful"]) == ("completed", 20)
    sent = Counter(m["to"] for m in await received(emulator_url, marker))
    assert sent == Counter(numbers)
    rows = (await api.get(f"/v1/sms/batch/{file_id}/messages", headers=account.headers)).json()[
        "data"
    ]["messages"]
    assert {m["to_number"]: m["attempts"] for m in rows} == {
        n: 2 if n in refused else 1 for n in numbers
    }
    logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    seqs = [e["seq"] for e in logs["data"]["events"]]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_retry_that_finds_a_run_still_open_leaves_the_batch_as_it_was(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_service, "FINAL_CLOSE_SECONDS", 0.2)
    file_id = await waiting_batch(api, account, webhooks, unique_numbers(2))
    # As a batch whose final event is recorded while its run is still open (posting it).
    finished = datetime.now(UTC) - timedelta(minutes=5)
    await pool.execute(
        "UPDATE batches SET status = 'completed_partial', code = 'x', finished_at = $2"
        " WHERE id = $1",
        uuid.UUID(file_id),
        finished,
    )
    await pool.execute(
        "UPDATE messages SET status = 'failed' WHERE batch_id = $1", uuid.UUID(file_id)
    )

    retried = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    row = await pool.fetchrow(
        "SELECT status, code, finished_at FROM batches WHERE id = $1", uuid.UUID(file_id)
    )
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).terminate()

    assert (retried.status_code, error_code(retried)) == (409, "BATCH_NOT_FINISHED")
    # Not `queued`, which nothing would have moved on from: retried again once the run ends.
    assert dict(row) == {"status": "completed_partial", "code": "x", "finished_at": finished}


async def test_a_batch_left_queued_by_a_retry_that_never_started_may_be_retried(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
    pool: asyncpg.Pool,
    temporal: Client,
) -> None:
    numbers = unique_numbers(3)
    await carrier(scripted={numbers[0]: [400]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await webhooks.wait_for(marker, *FINAL)
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).result()
    # As a retry leaves it when its API process stops between marking the batch `queued`
    # and starting the new run: nothing else would move it on.
    await pool.execute("UPDATE batches SET status = 'queued' WHERE id = $1", uuid.UUID(file_id))

    retried = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL, times=2)

    assert retried.status_code == 200, retried.text
    assert (events[-1]["status"], events[-1]["messages_successful"]) == ("completed", 3)


async def test_search_attributes_find_the_finished_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal_address: str,
) -> None:
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(5))
    await webhooks.wait_for(marker, *FINAL)

    # Temporal's visibility store takes the search attributes a moment after the workflow.
    cli = await eventually(
        lambda: temporal_cli(
            temporal_address,
            "workflow",
            "list",
            "--query",
            f'BatchStatus="completed" AND AccountId="{account.account_id}"',
            "--output",
            "json",
        ),
        lambda done: done.returncode != 0 or bool(json.loads(done.stdout or "[]")),
    )

    assert cli.returncode == 0, cli.stderr
    listed = json.loads(cli.stdout)
    assert [w["execution"]["workflowId"] for w in listed] == [f"sms-batch-{file_id}"]
    [workflow] = listed
    attributes = {
        name: json.loads(base64.b64decode(field["data"]))
        for name, field in workflow["searchAttributes"]["indexedFields"].items()
    }
    assert attributes | {"BuildIds": None} == {
        "BuildIds": None,  # the server's own
        # The server's too: the patches the run took (docs/WORKFLOWS.md); five rows fit one
        # slice, so the chunk's own patch is the batch's too.
        "TemporalChangeVersion": [
            "batch-cancel-validation",
            "batch-local-db-steps",
            "batch-one-slice-inline",
            "batch-opening-reports-queued",
            "batch-reconcile-uncertain",
            "batch-report-while-starting",
            "batch-validating-report-queued",
            "chunk-send-task-queue",
        ],
        "BatchStatus": "completed",
        "BatchId": file_id,
        "AccountId": str(account.account_id),
        "AgentNumber": account.agent_number,
        "RecipientCount": 5,
    }


async def test_event_stream_carries_progress_and_ends_with_the_final_event(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=300)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(3000))

    response = await api.get(f"/v1/sms/batch/{file_id}/events", headers=account.headers)

    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    parsed = [
        (lines[0].removeprefix("event: "), json.loads(lines[-1].removeprefix("data: ")))
        for lines in (b.split("\n") for b in blocks)
    ]
    statuses = [data["status"] for kind, data in parsed if kind == "status"]
    progress = [data for kind, data in parsed if kind == "progress"]
    # The stream has every recorded event; the webhook, one per phase.
    recorded = phases([data for kind, data in parsed if kind == "status"])
    assert recorded == [e["status"] for e in await webhooks.wait_for(marker, *FINAL)]
    assert statuses[-1] == "completed"
    sending = [p for p in progress if p["status"] == "in_progress_chunked"]
    assert sending and all(p["recipients"] == 3000 for p in sending)
    assert sending[-1]["sent"] >= sending[0]["sent"]
    resumed = await api.get(
        f"/v1/sms/batch/{file_id}/events",
        headers={**account.headers, "last-event-id": str(len(statuses) - 1)},
    )
    assert resumed.text.count("event: status") == 1


async def test_the_event_stream_of_a_batch_retried_runs_on_to_the_retrys_final_event(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(6)
    await carrier(scripted={numbers[0]: [400]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await webhooks.wait_for(marker, *FINAL)
    retried = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)

    # Opened at once: the retry's run has recorded no event yet, the newest is the first
    # run's final one.
    async with asyncio.timeout(60):
        stream = await api.get(f"/v1/sms/batch/{file_id}/events", headers=account.headers)

    assert retried.status_code == 200, retried.text
    statuses = [
        json.loads(block.split("data: ", 1)[1])["status"]
        for block in stream.text.split("\n\n")
        if block.startswith("event: status")
    ]
    assert [s for s in statuses if s in FINAL] == ["completed_partial", "completed"]
    assert statuses[-1] == "completed"


async def test_an_event_stream_ends_once_the_key_that_opened_it_is_revoked(
    settings: Settings,
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
) -> None:
    # Waiting an hour for its time: its stream would not end by itself meanwhile.
    file_id = await waiting_batch(api, account, webhooks, unique_numbers(2))
    key = await create_api_key(pool, account.account_id)

    # Over a real port: the in-process transport reads a response whole before it returns.
    async with (
        served_api(settings) as served,
        httpx.AsyncClient(base_url=served.api_url) as http,
        asyncio.timeout(10),
        http.stream(
            "GET", f"/v1/sms/batch/{file_id}/events", headers={"authorization": key.key}
        ) as stream,
    ):
        chunks = stream.aiter_text()
        first = await anext(chunks)
        await revoke_api_key(pool, key.key_id)
        rest = [chunk async for chunk in chunks]
    cancelled = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert stream.status_code == 200
    assert "waiting_for_scheduled_messages" in first + "".join(rest)
    assert cancelled.status_code == 200


class _QueriesUnanswered:
    """The real Temporal client, but no workflow answers a query (no worker running)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get_workflow_handle(self, *args: Any, **kwargs: Any) -> Any:
        return _HandleUnqueried(self._client.get_workflow_handle(*args, **kwargs))


class _HandleUnqueried:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def query(self, *_: Any, **__: Any) -> Any:
        raise RPCError("no worker answers the query", RPCStatusCode.UNAVAILABLE, b"")


async def test_an_event_stream_with_nothing_to_say_keeps_its_connection_alive(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No new event, and no progress (no worker answers the query): a comment now and then,
    so that a client's read timeout (the CLI's, a proxy's) does not take the stream for dead."""
    monkeypatch.setattr(batch_events, "KEEP_ALIVE_SECONDS", 0.5)
    file_id = await waiting_batch(api, account, webhooks, unique_numbers(1))
    grant = await accounts.grant_for_key(pool, account.key)
    assert grant is not None
    # After its events so far: only what the stream says while nothing happens.
    stream = await batch_events.stream_events(
        pool, cast(Client, _QueriesUnanswered(temporal)), grant, file_id, 100
    )

    async with asyncio.timeout(10):
        said = await anext(stream)
    cancelled = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert said == ": keep-alive\n\n"
    assert cancelled.status_code == 200, cancelled.text


async def test_a_batch_temporal_could_not_start_ends_failed_and_the_same_request_starts_it(
    settings: Settings,
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
) -> None:
    marker = secrets.token_hex(6)
    numbers = unique_numbers(3)
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in numbers])
    )
    request = {
        "global": {"agent_number": account.agent_number, "agent_message": f"batch {marker}"},
        "status_webhook": webhooks.url(marker),
    }
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        refused = await start(unreachable, account, file_id, **request)
    stranded = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()
    async with asyncio.timeout(10):
        stream = await api.get(f"/v1/sms/batch/{file_id}/events", headers=account.headers)
    cancel = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)
    again = await start(api, account, file_id, **request)
    final = (await webhooks.wait_for(marker, *FINAL))[-1]

    assert refused.status_code == 503
    assert error_code(refused) == "TEMPORAL_UNAVAILABLE"
    # Not `queued` forever: it says it never started, and why.
    assert (stranded["data"]["status"], stranded["data"]["code"]) == (
        "failed",
        "TEMPORAL_UNAVAILABLE",
    )
    # Its event stream ends at once: no event will ever come.
    assert (stream.status_code, stream.text) == (200, "")
    assert error_code(cancel) == "BATCH_ALREADY_FINISHED"
    assert again.status_code == 200, again.text
    assert final["status"] == "completed"
    assert sorted(m["to"] for m in await received(emulator_url, marker)) == sorted(numbers)


async def test_a_retry_run_keeps_the_batchs_spread_and_expiry(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
    temporal: Client,
) -> None:
    numbers = unique_numbers(6)
    await carrier(scripted={number: [400] for number in numbers[:2]})
    expire_at = datetime.now(UTC) + timedelta(minutes=10)
    file_id, marker = await start_marked_batch(
        api,
        account,
        webhooks,
        numbers,
        spread_hours=3 / 3600,
        expire_at=expire_at.isoformat(),
    )
    first = (await webhooks.wait_for(marker, *FINAL))[-1]
    retry = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    final = (await webhooks.wait_for(marker, *FINAL, times=2))[-1]
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    retried = json.loads(started.input.payloads[0].data)

    assert first["messages_failed"] == 2
    assert retry.status_code == 200, retry.text
    assert retried["retry_statuses"] == ["failed"]
    assert retried["timing"] == {
        "schedule_at": 0.0,
        "spread_seconds": 3.0,
        "expire_at": expire_at.timestamp(),
        "send_window": None,
    }
    assert (final["status"], final["messages_successful"]) == ("completed", 6)


async def test_a_batch_past_its_expiry_is_not_retried(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, carrier: Configure
) -> None:
    numbers = unique_numbers(2)
    await carrier(scripted={numbers[0]: [400]})
    expire_at = datetime.now(UTC) + timedelta(seconds=3)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, numbers, expire_at=expire_at.isoformat()
    )
    await webhooks.wait_for(marker, *FINAL)
    await asyncio.sleep(max(0.0, expire_at.timestamp() - time.time()) + 0.1)
    retry = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)

    assert (retry.status_code, error_code(retry)) == (409, "BATCH_EXPIRED")


async def test_a_batch_terminated_then_past_its_expiry_is_ended_by_its_retry(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal: Client,
) -> None:
    """A run terminated through Temporal leaves its batch `in_progress`, holding its sender
    (`SENDER_IN_USE`), with no run for `/cancel`; once its `expire_at` has passed, `/retry`
    ends it (it was refused `BATCH_EXPIRED`, which left the sender held for good): the new
    run sends nothing more and closes what was left `expired`."""
    numbers = unique_numbers(20)
    expire_at = datetime.now(UTC) + timedelta(seconds=6)
    # A row every 3 s: a few sent before the terminate, the rest left.
    file_id, marker = await start_marked_batch(
        api, account, webhooks, numbers, spread_hours=60 / 3600, expire_at=expire_at.isoformat()
    )
    await wait_until_received(emulator_url, marker, 1)
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).terminate("by hand")
    number = f"/v1/sms/numbers/{account.agent_number}"
    held = await api.delete(number, headers=account.headers)
    await asyncio.sleep(max(0.0, expire_at.timestamp() - time.time()) + 0.1)
    retried = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    final = (await webhooks.wait_for(marker, *FINAL))[-1]
    sent = len(await received(emulator_url, marker))
    counts = {status: n for status, n in (await ledger_counts(api, account, file_id)).items() if n}
    released = await api.delete(number, headers=account.headers)

    assert (held.status_code, error_code(held)) == (409, "SENDER_IN_USE")
    assert retried.status_code == 200, retried.text
    assert 0 < sent < len(numbers)
    assert counts == {"sent": sent, "expired": len(numbers) - sent}, counts
    assert (final["messages_successful"], final["messages_expired"]) == (sent, len(numbers) - sent)
    assert released.status_code == 200, released.text


async def test_a_batch_whose_run_was_terminated_while_sending_is_retried_to_its_end(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    """Terminated through Temporal (its web UI, the `temporal` CLI), a run records no final
    event: the batch stays `in_progress` with rows unsent and on the wire. A retry is its way
    on: the new run sends what was left, reconciles what was on the wire, and ends it. Every
    number gets its message once."""
    numbers = unique_numbers(300)
    await carrier(latency_ms=300)
    # Reconciliation waits out the carrier timeout: a short one, not the default 30 s.
    async with (
        own_worker(temporal, settings, carrier_timeout_seconds=CARRIER_TIMEOUT_SECONDS) as own,
        api_client(own) as api,
    ):
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await wait_until_received(emulator_url, marker, 50)
        await temporal.get_workflow_handle(batch_workflow_id(file_id)).terminate("by hand")
        await carrier(latency_ms=0)
        stuck = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()
        cancel = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)
        retried = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
        final = (await webhooks.wait_for(marker, *FINAL))[-1]
        rows = await ledger_rows(api, account, file_id)

    assert stuck["data"]["status"] == "in_progress"
    # No run to signal: the answer points to the retry.
    assert (cancel.status_code, error_code(cancel)) == (409, "BATCH_ALREADY_FINISHED")
    assert "/retry" in cancel.json()["errors"][0]["message"]
    assert retried.status_code == 200, retried.text
    # Those left unsent or on the wire: some of the latter reconciliation finds sent.
    assert 0 < retried.json()["data"]["rows"] < len(numbers)
    assert final["status"] == "completed"
    statuses = assert_each_row_once(rows, await received(emulator_url, marker), len(numbers))
    assert statuses == {"sent": len(numbers)}


async def reset_to_its_first_task(
    temporal: Client, temporal_address: str, file_id: str
) -> WorkflowHandle[Any, Any]:
    """Reset the batch's workflow to its first workflow task (`temporal workflow reset`, as
    the web UI's Reset does); its latest run, once that has ended."""
    reset = await temporal_cli(
        temporal_address,
        "workflow",
        "reset",
        "--workflow-id",
        batch_workflow_id(file_id),
        "--type",
        "FirstWorkflowTask",
        "--reason",
        "operator",
        "--yes",
    )
    assert reset.returncode == 0, reset.stderr
    latest = temporal.get_workflow_handle(batch_workflow_id(file_id))
    async with asyncio.timeout(60):
        await latest.result()
    return latest


async def test_a_batch_reset_to_before_its_validation_sends_no_row_twice(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal: Client,
    temporal_address: str,
) -> None:
    """The web UI's Reset (here the CLI's) to the run's first workflow task runs validation
    again: it made the ledger anew, every row `pending` once more, and the batch sent each
    number a second time. The ledger it made is kept, and nothing is left to send. The new
    run numbers its events from the reset point, on seqs the old run's hold: its events go
    after them (its final event was dropped, and the batch's log ended on a progress event)."""
    numbers = unique_numbers(5)
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await webhooks.wait_for(marker, *FINAL)
    handle = temporal.get_workflow_handle(batch_workflow_id(file_id))
    first_run = (await handle.describe()).run_id

    latest = await reset_to_its_first_task(temporal, temporal_address, file_id)
    rows = await ledger_rows(api, account, file_id)

    assert (await latest.describe()).run_id != first_run
    statuses = assert_each_row_once(rows, await received(emulator_url, marker), len(numbers))
    assert sum(statuses.values()) == len(numbers)
    assert statuses.keys() <= {"sent", "delivered"}
    # Each run's lifecycle in the log and at the webhook, the reset run's after the first's.
    await webhooks.wait_for(marker, "completed", times=2)
    logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    phases = [e["status"] for e in logs["data"]["events"]]
    assert phases.count("completed") == 2
    assert phases[-1] == "completed"
    assert phases.index("validating", 1) > phases.index("completed")


async def test_a_batch_reset_to_before_its_validation_answers_its_validations_counts(
    api: httpx.AsyncClient,
    pool: asyncpg.Pool,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    temporal_address: str,
) -> None:
    """The ledger kept, validation answers the counts its first run made: its skipped rows
    (one duplicate here), not the ledger's `skipped` rows now, which also count a row a
    slice's claim skipped (its number opted out after validation)."""
    numbers = unique_numbers(4)
    file_id, marker = await start_marked_batch(api, account, webhooks, [*numbers, numbers[0]])
    await webhooks.wait_for(marker, *FINAL)
    await pool.execute(
        "UPDATE messages SET status = 'skipped', error_code = 'opted_out'"
        " WHERE batch_id = $1 AND to_number = $2 AND status <> 'skipped'",
        uuid.UUID(file_id),
        numbers[1],
    )

    await reset_to_its_first_task(temporal, temporal_address, file_id)
    await webhooks.wait_for(marker, *FINAL, times=2)
    logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    # The reset run's `dispatching` message: a progress event, when one falls in, counts
    # `Validated` otherwise (ledger rows, skipped ones included: docs/API.md).
    said = [
        e["payload"].get("message", "")
        for e in logs["data"]["events"]
        if e["payload"]["status"] == "dispatching"
    ]

    assert said[-1] == "Requested: 5. Validated: 4."


async def test_an_event_is_recorded_once_per_run_and_seq_and_another_runs_goes_last(
    pool: asyncpg.Pool, account: Account
) -> None:
    batch_id = await recorded_batch(pool, account)

    async def append(seq: int, run_id: str, status: str) -> bool:
        return await events.append_event(
            pool,
            batch_id=batch_id,
            account_id=account.account_id,
            seq=seq,
            run_id=run_id,
            status=status,
            payload={"status": status},
            posted=False,
        )

    recorded = [
        await append(1, "run-a", "validating"),
        await append(2, "run-a", "in_progress"),
        # A retried record of the same run's event.
        await append(2, "run-a", "in_progress"),
        # A reset run numbering from its reset point again: its events go last, its own
        # numbering then reaching seqs its events moved to hold.
        await append(2, "run-b", "in_progress"),
        await append(2, "run-b", "in_progress"),
        await append(3, "run-b", "completed"),
    ]
    stored = await pool.fetch(
        "SELECT seq, status FROM batch_events WHERE batch_id = $1 ORDER BY seq", batch_id
    )

    assert recorded == [True, True, False, True, False, True]
    assert [(r["seq"], r["status"]) for r in stored] == [
        (1, "validating"),
        (2, "in_progress"),
        (3, "in_progress"),
        (4, "completed"),
    ]


async def test_a_retry_of_a_terminated_run_counts_each_row_it_sends_once(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    pool: asyncpg.Pool,
) -> None:
    # A row both asked for (`uncertain`) and left by the run was counted twice in `rows`.
    numbers = unique_numbers(12)
    file_id = await waiting_batch(api, account, webhooks, numbers)
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).terminate("by hand")
    # As a run terminated while it reconciled leaves them.
    await pool.execute(
        "UPDATE messages SET status = 'uncertain' WHERE batch_id = $1 AND seq <= 5",
        uuid.UUID(file_id),
    )

    retried = await api.post(
        f"/v1/sms/batch/{file_id}/retry", headers=account.headers, json={"statuses": ["uncertain"]}
    )
    await wait_for_status(api, account, file_id, *FINAL)

    assert retried.status_code == 200, retried.text
    assert retried.json()["data"]["rows"] == len(numbers)
    assert (await ledger_counts(api, account, file_id))["sent"] == len(numbers)


async def test_a_batch_whose_run_was_terminated_while_validating_is_validated_by_its_retry(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """Terminated before its ledger was recorded (validation commits it whole): the retry
    validates the file again, then sends it."""
    # Slow to validate (row by row, a quote in a cell) and quick to send: all but ten rejected.
    numbers = unique_numbers(10)
    content = (
        slow_to_validate(100_000).replace(b"+1", b"+0")
        + "".join(f'{n},say "hi"\n' for n in numbers).encode()
    )
    file_id = await attach(api, account.headers, content)
    marker = f"validation-{file_id}"
    response = await start(api, account, file_id, status_webhook=webhooks.url(marker))
    assert response.status_code == 200, response.text
    await webhooks.wait_for(marker, "validating")
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).terminate("by hand")

    retried = await api.post(f"/v1/sms/batch/{file_id}/retry", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL)

    assert retried.status_code == 200, retried.text
    # Validated by each run, the second one to its end.
    assert [e["status"] for e in events].count("validating") == 2
    assert "dispatching" in phases(events)
    assert events[-1]["status"] == "completed_partial"  # the rejected rows
    assert (await ledger_counts(api, account, file_id)) == {"sent": 10, "rejected": 100_000}


async def test_a_retry_that_loses_to_another_answers_at_once_and_leaves_the_batch_to_it(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
    pool: asyncpg.Pool,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry asked twice at once (a double click), the second reading the batch just
    before the first queues it: the first starts the run, the second answers 409 at once
    (not once that run has ended) and leaves the batch alone, not put back to the final
    status it read."""
    numbers = unique_numbers(3)
    await carrier(scripted={numbers[0]: [400]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await webhooks.wait_for(marker, *FINAL)
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).result()
    # The retry's run then takes five seconds to send its row: a status read as the retries
    # are answered is that run's, not already its final one, on a loaded machine too.
    await carrier(latency_ms=5000)
    read, go_on = asyncio.Event(), asyncio.Event()
    read_batch = batch_service.batch_or_404

    async def read_then_wait(*args: Any) -> Any:
        batch = await read_batch(*args)
        if not read.is_set():
            read.set()
            await go_on.wait()
        return batch

    monkeypatch.setattr(batch_service, "batch_or_404", read_then_wait)
    retry = f"/v1/sms/batch/{file_id}/retry"
    second = asyncio.create_task(api.post(retry, headers=account.headers))
    await read.wait()
    first = await api.post(retry, headers=account.headers)
    # The second goes on once the first's run has put the failed row back to `pending`: it
    # answered NOTHING_TO_RETRY then, the batch's rows being that run's.
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) FROM messages WHERE batch_id = $1 AND status = 'failed'",
            uuid.UUID(file_id),
        ),
        lambda failed: failed == 0,
    )
    go_on.set()
    lost = await second
    status = await pool.fetchval("SELECT status FROM batches WHERE id = $1", uuid.UUID(file_id))
    events = await webhooks.wait_for(marker, *FINAL, times=2)

    assert first.status_code == 200, first.text
    assert (lost.status_code, error_code(lost)) == (409, "BATCH_NOT_FINISHED"), lost.text
    assert status not in FINAL
    assert (events[-1]["status"], events[-1]["messages_successful"]) == ("completed", 3)


async def test_the_event_stream_of_a_batch_whose_run_was_terminated_ends(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    temporal: Client,
) -> None:
    """Terminated through Temporal, the run records no final event: the batch stays
    `in_progress`. Its stream ends (a retry runs it again) rather than sending the closed
    run's last progress each second for good, which kept `herald follow` and a dashboard's
    stream open forever."""
    await carrier(latency_ms=300)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(300))
    await wait_until_received(emulator_url, marker, 20)
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).terminate("by hand")
    await carrier(latency_ms=0)

    async with asyncio.timeout(30):
        streamed = await api.get(f"/v1/sms/batch/{file_id}/events", headers=account.headers)
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()

    assert streamed.status_code == 200
    assert "event: status" in streamed.text
    assert batch["data"]["status"] in ("in_progress", "in_progress_chunked")


async def test_rows_reopened_by_a_retry_cancelled_at_once_go_back_as_they_were(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
    pool: asyncpg.Pool,
) -> None:
    """What a retry run of the `failed` rows cancelled while it reopens them leaves (the
    workflow's `batch-cancel-during-reopen`: the reopen, then the ledger closed with its
    `pending` rows as `failed`): each such row `failed` again, its carrier's error kept, so
    that a later retry finds it."""
    numbers = unique_numbers(3)
    await carrier(scripted={numbers[0]: [400]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    await webhooks.wait_for(marker, *FINAL)
    before = {r["to_number"]: r for r in await ledger_rows(api, account, file_id)}
    batch_id = uuid.UUID(file_id)

    await messages.reopen(pool, batch_id, [LedgerStatus.FAILED])
    await messages.close_ledger(pool, batch_id, pending_as=LedgerStatus.FAILED)
    counts = await messages.count_by_status(pool, batch_id)
    after = {r["to_number"]: r for r in await ledger_rows(api, account, file_id)}

    assert {s: n for s, n in counts.items() if n} == {"sent": 2, "failed": 1}
    assert after[numbers[0]]["status"] == "failed"
    assert after[numbers[0]]["error_code"] == before[numbers[0]]["error_code"] is not None
