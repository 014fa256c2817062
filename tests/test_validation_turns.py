"""A worker validates at most `validations_at_once` large files at once; a small file never
waits for a turn, a validation waiting for one can be cancelled, and the gauge
`herald_validations` counts both states."""

import asyncio
import uuid
from typing import cast

import asyncpg
import httpx
from temporalio.testing import ActivityEnvironment

from activities.providers.twilio import TwilioCarrier
from activities.validation import ValidationActivities
from activities.validation_turns import SMALL_FILE_BYTES
from metrics import WorkerMetrics
from settings import Settings
from tests.support.batches import recorded_batch
from tests.support.sending import eventually
from tests.support.stack import Account
from workflows.contracts import ValidateInput, ValidationLimits, ValidationResult


def numbers_file(rows: int) -> bytes:
    """`rows` distinct valid numbers, each with a name long enough that a few thousand rows
    pass `SMALL_FILE_BYTES`. Validated only: nothing is sent to them."""
    name = "Alexandra-" * 6
    lines = (f"+1212{200 + n // 10_000}{n % 10_000:04d},{name}\n" for n in range(rows))
    return ("phone_number,first_name\n" + "".join(lines)).encode()


LARGE = numbers_file(15_000)
SMALL = numbers_file(100)
REQUEST = {"global": {"agent_number": "+15005550006", "agent_message": "Hi {{first_name}}"}}


async def ledger_rows(pool: asyncpg.Pool, batch_id: uuid.UUID) -> int:
    rows: int = await pool.fetchval("SELECT count(*) FROM messages WHERE batch_id = $1", batch_id)
    return rows


def gauge(metrics: WorkerMetrics, state: str) -> float:
    return metrics.registry.get_sample_value("herald_validations", {"state": state}) or 0.0


async def test_large_files_wait_for_a_turn_and_small_ones_do_not(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    assert len(LARGE) > SMALL_FILE_BYTES >= len(SMALL)
    metrics = WorkerMetrics()
    # Validation reaches neither the carrier nor a webhook.
    activities = ValidationActivities(
        pool=pool,
        carrier=cast(TwilioCarrier, None),
        http=cast(httpx.AsyncClient, None),
        settings=settings.model_copy(update={"validations_at_once": 1}),
        metrics=metrics,
    )

    async def validation(content: bytes) -> tuple[uuid.UUID, ActivityEnvironment, asyncio.Task]:
        batch_id = await recorded_batch(pool, account, REQUEST, content)
        environment = ActivityEnvironment()
        task = asyncio.create_task(
            environment.run(
                activities.validate_recipients,
                ValidateInput(batch_id=str(batch_id), limits=ValidationLimits()),
            )
        )
        return batch_id, environment, task

    async def waiting() -> float:
        return gauge(metrics, "waiting")

    # The only turn taken, as by a large file being validated.
    holder = activities._turns.turn(len(LARGE))
    await holder.__aenter__()
    try:
        first, _, first_task = await validation(LARGE)
        cancelled, cancelled_environment, cancelled_task = await validation(LARGE)
        await eventually(waiting, lambda count: count == 2)
        small, _, small_task = await validation(SMALL)
        small_result: ValidationResult = await asyncio.wait_for(small_task, 30)
        # A cancellation (the batch cancelled) reaches a validation waiting for its turn.
        cancelled_environment.cancel()
        await asyncio.wait_for(asyncio.gather(cancelled_task, return_exceptions=True), 30)
        await eventually(waiting, lambda count: count == 1)
        assert not first_task.done()
        held_back = await ledger_rows(pool, first)
    finally:
        await holder.__aexit__(None, None, None)
    first_result: ValidationResult = await asyncio.wait_for(first_task, 60)
    # The cancelled one gave back no turn it did not hold: the next still gets one.
    _, _, after_task = await validation(LARGE)
    after_result: ValidationResult = await asyncio.wait_for(after_task, 60)

    assert small_result.recipients == 100
    assert await ledger_rows(pool, small) == 100
    assert held_back == 0
    assert first_result.recipients == after_result.recipients == 15_000
    assert await ledger_rows(pool, cancelled) == 0
    assert (gauge(metrics, "waiting"), gauge(metrics, "running")) == (0, 0)
