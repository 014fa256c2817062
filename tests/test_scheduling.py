"""Time: a batch scheduled for later waits on a durable timer, a spread batch paces its
sends over the window, and rows not sent by `expire_at` end `expired`."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from tests.support.batches import FINAL, phases, start, start_marked_batch
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver
from workflows.batch import BatchWorkflow
from workflows.contracts import SPREAD_CHUNK_ROWS, batch_workflow_id


def received_times(received: list[dict[str, Any]]) -> list[float]:
    return sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in received)


async def test_a_scheduled_batch_waits_then_sends(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    # Far enough ahead that the upload and the validation come first, on a loaded machine too.
    at = datetime.now(UTC) + timedelta(seconds=8)

    _, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(5), schedule_at=at.isoformat()
    )
    events = await webhooks.wait_for(marker, *FINAL)

    assert phases(events)[:3] == ["validating", "waiting_for_scheduled_messages", "dispatching"]
    assert events[-1]["status"] == "completed"
    times = received_times(await emulator_messages(emulator_url, body_contains=marker))
    assert len(times) == 5
    assert min(times) >= at.timestamp()


async def test_a_past_schedule_means_now(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)

    _, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(2), schedule_at=past.isoformat()
    )
    events = await webhooks.wait_for(marker, *FINAL)

    assert "waiting_for_scheduled_messages" not in phases(events)
    assert events[-1]["status"] == "completed"


async def test_spread_hours_paces_the_sends_over_the_window(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    window = 4.0  # seconds

    _, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(9), spread_hours=window / 3600
    )
    events = await webhooks.wait_for(marker, *FINAL)

    assert events[-1]["status"] == "completed"
    times = received_times(await emulator_messages(emulator_url, body_contains=marker))
    interval = window / 9
    assert len(times) == 9
    assert times[-1] - times[0] >= 8 * interval * 0.9
    # Paced, not a burst: no message goes before its turn. (A gap between two messages may
    # be short on a loaded machine, when one went late and the next on time.)
    for index, moment in enumerate(times):
        assert moment - times[0] >= (index - 1) * interval * 0.9, (index, times)


async def test_a_slow_spread_sends_in_chunks_small_enough_for_their_histories(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    # 1,000 rows over a week: a row every 605 s, each in a slice of its own (11 history
    # events); one chunk of the stack's 1,000 rows would near 11,000 events.
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(1000), spread_hours=168
    )
    await webhooks.wait_for(marker, "in_progress_chunked")
    progress = await temporal.get_workflow_handle(batch_workflow_id(file_id)).query(
        BatchWorkflow.progress
    )
    cancelled = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)
    events = await webhooks.wait_for(marker, *FINAL)

    assert (progress.recipients, progress.chunks_total) == (1000, 1000 // SPREAD_CHUNK_ROWS)
    assert cancelled.status_code == 200, cancelled.text
    assert events[-1]["status"] == "cancelled"


async def test_rows_not_sent_by_expire_at_end_expired(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    expire_at = datetime.now(UTC) + timedelta(seconds=3)

    file_id, marker = await start_marked_batch(
        api,
        account,
        webhooks,
        unique_numbers(10),
        spread_hours=10 / 3600,
        expire_at=expire_at.isoformat(),
    )
    events = await webhooks.wait_for(marker, *FINAL)

    final = events[-1]
    sent = await emulator_messages(emulator_url, body_contains=marker)
    assert final["status"] == "completed_partial"
    assert final["messages_successful"] == len(sent)
    assert 1 <= len(sent) <= 4
    assert final["messages_expired"] == 10 - len(sent)
    assert all(t < expire_at.timestamp() for t in received_times(sent))
    expired = (
        await api.get(
            f"/v1/sms/batch/{file_id}/messages",
            headers=account.headers,
            params={"status": "expired"},
        )
    ).json()["data"]["messages"]
    assert len(expired) == 10 - len(sent)
    # None of them went to the carrier: no attempt counted.
    assert {m["attempts"] for m in expired} == {0}


async def test_an_expiry_before_the_schedule_is_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    at = datetime.now(UTC) + timedelta(hours=2)

    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [unique_numbers(1)]))

    response = await start(
        api,
        account,
        file_id,
        schedule_at=at.isoformat(),
        expire_at=(at - timedelta(hours=1)).isoformat(),
    )
    naive = await start(api, account, file_id, schedule_at="2030-01-01T00:00:00")

    assert response.status_code == 400
    assert response.json()["errors"][0]["error"] == "INVALID_SCHEDULE"
    assert naive.status_code == 400
    assert naive.json()["errors"][0]["error"] == "INVALID_SCHEDULE"


@pytest.mark.parametrize(
    "moment",
    [
        {"expire_at": "2020-01-01T00:00:00Z"},
        {"expire_at": "1970-01-01T00:00:00Z"},
        {"schedule_at": 1767225600},
        {"schedule_at": "1767225600"},
        {"expire_at": 99999999999},
    ],
)
async def test_a_past_expiry_or_a_unix_time_is_refused(
    api: httpx.AsyncClient, account: Account, moment: dict[str, object]
) -> None:
    """A batch that could send nothing (every row would end `expired`; the epoch read as no
    expiry at all), or a number pydantic would take for Unix seconds or milliseconds."""
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [unique_numbers(1)]))

    response = await start(api, account, file_id, **moment)

    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["error"] == "INVALID_SCHEDULE"


@pytest.mark.parametrize(
    "moment",
    [
        {"schedule_at": "9999-12-31T23:59:59-14:00"},
        {"expire_at": "9999-12-31T23:00:00-01:00"},
        {"schedule_at": "0001-01-01T00:00:00+14:00"},
    ],
)
async def test_a_time_beyond_the_years_1_to_9999_in_utc_is_refused(
    api: httpx.AsyncClient, account: Account, moment: dict[str, str]
) -> None:
    # Valid as written, out of range once in UTC: the batch was accepted, then its workflow
    # failed each task on the date, for good, and its reads answered 500.
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [unique_numbers(1)]))

    response = await start(api, account, file_id, **moment)

    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["error"] == "INVALID_SCHEDULE"


async def test_a_spread_too_short_to_pace_sends_at_once(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    # Its interval between rows was so small that the slices' size overflowed: the chunk's
    # workflow task failed, again and again, and the batch never ended.
    numbers = unique_numbers(3)
    _, marker = await start_marked_batch(api, account, webhooks, numbers, spread_hours=1e-320)

    events = await webhooks.wait_for(marker, *FINAL)

    assert events[-1]["status"] == "completed"
    sent = await emulator_messages(emulator_url, body_contains=marker)
    assert sorted(m["to"] for m in sent) == numbers
