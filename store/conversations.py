"""Conversations of single sends and replies, and their messages in both directions."""

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

STATES = ("active", "closed", "timeout")

_CONVERSATION_COLUMNS = (
    "id, seq, account_id, workflow_id, agent_number, user_number, channel, state, webhook,"
    " metadata, request_data, time_out, timeout_message, warning_time, warning_message,"
    " stored_fields, created_at, updated_at, ended_at, timed_out_at"
)
_MESSAGE_COLUMNS = (
    "id, conversation_id, sender, kind, channel, body, content_sid, content_variables, status,"
    " carrier_sid, error_code, error_message, attempts, created_at, sent_at, updated_at"
)


@dataclass(frozen=True, kw_only=True)
class Timers:
    time_out: float | None = None
    timeout_message: str | None = None
    warning_time: float | None = None
    warning_message: str | None = None


@dataclass(frozen=True, kw_only=True)
class ConversationFields:
    """What a send sets on its conversation; None keeps the conversation's value."""

    channel: str = "sms"
    webhook: str | None = None
    metadata: dict[str, Any] | None = None
    request_data: dict[str, Any] | None = None
    timers: Timers | None = None
    stored_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ClaimedMessage:
    """An agent message taken for sending, with what the carrier needs to address it."""

    account_id: uuid.UUID
    kind: str
    channel: str
    agent_number: str
    user_number: str
    body: str | None
    content_sid: str | None
    content_variables: str | None


async def open_conversation(
    conn: asyncpg.Connection,
    *,
    account_id: uuid.UUID,
    agent_number: str,
    user_number: str,
    workflow_id: str,
    fields: ConversationFields,
    close_current: bool = False,
) -> dict:
    """The pair's active conversation, updated with `fields`, or a new one if none is active.

    `close_current` first ends the active one as `closed`, so a new one opens.
    """
    if close_current:
        await conn.execute(
            "UPDATE conversations SET state = 'closed', ended_at = now(), updated_at = now()"
            " WHERE account_id = $1 AND agent_number = $2 AND user_number = $3"
            " AND state = 'active'",
            account_id,
            agent_number,
            user_number,
        )
    timers = fields.timers or Timers()
    row = await conn.fetchrow(
        "INSERT INTO conversations (id, account_id, workflow_id, agent_number, user_number,"
        " channel, webhook, metadata, request_data, time_out, timeout_message, warning_time,"
        " warning_message, stored_fields)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (account_id, agent_number, user_number) WHERE state = 'active'"
        " DO UPDATE SET channel = EXCLUDED.channel,"
        " webhook = COALESCE(EXCLUDED.webhook, conversations.webhook),"
        " metadata = COALESCE(EXCLUDED.metadata, conversations.metadata),"
        " request_data = COALESCE(EXCLUDED.request_data, conversations.request_data),"
        " time_out = CASE WHEN $15 THEN EXCLUDED.time_out ELSE conversations.time_out END,"
        " timeout_message = CASE WHEN $15 THEN EXCLUDED.timeout_message"
        " ELSE conversations.timeout_message END,"
        " warning_time = CASE WHEN $15 THEN EXCLUDED.warning_time"
        " ELSE conversations.warning_time END,"
        " warning_message = CASE WHEN $15 THEN EXCLUDED.warning_message"
        " ELSE conversations.warning_message END,"
        " stored_fields = conversations.stored_fields || EXCLUDED.stored_fields,"
        " updated_at = now()"
        f" RETURNING {_CONVERSATION_COLUMNS}",
        uuid.uuid4(),
        account_id,
        workflow_id,
        agent_number,
        user_number,
        fields.channel,
        fields.webhook,
        fields.metadata,
        fields.request_data,
        timers.time_out,
        timers.timeout_message,
        timers.warning_time,
        timers.warning_message,
        fields.stored_fields,
        fields.timers is not None,
    )
    return dict(row)


