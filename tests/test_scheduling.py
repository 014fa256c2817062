"""Time: a batch scheduled for later waits on a durable timer, a spread batch paces its
sends over the window, and rows not sent by `expire_at` end `expired`."""

import itertools
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.support.batches import FINAL, phases, start
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver


async def scheduled_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    count: int,
    **timing: Any,
) -> tuple[str, str, httpx.Response]:
    marker = secrets.token_hex(6)
    content = csv_bytes(["phone_number"], [[n] for n in unique_numbers(count)])
    file_id = await attach(api, account.headers, content)
    response = await start(
        api,
        account,
        file_id,
        status_webhook=webhooks.url(marker),
        **{"global": {"agent_number": account.agent_number, "agent_message": f"t {marker}"}},
        **timing,
    )
    return file_id, marker, response


def received_times(received: list[dict[str, Any]]) -> list[float]:
    return sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in received)


async def test_a_scheduled_batch_waits_then_sends(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=3)

    _, marker, response = await scheduled_batch(
        api, account, webhooks, 5, schedule_at=at.isoformat()
    )
    events = await webhooks.wait_for(marker, *FINAL)

    assert response.status_code == 200, response.text
    assert phases(events)[:3] == ["validating", "waiting_for_scheduled_messages", "dispatching"]
    assert events[-1]["status"] == "completed"
    times = received_times(await emulator_messages(emulator_url, body_contains=marker))
    assert len(times) == 5
    assert min(times) >= at.timestamp()


async def test_a_past_schedule_means_now(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)

    _, marker, _ = await scheduled_batch(api, account, webhooks, 2, schedule_at=past.isoformat())
    events = await webhooks.wait_for(marker, *FINAL)

    assert "waiting_for_scheduled_messages" not in phases(events)
    assert events[-1]["status"] == "completed"


async def test_spread_hours_paces_the_sends_over_the_window(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    window = 4.0  # seconds

    _, marker, _ = await scheduled_batch(api, account, webhooks, 9, spread_hours=window / 3600)
    events = await webhooks.wait_for(marker, *FINAL)

    assert events[-1]["status"] == "completed"
    times = received_times(await emulator_messages(emulator_url, body_contains=marker))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    interval = window / 9
    assert len(times) == 9
    assert times[-1] - times[0] >= 8 * interval * 0.9
    assert min(gaps) >= interval * 0.5  # paced, not a burst


async def test_rows_not_sent_by_expire_at_end_expired(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    expire_at = datetime.now(UTC) + timedelta(seconds=3)

    file_id, marker, _ = await scheduled_batch(
        api, account, webhooks, 10, spread_hours=10 / 3600, expire_at=expire_at.isoformat()
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


async def test_an_expiry_before_the_schedule_is_refused(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    at = datetime.now(UTC) + timedelta(hours=2)

    _, _, response = await scheduled_batch(
        api,
        account,
        webhooks,
        1,
        schedule_at=at.isoformat(),
        expire_at=(at - timedelta(hours=1)).isoformat(),
    )
    naive = await scheduled_batch(api, account, webhooks, 1, schedule_at="2030-01-01T00:00:00")

    assert response.status_code == 400
    assert response.json()["errors"][0]["error"] == "INVALID_SCHEDULE"
    assert naive[2].status_code == 400
    assert naive[2].json()["errors"][0]["error"] == "INVALID_SCHEDULE"
