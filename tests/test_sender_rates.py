"""A sender's rate limit is bounded (0.01 to 10,000 messages a second) at the API and in the
database, and pacing costs the same memory whatever the rate."""

import asyncio
import json
import secrets
import sys
from collections import deque
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

import activities.pacing
from activities.pacing import SenderPacer
from api.services.batches import dispatch_settings
from settings import Settings
from store import numbers
from tests.support.batches import start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.stack import Account, WebhookReceiver, error_code
from workflows.contracts import Timing, batch_workflow_id

OUT_OF_RANGE: list[Any] = [1e10, 2e10, 1e308, 1e-300, 0.001, 0, -1, 10_000.5, "Infinity", "NaN"]
# JSON's non-finite literals, which Python's json module reads as floats.
NON_FINITE_LITERALS = ["Infinity", "-Infinity", "NaN", "1e400"]
MIGRATION_050 = (resources.files("store") / "migrations" / "050_sender_mps_range.sql").read_text(
    encoding="utf-8"
)


@pytest.mark.parametrize("mps", OUT_OF_RANGE)
async def test_a_rate_outside_the_range_is_refused_when_registering_and_changing(
    api: httpx.AsyncClient, account: Account, mps: Any
) -> None:
    added = await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": "+15005550008", "mps": mps}
    )
    changed = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": mps}
    )

    assert (added.status_code, error_code(added)) == (400, "INVALID_MPS"), added.text
    assert (changed.status_code, error_code(changed)) == (400, "INVALID_MPS"), changed.text


@pytest.mark.parametrize("literal", NON_FINITE_LITERALS)
async def test_a_non_finite_json_rate_is_refused(
    api: httpx.AsyncClient, account: Account, literal: str
) -> None:
    response = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}",
        headers=account.headers | {"content-type": "application/json"},
        content=f'{{"mps": {literal}}}',
    )

    assert response.status_code == 400, response.text
    listed = await api.get("/v1/sms/numbers", headers=account.headers)
    assert [n["mps"] for n in listed.json()["data"]["numbers"]] == [None]


@pytest.mark.parametrize("mps", [0.01, 10_000])
async def test_the_ends_of_the_range_are_accepted_and_reserve_slots(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account: Account, mps: float
) -> None:
    response = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": mps}
    )
    assert response.status_code == 200, response.text

    slots = await numbers.reserve_slots(
        pool, account.agent_number, seconds=activities.pacing.TRANCHE_SECONDS
    )

    assert slots is not None
    assert slots.count == max(1, round(mps * activities.pacing.TRANCHE_SECONDS))
    assert slots.interval == pytest.approx(1 / mps)


async def test_the_database_refuses_a_rate_outside_the_range(
    pool: asyncpg.Pool, account: Account
) -> None:
    for mps in (1e10, float("inf"), float("nan"), 1e-300):
        with pytest.raises(asyncpg.CheckViolationError):
            await numbers.update_number(
                pool, account.account_id, account.agent_number, {"mps": mps}
            )


async def test_the_migration_brings_stored_rates_into_the_range(
    pool: asyncpg.Pool, account: Account
) -> None:
    stored: dict[str, float | None] = {
        "+15005550101": 1e10,
        "+15005550102": float("inf"),
        "+15005550103": float("nan"),
    }
    stored |= {"+15005550104": 1e-300, "+15005550105": 5.0, "+15005550106": None}
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            # The schema as it was before 050, with rows it let in; undone by the rollback.
            await conn.execute(
                "ALTER TABLE sender_numbers DROP CONSTRAINT sender_numbers_mps_range,"
                " ADD CONSTRAINT sender_numbers_mps_check CHECK (mps > 0)"
            )
            for number, mps in stored.items():
                await numbers.add_number(conn, account.account_id, number, "sms", mps)
            await conn.execute(MIGRATION_050)
            rows = await conn.fetch(
                "SELECT number, mps FROM sender_numbers WHERE account_id = $1 AND number = ANY($2)",
                account.account_id,
                list(stored),
            )
        finally:
            await transaction.rollback()

    assert {r["number"]: r["mps"] for r in rows} == {
        "+15005550101": 10_000,
        "+15005550102": 10_000,
        "+15005550103": 10_000,
        "+15005550104": 0.01,
        "+15005550105": 5.0,
        "+15005550106": None,
    }


