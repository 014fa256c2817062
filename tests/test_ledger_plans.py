"""A freshly validated batch's ledger has its statistics before its first slice: validation
samples the columns the send path selects rows by once its bulk COPY is in
(messages.refresh_statistics), so that no plan takes the new rows for absent and scans the
whole table for a slice."""

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from store import messages
from tests.support.batches import start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.stack import Account, WebhookReceiver


async def test_validation_samples_the_send_paths_columns_before_the_first_slice(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, pool: asyncpg.Pool
) -> None:
    posted = await pool.fetchval("SELECT now()")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(30), schedule_at=later
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")

    analysed = await pool.fetchval(
        "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'messages'"
    )
    sampled = await pool.fetch(
        "SELECT attname FROM pg_stats WHERE tablename = 'messages' AND attname = ANY($1)",
        list(messages.SEND_PATH_COLUMNS),
    )
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)

    assert analysed is not None and analysed >= posted
    assert {r["attname"] for r in sampled} == set(messages.SEND_PATH_COLUMNS)