async def queue_agent_message(
    conn: asyncpg.Connection,
    *,
    conversation: dict,
    kind: str,
    body: str | None,
    content_sid: str | None = None,
    content_variables: str | None = None,
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO conversation_messages (id, conversation_id, account_id, sender, kind,"
        " channel, body, content_sid, content_variables, status)"
        " VALUES ($1, $2, $3, 'AGENT', $4, $5, $6, $7, $8, 'queued')",
        message_id,
        conversation["id"],
        conversation["account_id"],
        kind,
        conversation["channel"],
        body,
        content_sid,
        content_variables,
    )
    return message_id


async def add_agent_message(
    pool: asyncpg.Pool, *, message_id: uuid.UUID, conversation_id: uuid.UUID, kind: str, body: str
) -> None:
    """A message the workflow writes itself (warning, timeout); a retried insert is a no-op."""
    await pool.execute(
        "INSERT INTO conversation_messages (id, conversation_id, account_id, sender, kind,"
        " channel, body, status)"
        " SELECT $1, id, account_id, 'AGENT', $2, channel, $3, 'queued' FROM conversations"
        " WHERE id = $4 ON CONFLICT (id) DO NOTHING",
        message_id,
        kind,
        body,
        conversation_id,
    )


async def record_user_message(
    conn: asyncpg.Connection,
    *,
    conversation: dict,
    channel: str,
    body: str,
    carrier_sid: str,
) -> uuid.UUID | None:
    """Record an inbound message; None when its carrier sid was recorded before."""
    return await conn.fetchval(
        "INSERT INTO conversation_messages (id, conversation_id, account_id, sender, kind,"
        " channel, body, status, carrier_sid)"
        " VALUES ($1, $2, $3, 'USER', 'message', $4, $5, 'received', $6)"
        " ON CONFLICT (carrier_sid) WHERE sender = 'USER' DO NOTHING RETURNING id",
        uuid.uuid4(),
        conversation["id"],
        conversation["account_id"],
        channel,
        body,
        carrier_sid,
    )


async def claim_message(
    pool: asyncpg.Pool, message_id: uuid.UUID, *, first_attempt: bool
) -> ClaimedMessage | None:
    """Move a queued agent message to `sending` and return it; None if it is not queued.

    A message still `sending` when a retry arrives was claimed by a crashed attempt: the
    carrier may have accepted it, so it becomes `uncertain` rather than being sent twice.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not first_attempt:
            await conn.execute(
                "UPDATE conversation_messages SET status = 'uncertain', updated_at = now()"
                " WHERE id = $1 AND status = 'sending'",
                message_id,
            )
        row = await conn.fetchrow(
            "UPDATE conversation_messages AS m SET status = 'sending', attempts = attempts + 1,"
            " updated_at = now() FROM conversations AS c"
            " WHERE m.id = $1 AND m.status = 'queued' AND c.id = m.conversation_id"
            " RETURNING m.account_id, m.kind, m.channel, c.agent_number, c.user_number, m.body,"
            " m.content_sid, m.content_variables",
            message_id,
        )
    return ClaimedMessage(**dict(row)) if row else None


async def record_outcome(
    pool: asyncpg.Pool,
    message_id: uuid.UUID,
    *,
    status: str,
    carrier_sid: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """The end of a send; only a message still `sending` moves."""
    await pool.execute(
        "UPDATE conversation_messages SET status = $2, carrier_sid = $3, error_code = $4,"
        " error_message = $5, updated_at = now(),"
        " sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END"
        " WHERE id = $1 AND status = 'sending'",
        message_id,
        status,
        carrier_sid,
        error_code,
        error_message,
    )


async def requeue_message(
    pool: asyncpg.Pool, message_id: uuid.UUID, *, error_code: str | None, error_message: str | None
) -> None:
    """The carrier deferred the message: back to `queued` for the next attempt."""
    await pool.execute(
        "UPDATE conversation_messages SET status = 'queued', error_code = $2,"
        " error_message = $3, updated_at = now() WHERE id = $1 AND status = 'sending'",
        message_id,
        error_code,
        error_message,
    )


async def fail_queued_message(
    pool: asyncpg.Pool, message_id: uuid.UUID, *, error_code: str, error_message: str
) -> None:
    await pool.execute(
        "UPDATE conversation_messages SET status = 'failed', error_code = $2,"
        " error_message = $3, updated_at = now() WHERE id = $1 AND status = 'queued'",
        message_id,
        error_code,
        error_message,
    )


async def message_status(pool: asyncpg.Pool, message_id: uuid.UUID) -> tuple[str, str | None]:
    row = await pool.fetchrow(
        "SELECT status, error_code FROM conversation_messages WHERE id = $1", message_id
    )
    return row["status"], row["error_code"]


async def end_conversation(pool: asyncpg.Pool, conversation_id: uuid.UUID, state: str) -> None:
    """End an active conversation; one ended already (e.g. by a newer one) keeps its state."""
    await pool.execute(
        "UPDATE conversations SET state = $2, ended_at = now(), updated_at = now(),"
        " timed_out_at = CASE WHEN $2 = 'timeout' THEN now() ELSE timed_out_at END"
        " WHERE id = $1 AND state = 'active'",
        conversation_id,
        state,
    )


async def conversation_for_workflow(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> dict:
    """The conversation, unfiltered by account: for activities, which act for the workflow."""
    row = await pool.fetchrow(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = $1", conversation_id
    )
    return dict(row)


async def message_for_workflow(pool: asyncpg.Pool, message_id: uuid.UUID) -> dict:
    row = await pool.fetchrow(
        f"SELECT {_MESSAGE_COLUMNS} FROM conversation_messages WHERE id = $1", message_id
    )
    return dict(row)


async def get_conversation(
    pool: asyncpg.Pool, account_id: uuid.UUID, conversation_id: uuid.UUID
) -> dict | None:
    row = await pool.fetchrow(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 AND account_id = $2",
        conversation_id,
        account_id,
    )
    return dict(row) if row else None


async def list_conversations(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    agent_number: str | None,
    user_number: str | None,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict], int]:
    where = (
        "account_id = $1 AND ($2::text IS NULL OR agent_number = $2)"
        " AND ($3::text IS NULL OR user_number = $3) AND ($4::text IS NULL OR state = $4)"
    )
    rows = await pool.fetch(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE {where}"
        " ORDER BY created_at DESC, id LIMIT $5 OFFSET $6",
        account_id,
        agent_number,
        user_number,
        state,
        limit,
        offset,
    )
    total = await pool.fetchval(
        f"SELECT count(*) FROM conversations WHERE {where}",
        account_id,
        agent_number,
        user_number,
        state,
    )
    return [dict(r) for r in rows], total


async def list_messages(
    pool: asyncpg.Pool, account_id: uuid.UUID, conversation_id: uuid.UUID
) -> list[dict]:
    rows = await pool.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM conversation_messages"
        " WHERE conversation_id = $1 AND account_id = $2 ORDER BY seq",
        conversation_id,
        account_id,
    )
    return [dict(r) for r in rows]


async def forget_messages(pool: asyncpg.Pool, message_ids: list[uuid.UUID]) -> None:
    """Drop messages of an inbound post its conversation never heard of, so the carrier's
    retry of the webhook is taken as new rather than as a repeat."""
    await pool.execute("DELETE FROM conversation_messages WHERE id = ANY($1::uuid[])", message_ids)
