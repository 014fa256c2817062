"""What Herald keeps only for a while is pruned by every API process as it starts (then
hourly): receipts kept past KEPT_RECEIPTS, expired idempotency keys, carrier tokens
retired past KEPT_RETIRED_TOKENS and files no batch was made from past
HERALD_UNUSED_FILE_DAYS; nothing younger. And the batches left `queued` with no
workflow are ended as never started."""

import asyncio
import secrets
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from api.models import BatchRequest
from api.services import batches as batch_service
from api.services.housekeeping import UNSTARTED_AFTER, end_unstarted_batches
from settings import Settings
from store import batches, idempotency
from store.carrier_accounts import KEPT_RETIRED_TOKENS
from store.events import FINAL_EVENT_FIELDS
from store.housekeeping import FILES_PER_DELETE, KEPT_RECEIPTS
from temporal_client import connect_temporal
from tests.support.batches import FINAL, recorded_batch, recorded_file, start
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.delivery import received
from tests.support.sending import eventually
from tests.support.stack import Account, WebhookReceiver, api_client, error_code
from workflows.contracts import batch_workflow_id


async def test_an_api_process_prunes_old_receipts_expired_keys_and_retired_tokens_as_it_starts(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    old, fresh = (f"SM{secrets.token_hex(16)}" for _ in range(2))
    await pool.execute(
        "INSERT INTO carrier_receipts (carrier_sid, status, received_at)"
        " VALUES ($1, 'delivered', now() - $3::interval), ($2, 'delivered', now())",
        old,
        fresh,
        KEPT_RECEIPTS + timedelta(hours=1),
    )
    expired, live = secrets.token_hex(8), secrets.token_hex(8)
    for key, ttl in ((expired, timedelta(seconds=-1)), (live, timedelta(hours=1))):
        assert await idempotency.claim(pool, account.account_id, key, "hash", ttl=ttl)

    old_token, fresh_token = (f"token-{secrets.token_hex(8)}" for _ in range(2))
    await pool.execute(
        "INSERT INTO retired_carrier_accounts (account_id, account_sid, auth_token, retired_at)"
        " VALUES ($1, 'AC1', $2, now() - $4::interval), ($1, 'AC1', $3, now())",
        account.account_id,
        old_token,
        fresh_token,
        KEPT_RETIRED_TOKENS + timedelta(hours=1),
    )

    async def tokens() -> set[str]:
        rows = await pool.fetch(
            "SELECT auth_token FROM retired_carrier_accounts WHERE account_id = $1",
            account.account_id,
        )
        return {r["auth_token"] for r in rows}

    async def left() -> tuple[set[str], set[str]]:
        receipts = await pool.fetch(
            "SELECT carrier_sid FROM carrier_receipts WHERE carrier_sid = ANY($1::text[])",
            [old, fresh],
        )
        keys = await pool.fetch(
            "SELECT key FROM idempotency_keys WHERE account_id = $1 AND key = ANY($2::text[])",
            account.account_id,
            [expired, live],
        )
        return {r["carrier_sid"] for r in receipts}, {r["key"] for r in keys}

    assert await left() == ({old, fresh}, {expired, live})
    async with api_client(settings):
        # The pass deletes receipts, then keys, in two statements: wait for both.
        remaining = await eventually(
            left, lambda found: old not in found[0] and expired not in found[1]
        )

        pruned_tokens = await eventually(tokens, lambda found: old_token not in found)

    assert remaining == ({fresh}, {live})
    assert pruned_tokens == {fresh_token}


async def test_an_api_process_deletes_the_files_no_batch_was_made_from_after_their_days(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    """An attached file no batch names is deleted once `HERALD_UNUSED_FILE_DAYS` have passed
    (every upload was kept for good, 40 MiB a request); a batch's file is kept with it, and
    a younger one is kept; they go a few at a time (FILES_PER_DELETE, each up to 40 MiB). A
    batch asked of a deleted file is 404 FILE_NOT_FOUND."""
    old_unused = [await recorded_file(pool, account) for _ in range(2 * FILES_PER_DELETE + 1)]
    fresh_unused = await recorded_file(pool, account)
    old_used = await recorded_batch(pool, account)
    ids = [*old_unused, fresh_unused, old_used]
    await pool.execute(
        "UPDATE files SET created_at = now() - $2::interval WHERE id = ANY($1::uuid[])",
        [*old_unused, old_used],
        timedelta(days=settings.unused_file_days, hours=1),
    )

    async def kept() -> set[uuid.UUID]:
        rows = await pool.fetch("SELECT id FROM files WHERE id = ANY($1::uuid[])", ids)
        return {r["id"] for r in rows}

    async with api_client(settings) as api:
        left = await eventually(kept, lambda found: not found & set(old_unused))
        refused = await start(
            api,
            account,
            str(old_unused[0]),
            **{"global": {"agent_number": account.agent_number, "agent_message": "hi"}},
        )

    assert left == {fresh_unused, old_used}
    assert (refused.status_code, error_code(refused)) == (404, "FILE_NOT_FOUND")


async def test_a_file_deleted_while_its_batch_is_made_is_file_not_found(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the batch's request, then deleted by housekeeping before the batch was
    recorded (the batch's reference to it): 404 FILE_NOT_FOUND, not a 500."""
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [unique_numbers(1)]))
    checks = batch_service._check_lists

    async def deleted_meanwhile(*args: Any) -> None:
        await pool.execute("DELETE FROM files WHERE id = $1", uuid.UUID(file_id))
        await checks(*args)

    monkeypatch.setattr(batch_service, "_check_lists", deleted_meanwhile)
    refused = await start(
        api,
        account,
        file_id,
        **{"global": {"agent_number": account.agent_number, "agent_message": "hi"}},
    )

    assert (refused.status_code, error_code(refused)) == (404, "FILE_NOT_FOUND")


class ApiStopped(Exception):
    """The API process stopping between recording a batch and starting its workflow."""


async def test_a_batch_its_api_stopped_before_starting_ends_not_started_and_its_request_starts_it(
    settings: Settings,
    api: httpx.AsyncClient,
    pool: asyncpg.Pool,
    temporal: Client,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = secrets.token_hex(6)
    numbers = unique_numbers(2)
    file_id = await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in numbers])
    )
    request = {
        "global": {"agent_number": account.agent_number, "agent_message": f"batch {marker}"},
        "status_webhook": webhooks.url(marker),
    }
    inline = {
        "recipients": [{"phone_number": n} for n in unique_numbers(2)],
        "global": {
            "agent_number": account.agent_number,
            "agent_message": "Hello",
            "metadata": {"order": "7"},
        },
    }

    async def stop(*args: Any) -> None:
        raise ApiStopped

    # Two batches recorded, their workflows never started: one of a file, one inline, each
    # left so past UNSTARTED_AFTER; and an inline one left so just now.
    with monkeypatch.context() as patched:
        patched.setattr(batch_service, "_start_workflow", stop)
        for body in ({"file_id": file_id, **request}, inline, inline):
            with pytest.raises(ApiStopped):
                await batch_service.start_batch(
                    pool, temporal, settings, account.account_id, BatchRequest.model_validate(body)
                )
    stranded = await pool.fetch(
        "SELECT id, status FROM batches WHERE account_id = $1 ORDER BY created_at",
        account.account_id,
    )
    file_batch, inline_batch, recent = (row["id"] for row in stranded)
    # Two `queued` batches whose workflows exist, left as long: one running (on a task queue
    # no worker polls, so it stays `queued`), one closed.
    idle = settings.model_copy(update={"task_queue": f"no-worker-{secrets.token_hex(4)}"})
    async with api_client(idle) as unworked:
        started = [
            await start(
                unworked,
                account,
                await attach(api, account.headers, one),
                **{"global": inline["global"]},
            )
            for one in (csv_bytes(["phone_number"], [[n]]) for n in unique_numbers(2))
        ]
    running, closed = (uuid.UUID(r.json()["data"]["batch_id"]) for r in started)
    await temporal.get_workflow_handle(batch_workflow_id(str(closed))).terminate("test")
    await pool.execute(
        "UPDATE batches SET created_at = created_at - $2::interval,"
        " updated_at = updated_at - $2::interval WHERE id = ANY($1::uuid[])",
        [file_batch, inline_batch, running, closed],
        UNSTARTED_AFTER + timedelta(minutes=1),
    )

    # While Temporal cannot be asked, nothing is ended.
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    assert await end_unstarted_batches(pool, await connect_temporal(down, lazy=True)) == []
    # Two API processes at it at once end each batch once.
    ended = await asyncio.gather(*(end_unstarted_batches(pool, temporal) for _ in range(2)))
    after = {
        row["id"]: (row["status"], row["code"], row["reason"])
        for row in await pool.fetch(
            "SELECT id, status, code, reason FROM batches WHERE account_id = $1",
            account.account_id,
        )
    }
    logs = (await api.get(f"/v1/sms/batch/{inline_batch}/logs", headers=account.headers)).json()
    cancel = await api.post(f"/v1/sms/batch/{inline_batch}/cancel", headers=account.headers)
    again = await start(api, account, file_id, **request)
    final = (await webhooks.wait_for(marker, *FINAL))[-1]
    file_logs = (await api.get(f"/v1/sms/batch/{file_id}/logs", headers=account.headers)).json()
    await temporal.get_workflow_handle(batch_workflow_id(str(running))).terminate("test")

    assert sorted(b for found in ended for b in found if b in after) == sorted(
        [file_batch, inline_batch]
    )
    not_started = ("failed", "not_started", "the API stopped before starting it; nothing was sent")
    assert after[inline_batch] == not_started
    assert after[recent] == after[running] == after[closed] == ("queued", None, None)
    [event] = logs["data"]["events"]
    assert event["seq"] == 1
    assert {k: v for k, v in event["payload"].items() if k != "timestamp"} == {
        "batch_id": str(inline_batch),
        "workflow_id": batch_workflow_id(str(inline_batch)),
        "status": "failed",
        "code": "not_started",
        "reason": not_started[2],
        "metadata": {"order": "7"},
        **{f"messages_{name}": 0 for name in FINAL_EVENT_FIELDS},
    }
    assert error_code(cancel) == "BATCH_ALREADY_FINISHED"
    # The file's request again starts its batch, its events numbered after the end's.
    assert again.status_code == 200, again.text
    assert final["status"] == "completed"
    assert sorted(m["to"] for m in await received(emulator_url, marker)) == sorted(numbers)
    statuses = [(e["seq"], e["status"]) for e in file_logs["data"]["events"]]
    assert statuses[:2] == [(1, "failed"), (2, "validating")]


