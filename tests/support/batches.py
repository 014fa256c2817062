"""The batch driver: start batches through the API and follow them to their end."""

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from store.batches import create_batch
from tests.support.builders import attach, csv_bytes
from tests.support.stack import Account, WebhookReceiver

FINAL = ("completed", "completed_partial", "failed", "cancelled")


def phases(events: list[dict]) -> list[str]:
    """The distinct statuses in arrival order (progress repeats a status)."""
    seen: list[str] = []
    for event in events:
        if not seen or seen[-1] != event["status"]:
            seen.append(event["status"])
    return seen


async def start(
    api: httpx.AsyncClient, account: Account, file_id: str, **body: object
) -> httpx.Response:
    payload: dict[str, object] = {
        "file_id": file_id,
        "global": {"agent_number": account.agent_number},
    }
    payload.update(body)
    return await api.post("/v1/sms/batch", headers=account.headers, json=payload)


async def start_marked_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    recipients: list[str] | bytes,
    *,
    message: str | None = None,
    marker: str | None = None,
    **options: object,
) -> tuple[str, str]:
    """Attach `recipients` (numbers, or a whole file) and start a batch on them with request
    `options`; check it started. The marker (fresh unless given) names the batch's webhook
    path and, unless `message` is given, is in every body; `message=""` sends none.
    Returns (file_id, marker)."""
    marker = marker or secrets.token_hex(6)
    content = (
        recipients
        if isinstance(recipients, bytes)
        else csv_bytes(["phone_number"], [[n] for n in recipients])
    )
    file_id = await attach(api, account.headers, content)
    response = await start(
        api,
        account,
        file_id,
        status_webhook=webhooks.url(marker),
        **{"global": _global_fields(account, marker, message)},
        **options,
    )
    assert response.status_code == 200, response.text
    return file_id, marker


def _global_fields(account: Account, marker: str, message: str | None) -> dict[str, str]:
    """The batch's `global`: its message is the marked one, the one given, or none for ""
    (the sender's opening message, or the rows' own)."""
    fields = {"agent_number": account.agent_number}
    if message != "":
        fields["agent_message"] = f"batch {marker}" if message is None else message
    return fields


def in_an_hour() -> str:
    """A `schedule_at` an hour off: a batch validates its file, then waits, sending none."""
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


async def waiting_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    recipients: list[str] | bytes,
) -> str:
    """A batch of `recipients` waiting an hour for its `schedule_at`: its run open, sending
    nothing, once its `waiting_for_scheduled_messages` event is in. Its file id."""
    file_id, marker = await start_marked_batch(
        api, account, webhooks, recipients, schedule_at=in_an_hour()
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    return file_id


async def run_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    recipients: list[str] | bytes,
    message: str | None = None,
    **options: Any,
) -> tuple[str, list[dict]]:
    """Start a marked batch and wait for its final webhook event; (file_id, its events)."""
    file_id, marker = await start_marked_batch(
        api, account, webhooks, recipients, message=message, **options
    )
    return file_id, await webhooks.wait_for(marker, *FINAL)


async def wait_for_status(
    api: httpx.AsyncClient, account: Account, file_id: str, *statuses: str
) -> dict:
    async with asyncio.timeout(60):
        while True:
            batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()
            if batch["data"]["status"] in statuses:
                return batch["data"]
            await asyncio.sleep(0.2)


async def stored_files(pool: asyncpg.Pool, account: Account) -> int:
    """How many files the account has stored."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM files WHERE account_id = $1", account.account_id
    )
    return count


async def recorded_file(conn: asyncpg.Pool | asyncpg.Connection, account: Account) -> uuid.UUID:
    """An empty file of the account, for a batch."""
    file_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO files (id, account_id, filename, content_type, size_bytes,"
        " content) VALUES ($1, $2, 'recorded.csv', 'text/csv', 0, '')",
        file_id,
        account.account_id,
    )
    return file_id


async def recorded_batch(
    conn: asyncpg.Pool | asyncpg.Connection,
    account: Account,
    request: dict[str, Any] | None = None,
) -> uuid.UUID:
    """A batch of the account with an empty file, recorded only (no workflow)."""
    batch_id = await recorded_file(conn, account)
    assert await create_batch(
        conn,  # type: ignore[arg-type]
        batch_id=batch_id,
        account_id=account.account_id,
        workflow_id=f"recorded-{batch_id}",
        name=None,
        agent_number=account.agent_number,
        request=request or {},
        request_hash="",
    )
    return batch_id


async def sending_batch(
    conn: asyncpg.Pool | asyncpg.Connection,
    account: Account,
    request: dict[str, Any] | None = None,
) -> uuid.UUID:
    """A batch of the account recorded only (`recorded_batch`), shown `in_progress`: one of
    its sending batches, as reconciliation and the send path look for them."""
    batch_id = await recorded_batch(conn, account, request)
    await conn.execute("UPDATE batches SET status = 'in_progress' WHERE id = $1", batch_id)
    return batch_id
