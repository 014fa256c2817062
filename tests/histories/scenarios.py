"""The scenarios whose workflow histories are kept in tests/histories/, driven through the real
API on the session's stack; each writes its histories there. Not part of `make test` (its name
is not a test module's): `python -m tests.histories.record` runs it."""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from deploy.local.emulator import NO_ANSWER
from settings import Settings
from tests.support.batches import FINAL, start, start_marked_batch
from tests.support.builders import (
    attach,
    emulator_messages,
    slow_to_validate,
    unique_numbers,
    unique_numbers_in,
)
from tests.support.conversations import TIMERS, timed_out
from tests.support.delivery import own_worker, terminate_once_started
from tests.support.sending import (
    conversation_when,
    inbound_form,
    next_conversation_while_refused,
    post_inbound,
    received_by,
    send_ok,
)
from tests.support.stack import (
    SUBACCOUNT_SID,
    SUBACCOUNT_TOKEN,
    Account,
    Configure,
    WebhookReceiver,
    api_client,
    set_own,
)
from tests.test_batch_workflow_fast import (
    auto_paused_before_and_after_a_resume,
    paused_by,
    paused_while_reconciling,
    resumed_while_closing_expired,
    retry_cancelled_before_reopening,
    retry_cancelled_while_reopening,
    retry_paused_and_resumed_while_reopening,
    throttled_then_refused,
    throttled_twice,
)
from tests.test_conversation_workflow_fast import (
    late_reply_while_handing_over,
    reply_signalled_after_its_due,
    run_with_a_failing_first_message,
)
from workflows.contracts import (
    batch_workflow_id,
    click_event_workflow_id,
    conversation_workflow_id,
)

HISTORIES = Path(__file__).parent
# Several chunks of several slices from a few dozen rows, so every history stays small.
SMALL = {"chunk_size": 20, "slice_size": 5, "chunk_window": 2, "slices_in_flight": 2}
# Requests that take this long are still on the wire when a pause or a cancel reaches their
# send activity (in a heartbeat's reply): the activity is cancelled, not completed.
SLOW_CARRIER_MS = 2000


@pytest.fixture
async def api(settings: Settings, worker: None) -> AsyncIterator[httpx.AsyncClient]:
    """The session's API with small chunks and slices (they travel in each batch's input)."""
    async with api_client(settings.model_copy(update=SMALL)) as client:
        yield client


def save(history: WorkflowHistory, kind: str, name: str) -> None:
    path = HISTORIES / kind / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(history.to_json() + "\n")


async def run_chain(
    temporal: Client, workflow_id: str, run_id: str | None = None
) -> list[WorkflowHistory]:
    """The histories of a run (the latest by default) and of the runs it continued, in order."""
    await temporal.get_workflow_handle(workflow_id, run_id=run_id).result()
    chain: list[WorkflowHistory] = []
    while True:
        history = await temporal.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        chain.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id
        if not run_id:
            return chain


async def save_batch(
    temporal: Client, file_id: str, name: str, *, chunks: dict[int, str] | None = None
) -> None:
    """The batch's runs as batch/<name>.json (one run) or batch/<name>.run<n>.json, and the
    chunks asked for as chunk/<their name>.json."""
    workflow_id = batch_workflow_id(file_id)
    runs = await run_chain(temporal, workflow_id)
    for number, history in enumerate(runs, start=1):
        save(history, "batch", name if len(runs) == 1 else f"{name}.run{number}")
    for index, chunk_name in (chunks or {}).items():
        [chunk] = await run_chain(temporal, f"{workflow_id}/chunk-{index}")
        save(chunk, "chunk", chunk_name)


async def steer_mid_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    action: str,
    *,
    rows: int = 40,
    sending: str = "in_progress_chunked",
) -> tuple[str, str]:
    """A slow batch (of two chunks by default), `action` sent while its first slices are on
    the wire once it reports `sending`; (file_id, marker)."""
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(rows))
    await webhooks.wait_for(marker, sending)
    await asyncio.sleep(SLOW_CARRIER_MS / 1000 / 2)
    await control(api, account, file_id, action)
    return file_id, marker


async def control(api: httpx.AsyncClient, account: Account, file_id: str, action: str) -> None:
    response = await api.post(f"/v1/sms/batch/{file_id}/{action}", headers=account.headers)
    assert response.status_code == 200, response.text


async def paused_then_resumed(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, **steer: Any
) -> str:
    """A slow batch paused mid-way, resumed once its interrupted sends have ended (on resume
    their slices are scheduled again), run to `completed`; its file_id."""
    file_id, marker = await steer_mid_batch(api, account, webhooks, "pause", **steer)
    await webhooks.wait_for(marker, "paused")
    await asyncio.sleep(SLOW_CARRIER_MS / 1000 + 1)
    await control(api, account, file_id, "resume")
    assert (await finished(webhooks, marker))["status"] == "completed"
    return file_id


async def cancelled_mid_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, **steer: Any
) -> str:
    """A slow batch cancelled through the API mid-way, run to `cancelled`; its file_id."""
    file_id, marker = await steer_mid_batch(api, account, webhooks, "cancel", **steer)
    assert (await finished(webhooks, marker))["status"] == "cancelled"
    return file_id