async def _stranded_file_batch(
    api: httpx.AsyncClient,
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account: Account,
) -> tuple[uuid.UUID, dict[str, Any]]:
    """A file's batch recorded and left `queued` past UNSTARTED_AFTER, its workflow never
    started (its API process stopped first); and its request."""
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [unique_numbers(1)]))
    request = {"global": {"agent_number": account.agent_number, "agent_message": "again"}}

    async def stop(*args: Any) -> None:
        raise ApiStopped

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(batch_service, "_start_workflow", stop)
        with pytest.raises(ApiStopped):
            await batch_service.start_batch(
                pool,
                temporal,
                settings,
                account.account_id,
                BatchRequest.model_validate({"file_id": file_id, **request}),
            )
    await pool.execute(
        "UPDATE batches SET created_at = created_at - $2::interval,"
        " updated_at = updated_at - $2::interval WHERE id = $1",
        uuid.UUID(file_id),
        UNSTARTED_AFTER + timedelta(minutes=1),
    )
    return uuid.UUID(file_id), request


async def _ends_unstarted(pool: asyncpg.Pool, batch_id: uuid.UUID) -> bool:
    """Housekeeping's end of the batch, its Temporal having said no workflow a moment ago."""
    return await batches.end_unstarted(
        pool,
        batch_id,
        older_than=UNSTARTED_AFTER,
        code=batches.NOT_STARTED,
        reason="the API stopped before starting it",
        event={"status": "failed"},
    )


