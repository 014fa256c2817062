"""What delivery tests check after a batch: the ledger row by row against what the carrier
emulator received, and workers of their own for tests that change carrier settings."""

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from settings import Settings
from store import messages, receipts
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.pages import every_item
from tests.support.sending import WAIT_SECONDS
from tests.support.stack import Account, WebhookReceiver, api_client
from worker import herald_worker

TERMINAL = {"sent", "delivered", "undelivered", "failed", "skipped", "cancelled", "uncertain"}


async def received(emulator_url: str, marker: str) -> list[dict[str, Any]]:
    return await emulator_messages(emulator_url, body_contains=marker)


async def wait_until_received(emulator_url: str, marker: str, count: int) -> None:
    async with asyncio.timeout(60):
        while len(await received(emulator_url, marker)) < count:  # noqa: ASYNC110 - polling
            await asyncio.sleep(0.1)


def rate(received: list[dict[str, Any]]) -> float:
    """Messages per second between the first and the last one the carrier received."""
    times = sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in received)
    return (len(times) - 1) / (times[-1] - times[0])


def no_faster_than(received: list[dict[str, Any]], mps: float) -> bool:
    """Whether the carrier received these no faster than `mps`: the span from the first to
    the last at least their count's at that rate, less 0.1 s for the time each request takes
    to arrive after its turn (a few messages' span is tenths of a second: a ratio of rates
    left a loaded machine tens of milliseconds)."""
    times = sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in received)
    return times[-1] - times[0] >= (len(times) - 1) / mps - 0.1


async def receipts_applied(pool: asyncpg.Pool, sids: list[str]) -> None:
    """Wait until the API's appliers have taken every queued receipt of `sids`."""
    async with asyncio.timeout(60):
        while await pool.fetchval(  # noqa: ASYNC110 - polling
            "SELECT count(*) FROM receipt_queue WHERE carrier_sid = ANY($1::text[])", sids
        ):
            await asyncio.sleep(0.05)


@asynccontextmanager
async def appliers_idle() -> AsyncIterator[None]:
    """The API's receipt appliers apply nothing until the block ends: `store.receipts.
    apply_queued` answers none, and the block begins once an applier has met that (so no
    call of the real one is under way). For a test that queues a receipt, then locks it."""
    met = asyncio.Event()

    async def nothing(pool: asyncpg.Pool, limit: int) -> list[Any]:
        met.set()
        return []

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(receipts, "apply_queued", nothing)
        async with asyncio.timeout(WAIT_SECONDS):
            await met.wait()
        yield


async def ledger_rows(api: httpx.AsyncClient, account: Account, file_id: str) -> list[dict]:
    """Every ledger row of a batch, through the paged messages endpoint."""
    return await every_item(api, account, f"/v1/sms/batch/{file_id}/messages", "messages")


def assert_each_row_once(rows: list[dict], received: list[dict[str, Any]], total: int) -> Counter:
    """Every row is in one terminal state; each accepted row's number reached the carrier
    exactly once; a number that reached it while its row says otherwise is `uncertain`; no
    number reached it twice. Returns the rows by status."""
    statuses = Counter(r["status"] for r in rows)
    per_number = Counter(m["to"] for m in received)
    # A row the carrier accepted, as far as the ledger knows, has its carrier_sid.
    accepted = [r for r in rows if r["carrier_sid"] is not None]
    assert sum(statuses.values()) == len(rows) == total
    assert set(statuses) <= TERMINAL, statuses
    assert all(per_number[r["to_number"]] == 1 for r in accepted)
    assert all(r["status"] in {"sent", "delivered", "undelivered", "failed"} for r in accepted)
    unaccounted = [
        r
        for r in rows
        if per_number[r["to_number"]] and r["carrier_sid"] is None and r["status"] != "uncertain"
    ]
    assert unaccounted == []
    assert max(per_number.values(), default=1) == 1, per_number.most_common(3)
    assert set(per_number) <= {r["to_number"] for r in rows}
    return statuses


