"""A sender's rate limit holds for one batch, and across batches and workers at once."""

import asyncio
import secrets

import httpx
from temporalio.client import Client

from settings import Settings
from tests.support.batches import run_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import rate
from tests.support.stack import Account, WebhookReceiver
from worker import herald_worker


async def set_limit(api: httpx.AsyncClient, account: Account, mps: float | None) -> None:
    response = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": mps}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["mps"] == mps


async def test_a_batch_never_sends_faster_than_its_sender_allows(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    measured = {}
    for mps, count in ((10, 41), (200, 1001)):
        await set_limit(api, account, mps)
        marker = f"rate {mps} {secrets.token_hex(6)}"
        await run_batch(api, account, webhooks, unique_numbers(count), marker)
        received = await emulator_messages(emulator_url, body_contains=marker)
        assert len(received) == count
        measured[mps] = rate(received)

    # Never faster than the limit (5% for clock granularity). The lower bounds only catch a
    # pacer that sends far too slowly: a shared machine under load loses time between
    # reservations (CI measured 144/s at 200), and `make bench-rates` measures accuracy.
    assert 8 <= measured[10] <= 10.5
    assert 100 <= measured[200] <= 210


async def test_the_limit_holds_across_concurrent_batches_and_workers(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    settings: Settings,
) -> None:
    await set_limit(api, account, 20)
    marker = f"shared {secrets.token_hex(6)}"
    # A worker of its own connection, as another process would have.
    other_client = await Client.connect(settings.temporal_target)

    async with herald_worker(other_client, settings) as second_worker, second_worker:
        await asyncio.gather(
            *(run_batch(api, account, webhooks, unique_numbers(40), marker) for _ in range(3))
        )

    received = await emulator_messages(emulator_url, body_contains=marker)
    assert len(received) == 120
    assert 16 <= rate(received) <= 21


async def test_a_number_registered_without_a_limit_gets_the_default(
    api: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    response = await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": "+12015550177"}
    )
    unlimited = await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": "+12015550178", "mps": None}
    )
    refused = await api.patch(
        "/v1/sms/numbers/+12015550177", headers=account.headers, json={"mps": 0}
    )
    unknown = await api.patch(
        "/v1/sms/numbers/+12015550179", headers=account.headers, json={"mps": 5}
    )

    assert response.json()["data"]["mps"] == settings.default_sender_mps
    assert unlimited.json()["data"]["mps"] is None
    assert refused.status_code == 400
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["error"] == "NUMBER_NOT_FOUND"