async def finished(
    webhooks: WebhookReceiver, marker: str, *, times: int = 1, seconds: float = 60
) -> dict[str, Any]:
    """The batch's final event."""
    return (await webhooks.wait_for(marker, *FINAL, times=times, seconds=seconds))[-1]


async def completed_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, rows: int
) -> str:
    """A batch of `rows` run to `completed`; its file_id."""
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(rows))
    assert (await finished(webhooks, marker))["status"] == "completed"
    return file_id


async def test_plain(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    file_id = await completed_batch(api, account, webhooks, 20)
    await save_batch(temporal, file_id, "plain", chunks={0: "plain"})


async def test_local_db_steps(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """As `plain`, from the release whose batches run their database steps as local
    activities (patch `batch-local-db-steps`): no `reconcile_uncertain`, no row uncertain."""
    file_id = await completed_batch(api, account, webhooks, 20)
    await save_batch(temporal, file_id, "local_db_steps")


async def test_send_queue(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """As `plain`, from a release whose batches name the send queue: its chunk records the
    `chunk-send-task-queue` marker and schedules its sends there."""
    file_id = await completed_batch(api, account, webhooks, 20)
    await save_batch(temporal, file_id, "send_queue", chunks={0: "send_queue"})


async def test_reported_while_starting(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    # As `plain`, on the `batch-report-while-starting` patch: the `dispatching` and
    # `in_progress` reports run while the chunk starts.
    file_id = await completed_batch(api, account, webhooks, 20)
    await save_batch(temporal, file_id, "reported_while_starting")


async def test_one_slice(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """A batch whose rows fit one slice, from the release that sends them from the batch's
    own workflow (patch `batch-one-slice-inline`): no chunk workflow."""
    file_id = await completed_batch(api, account, webhooks, 4)
    await save_batch(temporal, file_id, "one_slice")


async def test_opening_reports_queued(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """As `one_slice`, from the release whose `dispatching` and `in_progress` reports are
    activities on the task queue, scheduled beside the send (patch
    `batch-opening-reports-queued`), not local activities that hold its start back."""
    file_id = await completed_batch(api, account, webhooks, 4)
    await save_batch(temporal, file_id, "opening_reports_queued")


async def test_validating_report_queued(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """As `opening_reports_queued`, on the `batch-validating-report-queued` patch: the marker,
    then the `validating` report's `record_status` activity and `validate_recipients`
    scheduled in the first workflow task (no local activity before the validation)."""
    file_id = await completed_batch(api, account, webhooks, 4)
    await save_batch(temporal, file_id, "validating_report_queued")


async def test_one_slice_paused_and_resumed(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    """5 rows, which fit one slice (sent from the batch's own workflow), paused mid-slice."""
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id = await paused_then_resumed(api, account, webhooks, rows=5, sending="in_progress")
    await save_batch(temporal, file_id, "one_slice_paused_and_resumed")


async def test_one_slice_cancelled(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id = await cancelled_mid_batch(api, account, webhooks, rows=5, sending="in_progress")
    await save_batch(temporal, file_id, "one_slice_cancelled")


@pytest.fixture
async def inline_api(settings: Settings, worker: None) -> AsyncIterator[httpx.AsyncClient]:
    """As `api`, its batches of up to eight slices run in their own workflow (patch
    `batch-slices-inline`): 40 rows are two chunks of four slices, and no chunk workflow."""
    async with api_client(settings.model_copy(update={**SMALL, "inline_slices": 8})) as client:
        yield client


async def test_slices_inline(
    inline_api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """40 rows in two chunks of 20 (slices of 5), run in the batch's own workflow."""
    file_id = await completed_batch(inline_api, account, webhooks, 40)
    await save_batch(temporal, file_id, "slices_inline")


async def test_slices_inline_window_shared(
    inline_api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """20 rows, one chunk of four slices of 5, run in the batch's own workflow: the chunk
    window's four slices in flight (two chunks of two) all the chunk's."""
    file_id = await completed_batch(inline_api, account, webhooks, 20)
    await save_batch(temporal, file_id, "slices_inline_window_shared")


async def test_slices_inline_paused_and_resumed(
    inline_api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    """As `slices_inline` on a slow carrier: paused while its first slices are on the wire
    (the batch cancels its own sends of both chunks), resumed, `completed`."""
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id = await paused_then_resumed(inline_api, account, webhooks)
    await save_batch(temporal, file_id, "slices_inline_paused_and_resumed")


async def test_slices_inline_cancelled(
    inline_api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id = await cancelled_mid_batch(inline_api, account, webhooks)
    await save_batch(temporal, file_id, "slices_inline_cancelled")


async def test_continue_as_new(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    worker: None,
) -> None:
    small = settings.model_copy(update={**SMALL, "chunk_size": 10, "chunks_per_run": 2})
    async with api_client(small) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(50))
        assert (await finished(webhooks, marker))["status"] == "completed"
    await save_batch(temporal, file_id, "continue_as_new")


async def test_balanced_chunks(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    worker: None,
) -> None:
    """60 rows in slices of 5 with `inline_slices` 2 and a window of two chunks: five rounds
    of the window are 10 chunks of 6 rows, in whole slices 6 chunks of 10, not 12 of
    `chunk_size` 5 (patch `batch-balanced-chunks`)."""
    balanced = settings.model_copy(update={**SMALL, "chunk_size": 5, "inline_slices": 2})
    async with api_client(balanced) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(60))
        assert (await finished(webhooks, marker))["status"] == "completed"
    await save_batch(temporal, file_id, "balanced_chunks")


async def test_paused_and_resumed(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id = await paused_then_resumed(api, account, webhooks)
    await save_batch(temporal, file_id, "paused_and_resumed", chunks={0: "paused_and_resumed"})


async def test_cancelled(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id = await cancelled_mid_batch(api, account, webhooks)
    await save_batch(temporal, file_id, "cancelled", chunks={0: "stopped"})


async def test_cancelled_through_temporal(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    await carrier(latency_ms=SLOW_CARRIER_MS)
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(40))
    await webhooks.wait_for(marker, "in_progress_chunked")
    await temporal.get_workflow_handle(batch_workflow_id(file_id)).cancel()
    assert (await finished(webhooks, marker))["status"] == "cancelled"
    # `cancelled_through_temporal.json`, recorded before `batch-temporal-cancel-as-signal`,
    # is kept: its cancellation reached what the run awaited.
    await save_batch(temporal, file_id, "cancelled_through_temporal_as_signal")


async def test_scheduled(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=3)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(5), schedule_at=at.isoformat()
    )
    assert (await finished(webhooks, marker))["status"] == "completed"
    await save_batch(temporal, file_id, "scheduled")


async def test_spread(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(6), spread_hours=4 / 3600
    )
    assert (await finished(webhooks, marker))["status"] == "completed"
    await save_batch(temporal, file_id, "spread", chunks={0: "spread"})


async def test_spread_paused_and_resumed(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """A spread batch (6 rows over 6 s) paused as it sends, resumed 3 s later: the markers
    `batch-pause-shifts-spread` (its timeline moved on for the chunks it starts later) and
    `chunk-pause-shifts-spread` (its chunk's slice sleeping until its moved place)."""
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(6), spread_hours=6 / 3600
    )
    await webhooks.wait_for(marker, "in_progress")
    await control(api, account, file_id, "pause")
    await webhooks.wait_for(marker, "paused")
    await asyncio.sleep(3)
    await control(api, account, file_id, "resume")
    assert (await finished(webhooks, marker))["status"] == "completed"
    await save_batch(
        temporal, file_id, "spread_paused_and_resumed", chunks={0: "spread_paused_and_resumed"}
    )


async def window_at_tokyos_next_minute() -> tuple[float, dict[str, str]]:
    """A send window opening at Tokyo's next minute, for three hours (Sydney, one or two
    hours ahead of Tokyo, is inside it at once): when it opens (Unix time), and the window."""
    if datetime.now(UTC).second > 45:
        await asyncio.sleep(60 - datetime.now(UTC).second)
    opens = datetime.now(ZoneInfo("Asia/Tokyo")) + timedelta(minutes=1)
    window = {
        "start": opens.strftime("%H:%M"),
        "end": (opens + timedelta(hours=3)).strftime("%H:%M"),
    }
    return opens.replace(second=0, microsecond=0).timestamp(), window


async def received_at(emulator_url: str, marker: str, numbers: list[str]) -> list[float]:
    """When the emulator received the batch's messages to `numbers` (Unix times)."""
    received = await emulator_messages(emulator_url, body_contains=marker)
    return [
        datetime.fromisoformat(m["received_at"]).timestamp() for m in received if m["to"] in numbers
    ]


async def test_send_window(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    emulator_url: str,
) -> None:
    # Sydney is inside the window at once, Tokyo waits for it.
    opened, window = await window_at_tokyos_next_minute()
    numbers = unique_numbers_in("+612", 8, 3) + unique_numbers_in("+813", 8, 3)
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers, send_window=window)
    final = await finished(webhooks, marker)
    assert (final["status"], final["messages_successful"]) == ("completed", 6)
    tokyo = await received_at(emulator_url, marker, numbers[3:])
    assert len(tokyo) == 3 and min(tokyo) >= opened
    await save_batch(temporal, file_id, "send_window", chunks={0: "send_window"})


async def test_send_window_passes(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal: Client,
) -> None:
    # Two chunks: the first of Tokyo rows waiting for a window that opens at Tokyo's next
    # minute, the second of Sydney rows inside it. The first chunk hands its rows back; the
    # batch sends the second, then passes over the first range again when the window opens.
    opened, window = await window_at_tokyos_next_minute()
    numbers = unique_numbers_in("+813", 8, SMALL["chunk_size"]) + unique_numbers_in("+612", 8, 3)
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers, send_window=window)
    final = await finished(webhooks, marker)
    assert (final["status"], final["messages_successful"]) == ("completed", len(numbers))
    tokyo = await received_at(emulator_url, marker, numbers[: SMALL["chunk_size"]])
    assert min(tokyo) >= opened
    await save_batch(temporal, file_id, "send_window_passes", chunks={0: "send_window_hand_back"})


async def test_send_window_beside(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    temporal: Client,
) -> None:
    # Spread over 120 s: 20 Tokyo rows (the first chunk, its first rows before the window
    # opens at Tokyo's next minute) and 3 Sydney rows (the second chunk, at 104-115 s). The
    # first chunk ends at about 100 s and hands its waiting rows back; the pass beside the
    # chunks sends them while the second chunk still runs.
    opened, window = await window_at_tokyos_next_minute()
    numbers = unique_numbers_in("+813", 8, SMALL["chunk_size"]) + unique_numbers_in("+612", 8, 3)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, numbers, send_window=window, spread_hours=120 / 3600
    )
    final = await finished(webhooks, marker, seconds=180)
    assert (final["status"], final["messages_successful"]) == ("completed", len(numbers))
    tokyo = await received_at(emulator_url, marker, numbers[: SMALL["chunk_size"]])
    sydney = await received_at(emulator_url, marker, numbers[SMALL["chunk_size"] :])
    assert opened <= min(tokyo) and max(tokyo) < max(sydney)
    await save_batch(temporal, file_id, "send_window_beside")


async def test_expired(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    expire_at = datetime.now(UTC) + timedelta(seconds=3)
    file_id, marker = await start_marked_batch(
        api,
        account,
        webhooks,
        unique_numbers(10),
        spread_hours=20 / 3600,
        expire_at=expire_at.isoformat(),
    )
    final = await finished(webhooks, marker)
    assert (final["status"], final["messages_expired"] > 0) == ("completed_partial", True)
    await save_batch(temporal, file_id, "expired", chunks={0: "expired"})


async def test_retried(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(10)
    await carrier(scripted={number: [400] for number in numbers[:2]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
    assert (await finished(webhooks, marker))["status"] == "completed_partial"
    await save_batch(temporal, file_id, "failed_rows")

    await control(api, account, file_id, "retry")

    assert (await finished(webhooks, marker, times=2))["status"] == "completed"
    await save_batch(temporal, file_id, "retried")


async def reconciled_batch(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    numbers: list[str],
    name: str,
    *,
    carrier_timeout_seconds: float,
    terminate_reconciled: bool = False,
) -> str:
    """A batch of `numbers` on a worker of its own (SMALL, the carrier timeout given) run to
    `completed`, saved as batch/<name>.json while that worker still runs (the run ends in a
    workflow task after its final event); with `terminate_reconciled`, its `reconciled` chunk
    is terminated once started. Its file_id."""
    changes = {**SMALL, "carrier_timeout_seconds": carrier_timeout_seconds}
    async with own_worker(temporal, settings, **changes) as own, api_client(own) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        if terminate_reconciled:
            await terminate_once_started(temporal, f"{batch_workflow_id(file_id)}/reconciled")
        assert (await finished(webhooks, marker))["status"] == "completed"
        await save_batch(temporal, file_id, name)
    return file_id


async def test_reconciled(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(10)
    # One request gets no answer and the carrier never kept it: reconciliation finds it
    # missing and the `reconciled` chunk sends it again.
    await carrier(scripted={numbers[0]: [NO_ANSWER]})
    # `batch/reconciled.json` is the same scenario recorded before `batch-local-db-steps`.
    file_id = await reconciled_batch(
        temporal,
        settings,
        account,
        webhooks,
        numbers,
        "reconciled_local_db_steps",
        carrier_timeout_seconds=0.5,
    )
    [chunk] = await run_chain(temporal, f"{batch_workflow_id(file_id)}/reconciled")
    save(chunk, "chunk", "reconciled")


async def test_reconciled_again(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(10)
    # The `reconciled` chunk's request is lost too: reconciliation runs again (marker
    # `batch-reconcile-again`) and the `reconciled-2` chunk sends it.
    await carrier(scripted={numbers[0]: [NO_ANSWER, NO_ANSWER]})
    await reconciled_batch(
        temporal,
        settings,
        account,
        webhooks,
        numbers,
        "reconciled_again",
        carrier_timeout_seconds=0.5,
    )


async def test_reconciled_chunk_terminated(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(4)
    # The lost request's `reconciled` chunk is terminated while its send is on the wire (the
    # marker `batch-reconciled-chunk-failure-goes-on`): the next round settles the row.
    await carrier(latency_ms=1500, scripted={numbers[0]: [NO_ANSWER]})
    await reconciled_batch(
        temporal,
        settings,
        account,
        webhooks,
        numbers,
        "reconciled_chunk_terminated",
        carrier_timeout_seconds=3.0,
        terminate_reconciled=True,
    )


async def test_failed_validation(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    numbers = [*unique_numbers(4), "555-not-a-number"]
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers, strict=True)
    final = await finished(webhooks, marker)
    assert (final["status"], final["code"]) == ("failed", "validation_failed")
    await save_batch(temporal, file_id, "failed_validation")


async def test_loaded_at_upload(api: httpx.AsyncClient, account: Account, temporal: Client) -> None:
    """A Postman upload, validated by the API as it took the file: the batch loads its
    ledger rows (the `batch-load-validated-rows` marker, `load_recipients`, no
    `validate_recipients`). (`batch/validated_at_upload.json`, of the earlier
    `batch-validated-at-upload` path, has no scenario: no run takes that path now.)"""
    templates = {"english": "Dear {{name}}, it is ready."}
    campaign = await api.post(
        "/v1/campaigns",
        headers=account.headers,
        json={"name": "History", "sender": account.agent_number, "templates": templates},
    )
    assert campaign.status_code == 201, campaign.text
    rows = "".join(
        f"{n.removeprefix('+')},english,Row {i}\n" for i, n in enumerate(unique_numbers(6))
    )
    response = await api.post(
        f"/campaigns/{campaign.json()['data']['id']}/batch/messages",
        headers={"Authorization": f"Bearer {account.key}"},
        files={"file": ("recipients.csv", f"recipient,language,name\n{rows}".encode(), "text/csv")},
    )
    assert response.status_code == 201, response.text
    file_id = response.json()["batchId"]
    # `loaded_at_upload.json`, recorded before `batch-cancel-load`, is kept: its load is no
    # cancellable activity.
    await save_batch(temporal, file_id, "loaded_at_upload_cancellable")


async def cancelled_while_validating(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> str:
    """A 200,000-row file's batch cancelled through the API while `validating`; its file_id."""
    file_id = await attach(api, account.headers, slow_to_validate(200_000))
    marker = secrets.token_hex(6)
    response = await start(api, account, file_id, status_webhook=webhooks.url(marker))
    assert response.status_code == 200, response.text
    await webhooks.wait_for(marker, "validating")
    await control(api, account, file_id, "cancel")
    assert (await finished(webhooks, marker))["status"] == "cancelled"
    return file_id


async def test_cancelled_during_validation(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    file_id = await cancelled_while_validating(api, account, webhooks)
    await save_batch(temporal, file_id, "cancelled_during_validation")


async def test_cancelled_during_queued_validating_report(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """As `cancelled_during_validation`, on the `batch-validating-report-queued` patch: the
    `validating` event's activity beside the validation, the final event after it."""
    file_id = await cancelled_while_validating(api, account, webhooks)
    await save_batch(temporal, file_id, "cancelled_during_validation_report_queued")


async def test_resumed_while_cancelling(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    """A 200,000-row file's batch paused while `validating`, then cancelled, then resumed while
    the validation is being cut short: the marker `batch-no-resume-while-cancelling`, the
    resume ignored, `cancelled` after `paused`."""
    file_id = await attach(api, account.headers, slow_to_validate(200_000))
    marker = secrets.token_hex(6)
    response = await start(api, account, file_id, status_webhook=webhooks.url(marker))
    assert response.status_code == 200, response.text
    await webhooks.wait_for(marker, "validating")
    await control(api, account, file_id, "pause")
    await webhooks.wait_for(marker, "paused")
    await control(api, account, file_id, "cancel")
    await control(api, account, file_id, "resume")
    assert (await finished(webhooks, marker))["status"] == "cancelled"
    await save_batch(temporal, file_id, "resumed_while_cancelling")


async def test_auto_paused(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
    worker: None,
) -> None:
    """The first chunk's 200 rows refused (a full window of errors): the batch pauses itself,
    then is resumed."""
    numbers = unique_numbers(400)
    await carrier(scripted={number: [400] for number in numbers[:200]})
    dispatch = {"chunk_size": 200, "slice_size": 100, "chunk_window": 1, "slices_in_flight": 2}
    async with api_client(settings.model_copy(update=dispatch)) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await webhooks.wait_for(marker, "paused")
        await control(api, account, file_id, "resume")
        assert (await finished(webhooks, marker))["status"] == "completed_partial"
    await save_batch(temporal, file_id, "auto_paused", chunks={0: "auto_paused"})


async def test_account_paused(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    """Wrong own carrier credentials (20003): the batch that meets them pauses, and pauses the
    account's other running batch (waiting for its schedule); fixed, resumed, cancelled."""
    await carrier(accounts={SUBACCOUNT_SID: SUBACCOUNT_TOKEN})
    assert (await set_own(api, account, "a-wrong-token")).status_code == 200
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting_file, waiting = await start_marked_batch(
        api, account, webhooks, unique_numbers(3), schedule_at=later
    )
    await webhooks.wait_for(waiting, "waiting_for_scheduled_messages")
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(5))
    await webhooks.wait_for(marker, "paused")
    await webhooks.wait_for(waiting, "paused")
    assert (await set_own(api, account, SUBACCOUNT_TOKEN)).status_code == 200
    await control(api, account, file_id, "resume")
    assert (await finished(webhooks, marker))["status"] == "completed"
    await control(api, account, waiting_file, "cancel")
    assert (await finished(webhooks, waiting))["status"] == "cancelled"
    await save_batch(temporal, file_id, "account_paused", chunks={0: "account_paused"})
    await save_batch(temporal, waiting_file, "paused_by_account")


async def test_throttled(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    worker: None,
    carrier: Configure,
) -> None:
    """The carrier throttles (429, 20429) every request of the batch for longer than the retry
    window: the batch pauses with `carrier_throttled`, pauses the account's other running batch
    (waiting for its schedule), and both resume by themselves after the back-off."""
    numbers = unique_numbers(5)
    await carrier(scripted={number: [429, 429] for number in numbers})
    changes = {**SMALL, "carrier_outage_seconds": 1.0, "carrier_throttle_pause_seconds": 3.0}
    async with own_worker(temporal, settings, **changes) as own, api_client(own) as api:
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        waiting_file, waiting = await start_marked_batch(
            api, account, webhooks, unique_numbers(3), schedule_at=later
        )
        await webhooks.wait_for(waiting, "waiting_for_scheduled_messages")
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        assert (await finished(webhooks, marker))["status"] == "completed"
        await webhooks.wait_for(waiting, "waiting_for_scheduled_messages", times=2)
        await control(api, account, waiting_file, "cancel")
        assert (await finished(webhooks, waiting))["status"] == "cancelled"
        # Saved while the own worker runs: a run closes once that worker has posted its events.
        await save_batch(temporal, file_id, "throttled", chunks={0: "throttled"})
        await save_batch(temporal, waiting_file, "paused_by_throttling")


async def test_paused_for_good(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    worker: None,
    carrier: Configure,
) -> None:
    """As `throttled`, but an operator pauses the batch while it waits to resume by itself:
    the marker `batch-pause-for-good-event` and a `paused` event of its own; resumed by the
    operator, `completed`."""
    numbers = unique_numbers(5)
    await carrier(scripted={number: [429, 429] for number in numbers})
    changes = {**SMALL, "carrier_outage_seconds": 1.0, "carrier_throttle_pause_seconds": 5.0}
    async with own_worker(temporal, settings, **changes) as own, api_client(own) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, numbers)
        await webhooks.wait_for(marker, "paused")
        await control(api, account, file_id, "pause")
        await webhooks.wait_for(marker, "paused", times=2)
        await control(api, account, file_id, "resume")
        assert (await finished(webhooks, marker))["status"] == "completed"
        await save_batch(temporal, file_id, "paused_for_good")


async def test_webhook_retried(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    failing = secrets.token_hex(6)
    webhooks.answers[failing] = [500, 503]
    file_id, _ = await start_marked_batch(
        api, account, webhooks, unique_numbers(5), status_webhook=webhooks.url(failing)
    )
    assert (await finished(webhooks, failing))["status"] == "completed"
    await save_batch(temporal, file_id, "webhook_retried")


async def test_click_event_retried(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    emulator_url: str,
) -> None:
    """A short link's first click, its event refused once (500) then delivered."""
    number = unique_numbers(1)[0]
    _, marker = await start_marked_batch(
        api, account, webhooks, [number], message="See https://example.com", shorten_urls=True
    )
    await finished(webhooks, marker)
    webhooks.answers[marker] = [500]
    [sent] = await emulator_messages(emulator_url, to=number)
    code = sent["body"].rsplit("/", 1)[1]
    assert (await api.get(f"/s/{code}")).status_code == 302
    await webhooks.wait_for(marker, "click", times=2)
    [history] = await run_chain(temporal, click_event_workflow_id(code))
    save(history, "click", "retried")


async def test_conversation_warning_and_timeout(
    api: httpx.AsyncClient, account: Account, emulator_url: str, temporal: Client
) -> None:
    user = unique_numbers(1)[0]
    data = await send_ok(api, account, user, agent_message="Your order is ready", **TIMERS)
    await conversation_when(api, account, data["conversation_id"], timed_out)
    assert len(await emulator_messages(emulator_url, to=user)) == 3
    # `warning_and_timeout.json`, recorded before `conversation-own-message-ids-named`, is
    # kept: its warning and timeout have random ids.
    await save_conversation(temporal, account, user, "warning_and_timeout_ids_named")


async def test_conversation_cancelled_through_temporal(
    api: httpx.AsyncClient, account: Account, emulator_url: str, temporal: Client
) -> None:
    """A conversation with timers, its first message sent, cancelled through Temporal (the
    web UI's Cancel) while it waits for the reply: the marker `conversation-cancel-closes`,
    `end_conversation`, `closed`; no warning."""
    user = unique_numbers(1)[0]
    data = await send_ok(api, account, user, agent_message="Your order is ready", **TIMERS)
    await received_by(emulator_url, user, 1)
    workflow_id = conversation_workflow_id(str(account.account_id), account.agent_number, user)
    await temporal.get_workflow_handle(workflow_id).cancel()
    await conversation_when(api, account, data["conversation_id"], lambda c: c["state"] == "closed")
    assert len(await emulator_messages(emulator_url, to=user)) == 1
    await save_conversation(temporal, account, user, "cancelled_through_temporal")


# `reply_then_timeout.json` (a user's reply restarting the clock) and `help_answered.json` are
# kept from before `conversation-silence-after-agent-only`: the code since stops the clock at
# a user's message, so their scenarios record the new shapes under new names.


async def reply_then_the_agent_writes(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    temporal: Client,
    emulator_url: str,
    name: str,
) -> None:
    """A send with timers, the user's reply (the clock stops), past the timeout nothing sent;
    the agent's next send starts the clock, the warning and the timeout follow. Saved as
    `name`."""
    user = unique_numbers(1)[0]
    data = await send_ok(api, account, user, agent_message="Shall I book it?", **TIMERS)
    await received_by(emulator_url, user, 1)
    form = inbound_form(settings, to=account.agent_number, from_=user, body="Yes")
    assert (await post_inbound(api, settings, form)).status_code == 200
    await asyncio.sleep(TIMERS["time_out"] + 1)
    assert len(await emulator_messages(emulator_url, to=user)) == 1
    await send_ok(api, account, user, agent_message="Booked.")
    await conversation_when(api, account, data["conversation_id"], timed_out)
    assert len(await emulator_messages(emulator_url, to=user)) == 4
    await save_conversation(temporal, account, user, name)


async def test_conversation_reply_stops_the_clock(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    temporal: Client,
    emulator_url: str,
) -> None:
    """`reply_then_the_agent_writes`: the reply's marker `conversation-silence-after-agent-only`
    (the clock stops)."""
    await reply_then_the_agent_writes(
        api, account, settings, temporal, emulator_url, "reply_stops_the_clock"
    )


async def test_conversation_clock_at_sent(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    temporal: Client,
    emulator_url: str,
) -> None:
    """`reply_then_the_agent_writes`, each agent message's clock started at its request's
    claim (the marker `conversation-clock-at-sent`, at each agent message sent)."""
    await reply_then_the_agent_writes(
        api, account, settings, temporal, emulator_url, "clock_at_sent"
    )


async def test_conversation_help_answered(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    temporal: Client,
    emulator_url: str,
) -> None:
    """A user's HELP in a conversation with timers: one signal carries the message and its
    answer (`ConversationSignal.answer_id`), the answer sent; the user's message stops the
    clock (the marker `conversation-silence-after-agent-only`), the agent's next send starts
    it, then the timers run out."""
    user = unique_numbers(1)[0]
    data = await send_ok(api, account, user, agent_message="Shall I book it?", **TIMERS)
    await received_by(emulator_url, user, 1)
    form = inbound_form(settings, to=account.agent_number, from_=user, body="HELP")
    assert (await post_inbound(api, settings, form)).status_code == 200
    await received_by(emulator_url, user, 2)
    await send_ok(api, account, user, agent_message="Anything else?")
    await conversation_when(api, account, data["conversation_id"], timed_out)
    await save_conversation(temporal, account, user, "help_answered_clock_stopped")


async def test_conversation_events_carried_over(
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    worker: None,
) -> None:
    """The webhook refuses the first conversation's events while the pair's next conversation
    starts: the first run cancels the post in flight and continues as new at once (marker
    `conversation-events-carried-over`), handing its events over; the next run posts them
    first, then its own, and times out."""
    run = secrets.token_hex(6)
    user = unique_numbers(1)[0]
    webhooks.answers[run] = [500] * 3
    schedule = {"webhook_retry_schedule_seconds": [1.0] * 10, "webhook_retry_jitter": 0.0}
    async with own_worker(temporal, settings, **schedule) as own, api_client(own) as api:
        first, _ = await next_conversation_while_refused(
            api, account, webhooks, run, user, **TIMERS
        )
        await webhooks.wait_for(run, "timeout")
        runs = await run_chain(temporal, first["workflow_id"])
    for number, history in enumerate(runs, start=1):
        save(history, "conversation", f"events_carried_over.run{number}")


async def test_conversation_handed_over_closed(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
    carrier: Configure,
) -> None:
    """Two sends opening conversations while the pair's run sends on a slow carrier: the
    first one's conversation, closed by the second before its run began, begins all the same
    (marker `conversation-handed-over-begins`) and ends `closed` when the second's message
    comes. Three runs: the busy one, the handed-over one, the last."""
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)
    await carrier(latency_ms=3000)
    first = await send_ok(api, account, user, agent_message="busy")
    await send_ok(
        api, account, user, agent_message="one", new_conversation=True, webhook=webhooks.url(run)
    )
    await send_ok(api, account, user, agent_message="two", new_conversation=True, **TIMERS)
    await webhooks.wait_for(run, "closed")
    await conversation_when(
        api, account, first["conversation_id"], lambda c: c["state"] == "closed"
    )
    workflow_id = conversation_workflow_id(str(account.account_id), account.agent_number, user)
    runs = await run_chain(temporal, workflow_id)
    for number, history in enumerate(runs, start=1):
        save(history, "conversation", f"handed_over_closed.run{number}")


async def test_conversation_settle_unsent(time_skipping: WorkflowEnvironment) -> None:
    """Every attempt of the first message's send fails other than by the carrier's answer
    (its workers die): the marker `conversation-settle-unsent` and `settle_unsent_message`
    after the last attempt. Recorded on the time-skipping test server with stub activities:
    the real stack cannot fail six attempts so without killing six workers."""
    stubs, handle = await run_with_a_failing_first_message(time_skipping)
    assert stubs.inputs("settle_unsent_message")
    # `settle_unsent.json` (a user's reply after, restarting the clock) is kept from before
    # `conversation-silence-after-agent-only`; the agent's next message follows here.
    await save_from_test_server(handle, "conversation", "settle_unsent_then_agent")


async def test_hand_over_to_newer(temporal: Client) -> None:
    """The marker `conversation-hand-over-to-newer`: a reply to the closing conversation,
    come while the run closed it, does not become the next. Its first run, the one that
    hands over; on the dev server with stub activities."""
    stubs, handle, closing, _ = await late_reply_while_handing_over(
        WorkflowEnvironment.from_client(temporal)
    )
    assert stubs.inputs("end_conversation")[0].conversation_id == closing
    first = temporal.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
    save(await first.fetch_history(), "conversation", "hand_over_to_newer")


async def test_refused_while_backing_off(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-serious-pause-over-back-off`: held past the back-off."""
    (_, handle, _), after_the_back_off = await throttled_then_refused(time_skipping)
    assert after_the_back_off.paused
    await save_from_test_server(handle, "batch", "refused_while_backing_off")


async def test_back_off_grows(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-back-off-grows`: the second back-off twice the first."""
    (_, handle, _), during = await throttled_twice(time_skipping)
    assert during.paused
    await save_from_test_server(handle, "batch", "back_off_grows")


async def test_retry_cancelled_while_reopening(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-cancel-during-reopen`: the rows back `failed`, `cancelled`."""
    stubs, handle, _ = await retry_cancelled_while_reopening(time_skipping)
    assert stubs.phases() == ["cancelled"]
    await save_from_test_server(handle, "batch", "retry_cancelled_while_reopening")


async def test_reply_before_due(time_skipping: WorkflowEnvironment) -> None:
    """The marker `conversation-reply-before-due`: no warning after the late reply."""
    stubs, handle = await reply_signalled_after_its_due(time_skipping)
    assert [m.kind for m in stubs.inputs("send_conversation_message")] == ["message"]
    await save_from_test_server(handle, "conversation", "reply_before_due")


async def save_from_test_server(handle: WorkflowHandle[Any, Any], kind: str, name: str) -> None:
    """Save the history of a run on the time-skipping test server. The test server leaves
    the workflow's id out of its first event, which the dev server and a cluster put there
    (tests/test_replay.py reads it): put in as they would."""
    recorded = json.loads((await handle.fetch_history()).to_json())
    started = recorded["events"][0]["workflowExecutionStartedEventAttributes"]
    started["workflowId"] = handle.id
    save(WorkflowHistory.from_json(handle.id, recorded), kind, name)


# Batch paths that need an activity held, or a signal at a moment the real stack cannot
# choose, recorded on the time-skipping test server with the fast tier's stub activities.


async def test_retry_cancelled_before_reopening(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-cancel-before-reopen`: a retry run cancelled with its start ends
    there, its rows as they were."""
    stubs, handle, result = await retry_cancelled_before_reopening(time_skipping)
    assert "reopen_rows" not in stubs.calls and result.status == "cancelled"
    await save_from_test_server(handle, "batch", "retry_cancelled_before_reopening")


async def test_retry_paused_and_resumed_while_reopening(
    time_skipping: WorkflowEnvironment,
) -> None:
    """The marker `batch-no-queued-on-resume`: no `queued` event on the resume."""
    stubs, handle, _ = await retry_paused_and_resumed_while_reopening(time_skipping)
    assert "queued" not in stubs.statuses()
    await save_from_test_server(handle, "batch", "retry_paused_and_resumed_while_reopening")


async def test_paused_while_reconciling(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-reconciled-waits-for-resume`: the `reconciled` chunk waits for the
    resume."""
    _, handle, _, before = await paused_while_reconciling(time_skipping)
    assert before[1]
    await save_from_test_server(handle, "batch", "paused_while_reconciling")


async def test_resumed_while_closing_expired(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-no-resume-after-expiry`: the resume is ignored."""
    stubs, handle, _ = await resumed_while_closing_expired(time_skipping)
    assert stubs.statuses()[-2:] == ["paused", "failed"]
    await save_from_test_server(handle, "batch", "resumed_while_closing_expired")


async def test_auto_paused_before_a_resume(time_skipping: WorkflowEnvironment) -> None:
    """The marker `batch-stale-auto-pause-ignored`: the pause met before the resume is
    ignored."""
    stubs, handle, _ = await auto_paused_before_and_after_a_resume(time_skipping)
    assert [u.reason for u in paused_by(stubs)] == [None, "after the resume"]
    await save_from_test_server(handle, "batch", "auto_paused_before_a_resume")


async def save_conversation(temporal: Client, account: Account, user: str, name: str) -> None:
    workflow_id = conversation_workflow_id(str(account.account_id), account.agent_number, user)
    [history] = await run_chain(temporal, workflow_id)
    save(history, "conversation", name)
