"""Short links of batch messages and their clicks (table `short_links`)."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

LINK_COLUMNS = ("code", "batch_id", "seq", "account_id", "url")


@dataclass(frozen=True, slots=True)
class Click:
    """A link just followed: where it goes, and whether its first click's event is still to
    be started (its batch has a status webhook, and no start of the event succeeded yet)."""

    url: str
    event_due: bool
    batch_id: uuid.UUID
    account_id: uuid.UUID


async def copy_links(conn: asyncpg.Connection, records: Sequence[tuple]) -> None:
    """Links as (code, batch_id, seq, account_id, url), in one COPY (none: no statement)."""
    if records:
        await conn.copy_records_to_table("short_links", records=records, columns=LINK_COLUMNS)


async def record_click(pool: asyncpg.Pool, code: str, user_agent: str | None) -> Click | None:
    """Count a click of `code`; the first one's time and user agent are kept. None for an
    unknown code."""
    row = await pool.fetchrow(
        "UPDATE short_links AS l SET clicks = l.clicks + 1, last_clicked_at = now(),"
        " first_clicked_at = coalesce(l.first_clicked_at, now()),"
        " first_user_agent = CASE WHEN l.first_clicked_at IS NULL THEN $2"
        " ELSE l.first_user_agent END"
        " FROM batches AS b WHERE l.code = $1 AND b.id = l.batch_id"
        " RETURNING l.url, b.request ? 'status_webhook' AND l.click_event_started_at IS NULL"
        " AND l.webhook_attempts = 0 AS event_due, l.batch_id, l.account_id",
        code,
        user_agent,
    )
    if row is None:
        return None
    return Click(
        url=row["url"],
        event_due=row["event_due"],
        batch_id=row["batch_id"],
        account_id=row["account_id"],
    )


async def set_event_started(pool: asyncpg.Pool, code: str) -> None:
    """The `click` event of the link was started: later clicks start nothing."""
    await pool.execute(
        "UPDATE short_links SET click_event_started_at = now()"
        " WHERE code = $1 AND click_event_started_at IS NULL",
        code,
    )


async def link_url(pool: asyncpg.Pool, code: str) -> str | None:
    """Where `code` leads, nothing counted; None for an unknown code."""
    url: str | None = await pool.fetchval("SELECT url FROM short_links WHERE code = $1", code)
    return url


async def click_for_event(pool: asyncpg.Pool, code: str) -> dict | None:
    """A clicked link with its message and batch, for its `click` event."""
    row = await pool.fetchrow(
        "SELECT l.code, l.batch_id, l.seq, l.account_id, l.url, l.first_clicked_at,"
        " l.first_user_agent, m.row_number, m.to_number, r.reference,"
        " b.workflow_id, b.request, b.webhook_disabled_at"
        " FROM short_links l JOIN batches b ON b.id = l.batch_id"
        " JOIN messages m ON m.batch_id = l.batch_id AND m.seq = l.seq"
        " LEFT JOIN message_references r"
        " ON r.batch_id = m.batch_id AND r.row_number = m.row_number"
        " WHERE l.code = $1",
        code,
    )
    return None if row is None else dict(row)


async def record_event_attempt(pool: asyncpg.Pool, code: str, *, delivered: bool) -> int:
    """Count a post of the link's `click` event; the attempts so far."""
    return await pool.fetchval(
        "UPDATE short_links SET webhook_attempts = webhook_attempts + 1,"
        " webhook_delivered_at = CASE WHEN $2 THEN now() END"
        " WHERE code = $1 RETURNING webhook_attempts",
        code,
        delivered,
    )