@asynccontextmanager
async def own_worker(
    temporal: Client, settings: Settings, **changes: Any
) -> AsyncIterator[Settings]:
    """An in-process worker on a task queue of its own, with `changes` to its settings; yields
    the settings an API must use so that only this worker runs its batches."""
    own = settings.model_copy(update={"task_queue": f"herald-{uuid.uuid4().hex[:8]}", **changes})
    async with herald_worker(temporal, own) as worker, worker:
        yield own


async def terminate_once_started(temporal: Client, workflow_id: str) -> None:
    """Terminate the workflow `workflow_id` (a batch's chunk, say) as soon as it has started,
    as an operator's Terminate in the web UI does."""
    handle = temporal.get_workflow_handle(workflow_id)
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(RPCError):
                await handle.describe()
                break
            await asyncio.sleep(0.05)
    await handle.terminate()


async def run_on_own_worker(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    recipients: list[str],
    **changes: Any,
) -> tuple[str, str, list[dict], list[dict]]:
    """A marked batch of `recipients` run to its final event by a worker of its own
    (own_worker, with `changes` to its settings); its file id, marker, events and ledger rows."""
    async with own_worker(temporal, settings, **changes) as own, api_client(own) as api:
        file_id, marker = await start_marked_batch(api, account, webhooks, recipients)
        events = await webhooks.wait_for(marker, *FINAL)
        return file_id, marker, events, await ledger_rows(api, account, file_id)


def receipt(sid: str, status: str, error_code: str | None = None) -> dict[str, str]:
    """The form of a Twilio status callback."""
    form = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
    }
    if error_code:
        form["ErrorCode"] = error_code
    return form


async def sent_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, count: int
) -> tuple[str, list[dict]]:
    """A finished batch of `count` sent messages, and its ledger rows in seq order."""
    file_id, marker = await start_marked_batch(api, account, webhooks, unique_numbers(count))
    await webhooks.wait_for(marker, *FINAL)
    rows = await ledger_rows(api, account, file_id)
    assert {r["status"] for r in rows} == {"sent"}
    return file_id, rows


async def answer_when_its_insert_fails(
    pool: asyncpg.Pool, post: Callable[[], Coroutine[Any, Any, httpx.Response]]
) -> httpx.Response:
    """The answer to `post` (of one final receipt) when the statement taking it fails
    (receipts.take_receipts), and so does the intake's one new attempt on another connection
    (one lost connection it rides out: api/services/receipts.py)."""
    return await answer_when_statement_fails(
        pool, post, table="receipt_queue", statement="WITH r AS (%INSERT INTO receipt_queue%"
    )


async def answer_when_statement_fails(
    pool: asyncpg.Pool,
    post: Callable[[], Coroutine[Any, Any, httpx.Response]],
    *,
    table: str,
    statement: str,
) -> httpx.Response:
    """The answer to `post` when each of its statements like `statement` (a LIKE pattern)
    fails: it waits behind a lock on `table`, then its backend is killed mid-statement, again
    until `post` is answered."""
    async with pool.acquire() as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        posting = asyncio.create_task(post())
        async with asyncio.timeout(WAIT_SECONDS):
            while not posting.done():
                await pool.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE $1",
                    statement,
                )
                await asyncio.wait([posting], timeout=0.1)
        failed = await posting
        await transaction.rollback()
    return failed


async def scheduled_rows(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
    count: int,
) -> tuple[str, list[int]]:
    """A batch scheduled for later, its `count` rows `pending` in its ledger; its file id and
    the rows' seqs."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(count), schedule_at=later
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    seqs = [
        r["seq"]
        for r in await pool.fetch(
            "SELECT seq FROM messages WHERE batch_id = $1 ORDER BY seq", uuid.UUID(file_id)
        )
    ]
    return file_id, seqs


async def rows_on_the_wire(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    pool: asyncpg.Pool,
    count: int,
) -> tuple[str, list[int]]:
    """A batch scheduled for later (scheduled_rows), its `count` rows marked `sending` as a
    slice's wave marks them before they go on the wire; its file id and the rows' seqs."""
    file_id, seqs = await scheduled_rows(api, account, webhooks, pool, count)
    marked = await messages.write_outcomes(pool, uuid.UUID(file_id), [], mark=seqs)
    assert marked.marked == dict.fromkeys(seqs, 1)
    return file_id, seqs