async def _start_idle(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account: Account,
    batch_id: uuid.UUID,
    request: dict[str, Any],
) -> None:
    """The batch's request again, as its route runs it, the workflow on a task queue no
    worker polls (it records no event); not through an API app, whose own housekeeping
    would end the batch as it starts."""
    idle = settings.model_copy(update={"task_queue": f"no-worker-{secrets.token_hex(4)}"})
    await batch_service.start_batch(
        pool,
        temporal,
        idle,
        account.account_id,
        BatchRequest.model_validate({"file_id": str(batch_id), **request}),
    )


async def test_a_batch_its_request_starts_as_housekeeping_looks_is_not_ended(
    settings: Settings,
    api: httpx.AsyncClient,
    pool: asyncpg.Pool,
    temporal: Client,
    account: Account,
) -> None:
    """Housekeeping found no workflow for the batch; the request again starts it before
    housekeeping ends it: the batch is not ended, as its workflow runs."""
    batch_id, request = await _stranded_file_batch(api, pool, temporal, settings, account)
    await _start_idle(pool, temporal, settings, account, batch_id, request)
    ended = await _ends_unstarted(pool, batch_id)
    row = await pool.fetchrow("SELECT status, code FROM batches WHERE id = $1", batch_id)
    await temporal.get_workflow_handle(batch_workflow_id(str(batch_id))).terminate("test")

    assert not ended
    assert (row["status"], row["code"]) == ("queued", None)


async def test_a_batch_housekeeping_ends_as_its_request_starts_it_is_started_after_the_end(
    settings: Settings,
    api: httpx.AsyncClient,
    pool: asyncpg.Pool,
    temporal: Client,
    account: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Housekeeping ends the batch just after the request again read it `queued`: the
    request starts it as the new attempt at an ended one, not a workflow under a batch
    `failed`."""
    batch_id, request = await _stranded_file_batch(api, pool, temporal, settings, account)
    recorded = batches.create_batch

    async def read_then_ended(*args: Any, **kwargs: Any) -> Any:
        found = await recorded(*args, **kwargs)
        assert await _ends_unstarted(pool, batch_id)
        return found

    monkeypatch.setattr(batch_service.batches, "create_batch", read_then_ended)
    await _start_idle(pool, temporal, settings, account, batch_id, request)
    row = await pool.fetchrow("SELECT status, code FROM batches WHERE id = $1", batch_id)
    await temporal.get_workflow_handle(batch_workflow_id(str(batch_id))).terminate("test")

    assert (row["status"], row["code"]) == ("queued", None)