async def test_the_pacer_holds_no_send_time_per_slot(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account: Account
) -> None:
    response = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": 10_000}
    )
    assert response.status_code == 200, response.text
    pacer = SenderPacer(pool, account.agent_number)
    stopping = asyncio.Event()

    # The first turn reserves 2,000 send times; the next ones are taken from them.
    turns = [await pacer.turn(stopping) for _ in range(3)]

    # What the pacer itself keeps (its pool and lock aside), containers walked. Measured so
    # rather than with tracemalloc: stopping it while the session's worker threads ran
    # crashed the test process (the xdist worker died with it).
    kept = {name: value for name, value in vars(pacer).items() if name not in ("_pool", "_lock")}
    assert turns == [True, True, True]
    assert deep_size(kept) < 4096, f"the pacer keeps {deep_size(kept)} bytes for one reservation"


def deep_size(value: object) -> int:
    """`value`'s size with that of every container's items, recursively."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        return size + sum(deep_size(k) + deep_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset | deque):
        return size + sum(deep_size(item) for item in value)
    if hasattr(value, "__dict__"):
        return size + deep_size(vars(value))
    return size


@pytest.mark.parametrize("mps", [0.01, 0.05, 0.1, 0.16, 0.5, 1, 10, 100, 10_000])
def test_a_senders_slices_in_flight_wait_no_longer_than_a_slice_or_one_rows_turn(
    settings: Settings, mps: float
) -> None:
    # At 0.01 mps a batch ran 8 slices of one row at once, each booking its turn 100 s after
    # the one before: the last waited 700 s, past its activity's 10 minutes, and each retry
    # booked a turn further on, so the batch never ended.
    dispatch = dispatch_settings(settings, mps, Timing())

    in_flight = dispatch.chunk_window * dispatch.slices_in_flight
    # The last row of the slices in flight goes this long after the first.
    waited = in_flight * dispatch.slice_size / mps
    assert waited <= max(settings.slice_seconds, 1 / mps) * 1.0001, (in_flight, dispatch)
    assert in_flight >= 1 and dispatch.slice_size >= 1


@pytest.mark.parametrize(("mps", "slice_size"), [(None, 250), (2.0, 12), (0.01, 1)])
async def test_a_rate_limited_senders_batch_gets_slices_of_slice_seconds_of_its_rate(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    mps: float | None,
    slice_size: int,
) -> None:
    """This session's settings: slices of 250 and 50 s of a limited sender's rate, shared by
    the batch's 8 slices in flight (4 chunks of 2): 2 msg/s, 12.5 rows to a slice. Each slice
    of 100 rows (50 s of the whole rate) took 400 s, past the worker's shutdown grace."""
    await numbers.update_number(pool, account.account_id, account.agent_number, {"mps": mps})
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    file_id, _ = await start_marked_batch(
        api, account, webhooks, unique_numbers(3), schedule_at=later
    )
    history = await temporal.get_workflow_handle(batch_workflow_id(file_id)).fetch_history()
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    started = history.events[0].workflow_execution_started_event_attributes
    [payload] = started.input.payloads
    assert (settings.slice_size, settings.slice_seconds) == (250, 50.0)
    assert (settings.chunk_window, settings.slices_in_flight) == (4, 2)
    dispatch = json.loads(payload.data)["dispatch"]
    assert dispatch["slice_size"] == slice_size
    # The rate itself, by which a large batch's chunks hold at most a minute of sending.
    assert dispatch["sender_mps"] == mps


async def test_a_lists_own_rate_limited_sender_sizes_the_batchs_slices(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    temporal: Client,
) -> None:
    # Only the batch's sender and its rows' were counted: a list's slow sender got slices of
    # the whole default size, each far past its worker's shutdown grace.
    sender = f"Slow{secrets.token_hex(3)}"
    registered = await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": sender, "mps": 2.0}
    )
    assert registered.status_code == 201, registered.text
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "slow"})
    list_id = created.json()["data"]["id"]
    [number] = unique_numbers(1)
    added = await api.post(
        f"/v1/lists/{list_id}/contacts",
        headers=account.headers,
        json={"contacts": [{"phone_number": number}]},
    )
    assert added.status_code == 200, added.text
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "lists": [{"id": list_id, "agent_number": sender}],
            "global": {"agent_number": account.agent_number, "agent_message": "hi"},
            "schedule_at": later,
            "status_webhook": webhooks.url(secrets.token_hex(6)),
        },
    )
    assert response.status_code == 200, response.text
    batch_id = response.json()["data"]["batch_id"]
    history = await temporal.get_workflow_handle(batch_workflow_id(batch_id)).fetch_history()
    await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    [payload] = history.events[0].workflow_execution_started_event_attributes.input.payloads
    # As the batch's own sender at 2 msg/s (the test above): 12 rows to a slice.
    assert json.loads(payload.data)["dispatch"]["slice_size"] == 12
