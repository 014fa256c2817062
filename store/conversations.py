"""Conversations of single sends and replies: one per pair of numbers at a time."""

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from store.db import after_key
from workflows.contracts import SilenceTimers
from workflows.statuses import ConversationStatus

_CONVERSATION_COLUMNS = (
    "id, seq, account_id, workflow_id, agent_number, user_number, channel, state, webhook,"
    " metadata, request_data, time_out, timeout_message, warning_time, warning_message,"
    " stored_fields, batch_id, created_at, updated_at, ended_at, timed_out_at"
)


@dataclass(frozen=True, kw_only=True)
class ConversationFields:
    """What a send sets on its conversation; None keeps the conversation's value."""

    channel: str = "sms"
    webhook: str | None = None
    metadata: dict[str, Any] | None = None
    request_data: dict[str, Any] | None = None
    # Each timer field given replaces the conversation's; one left None keeps it.
    timers: SilenceTimers | None = None
    stored_fields: dict[str, Any] = field(default_factory=dict)
    # The batch whose message the conversation answers.
    batch_id: uuid.UUID | None = None


async def active_conversation(
    conn: asyncpg.Connection | asyncpg.Pool,
    account_id: uuid.UUID,
    agent_number: str,
    user_number: str,
) -> dict | None:
    row = await conn.fetchrow(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE account_id = $1"
        " AND agent_number = $2 AND user_number = $3 AND state = 'active'",
        account_id,
        agent_number,
        user_number,
    )
    return dict(row) if row else None


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
    # One pair's openings in turn, each to its transaction's end: a new conversation's close
    # would not see one another transaction is opening (a reply's, a send's, not committed
    # yet), and its insert would then join that one, not close it.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"conversation {account_id} {agent_number} {user_number}",
    )
    if close_current:
        await conn.execute(
            "UPDATE conversations SET state = 'closed', ended_at = now(), updated_at = now()"
            " WHERE account_id = $1 AND agent_number = $2 AND user_number = $3"
            " AND state = 'active'",
            account_id,
            agent_number,
            user_number,
        )
    timers = fields.timers or SilenceTimers()
    row = await conn.fetchrow(
        "INSERT INTO conversations (id, account_id, workflow_id, agent_number, user_number,"
        " channel, webhook, metadata, request_data, time_out, timeout_message, warning_time,"
        " warning_message, stored_fields, batch_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        " ON CONFLICT (account_id, agent_number, user_number) WHERE state = 'active'"
        " DO UPDATE SET channel = EXCLUDED.channel,"
        " webhook = COALESCE(EXCLUDED.webhook, conversations.webhook),"
        " metadata = COALESCE(EXCLUDED.metadata, conversations.metadata),"
        " request_data = COALESCE(EXCLUDED.request_data, conversations.request_data),"
        " time_out = COALESCE(EXCLUDED.time_out, conversations.time_out),"
        " timeout_message = COALESCE(EXCLUDED.timeout_message, conversations.timeout_message),"
        " warning_time = COALESCE(EXCLUDED.warning_time, conversations.warning_time),"
        " warning_message = COALESCE(EXCLUDED.warning_message, conversations.warning_message),"
        " stored_fields = conversations.stored_fields || EXCLUDED.stored_fields,"
        " batch_id = COALESCE(EXCLUDED.batch_id, conversations.batch_id),"
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
        fields.batch_id,
    )
    return dict(row)


async def end_conversation(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, state: ConversationStatus
) -> ConversationStatus:
    """End an active conversation; one ended already (e.g. by a newer one) keeps its state.
    The state it is in now: read by a statement of its own when the update found it ended,
    for a subquery of the update's would read the snapshot taken before the update waited
    for the transaction that ended it (and find it still active)."""
    ended = await pool.fetchval(
        "UPDATE conversations SET state = $2, ended_at = now(), updated_at = now(),"
        " timed_out_at = CASE WHEN $2 = 'timeout' THEN now() ELSE timed_out_at END"
        " WHERE id = $1 AND state = 'active' RETURNING state",
        conversation_id,
        state,
    )
    if ended is None:
        ended = await pool.fetchval(
            "SELECT state FROM conversations WHERE id = $1", conversation_id
        )
    return ConversationStatus(ended)


def conversation_timers(conversation: dict) -> SilenceTimers:
    """A conversation row's silence timers."""
    return SilenceTimers(
        **{timer.name: conversation[timer.name] for timer in dataclasses.fields(SilenceTimers)}
    )


async def conversation_for_workflow(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> dict:
    """The conversation, unfiltered by account: for activities, which act for the workflow."""
    row = await pool.fetchrow(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = $1", conversation_id
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
    after: tuple[datetime, uuid.UUID] | None,
) -> list[dict]:
    """Up to `limit` of the account's conversations (of the sender, user and state given),
    newest first by (created_at, id), after the key `after`. Only the filters given are in
    the statement: `($3 IS NULL OR user_number = $3)` is no condition an index can serve once
    the statement's plan is the generic one, and a user's conversations were found by reading
    all of the account's (its user's by `conversations_account_user`, migration 420)."""
    args: list[Any] = [account_id, limit]
    where = "account_id = $1"
    for column, value in (
        ("user_number", user_number),
        ("agent_number", agent_number),
        ("state", state),
    ):
        if value is not None:
            args.append(value)
            where += f" AND {column} = ${len(args)}"
    where += after_key("created_at, id", after, len(args) + 1, descending=True)
    rows = await pool.fetch(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE {where}"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        *args,
        *(after or ()),
    )
    return [dict(r) for r in rows]
