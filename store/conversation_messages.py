"""The messages of conversations, in both directions: queued, claimed, sent, recorded."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from store import receipts
from store.db import rows_affected

# The code of an agent message left `uncertain` because the attempt that claimed it was lost
# (settle_lost_claim): each retry looks it up in the carrier's list until found.
CLAIM_LOST = "claim_lost"
# The code of an agent message failed never sent: every attempt of its send failed before the
# carrier was asked (its workers died, or PostgreSQL was away throughout): fail_unsent.
SEND_FAILED = "send_failed"
# The code of an agent message failed unsent because no signal of it reached its workflow
# (the API's TEMPORAL_UNAVAILABLE); its workflow skips it if a signal of it comes later.
SIGNAL_FAILED = "TEMPORAL_UNAVAILABLE"

_MESSAGE_COLUMNS = (
    "id, conversation_id, seq, sender, kind, channel, body, content_sid, content_variables,"
    " status, carrier_sid, error_code, error_message, attempts, created_at, sent_at, updated_at"
)


@dataclass(frozen=True, kw_only=True)
class ClaimedConversationMessage:
    """An agent message taken for sending, with what the carrier needs to address it."""

    account_id: uuid.UUID
    kind: str
    channel: str
    agent_number: str
    user_number: str
    body: str | None
    content_sid: str | None
    content_variables: str | None
    # When it was claimed, on the database's clock: its request goes to the carrier now.
    claimed_at: datetime | None = None


async def queue_agent_message(
    conn: asyncpg.Connection,
    *,
    conversation: dict,
    kind: str,
    body: str | None,
    content_sid: str | None = None,
    content_variables: str | None = None,
    message_id: uuid.UUID | None = None,
) -> uuid.UUID:
    message_id = message_id or uuid.uuid4()
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
    answer_id: uuid.UUID | None = None,
) -> uuid.UUID | None:
    """Record an inbound message (and the id of the agent message that answers it, queued in
    the same transaction); None when its carrier sid was recorded before."""
    return await conn.fetchval(
        "INSERT INTO conversation_messages (id, conversation_id, account_id, sender, kind,"
        " channel, body, status, carrier_sid, answer_id)"
        " VALUES ($1, $2, $3, 'USER', 'message', $4, $5, 'received', $6, $7)"
        " ON CONFLICT (carrier_sid) WHERE sender = 'USER' DO NOTHING RETURNING id",
        uuid.uuid4(),
        conversation["id"],
        conversation["account_id"],
        channel,
        body,
        carrier_sid,
        answer_id,
    )


@dataclass(frozen=True, kw_only=True)
class UnsignalledInbound:
    """A user's message recorded but never handed to its workflow, with its answer if any."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    answer_id: uuid.UUID | None


async def unsignalled_inbound(
    pool: asyncpg.Pool, account_id: uuid.UUID, carrier_sid: str
) -> UnsignalledInbound | None:
    """The account's user message of this carrier sid, if its signal was never sent."""
    row = await pool.fetchrow(
        "SELECT id AS message_id, conversation_id, answer_id FROM conversation_messages"
        " WHERE carrier_sid = $1 AND sender = 'USER' AND account_id = $2"
        " AND signalled_at IS NULL",
        carrier_sid,
        account_id,
    )
    return UnsignalledInbound(**dict(row)) if row else None


async def stranded_inbound(
    pool: asyncpg.Pool, *, older_than: timedelta, within: timedelta, limit: int
) -> list[UnsignalledInbound]:
    """Users' messages recorded between `within` and `older_than` ago and never signalled,
    oldest first: their post's signal failed, or its process died before it."""
    rows = await pool.fetch(
        "SELECT id AS message_id, conversation_id, answer_id FROM conversation_messages"
        " WHERE signalled_at IS NULL AND sender = 'USER'"
        " AND created_at < now() - $1::interval AND created_at > now() - $2::interval"
        " ORDER BY created_at LIMIT $3",
        older_than,
        within,
        limit,
    )
    return [UnsignalledInbound(**dict(row)) for row in rows]


async def fail_stranded_sends(
    pool: asyncpg.Pool, *, older_than: timedelta, within: timedelta, error_message: str
) -> list[uuid.UUID]:
    """Fail (SIGNAL_FAILED) the sends' messages recorded between `within` and `older_than`
    ago, still `queued` and never signalled: their request died between its commit and its
    signal. As `fail_queued_message` fails one whose signal failed: a repeat with its key
    sends it anew, and a signal of it that comes after all is skipped. The ids failed."""
    rows = await pool.fetch(
        "UPDATE conversation_messages SET status = 'failed', error_code = $3,"
        " error_message = $4, updated_at = now()"
        " WHERE signalled_at IS NULL AND sender = 'AGENT' AND kind = 'message'"
        " AND status = 'queued'"
        " AND created_at < now() - $1::interval AND created_at > now() - $2::interval"
        " RETURNING id",
        older_than,
        within,
        SIGNAL_FAILED,
        error_message,
    )
    return [row["id"] for row in rows]


async def recorded_at(pool: asyncpg.Pool, message_id: uuid.UUID) -> float:
    """When the message was recorded: Unix seconds, by the database's clock."""
    return float(
        await pool.fetchval(
            "SELECT extract(epoch FROM created_at) FROM conversation_messages WHERE id = $1",
            message_id,
        )
    )


async def mark_signalled(pool: asyncpg.Pool, message_ids: list[uuid.UUID]) -> None:
    """The messages reached their workflow: a repeat of their request signals them no more."""
    await pool.execute(
        "UPDATE conversation_messages SET signalled_at = now()"
        " WHERE id = ANY($1::uuid[]) AND signalled_at IS NULL",
        message_ids,
    )


async def mark_agent_message_signalled(pool: asyncpg.Pool, message_id: uuid.UUID) -> bool:
    """`mark_signalled` for one agent message whose signal went through; False, unmarked, when
    another request's signal of it failed meanwhile and failed it unsent (`fail_queued_message`):
    its workflow skips it, so this request has not sent it either."""
    return bool(
        await pool.fetchval(
            "UPDATE conversation_messages SET signalled_at = coalesce(signalled_at, now())"
            " WHERE id = $1 AND NOT (status = 'failed' AND error_code = $2"
            " AND signalled_at IS NULL) RETURNING true",
            message_id,
            SIGNAL_FAILED,
        )
    )


async def settle_lost_claim(pool: asyncpg.Pool, message_id: uuid.UUID) -> datetime | None:
    """Before a retry claims the message: one still `sending` was claimed by an attempt that
    never recorded its end (crashed, timed out). The carrier may have accepted it, so it
    becomes `uncertain` (CLAIM_LOST) rather than being sent twice, its time left the claim's.
    When that claim was made, for the carrier's list to be read from then: of this lost
    claim, or of one an earlier retry settled so and whose lookup found nothing yet (or never
    ended); None when no claim was lost."""
    await pool.execute(
        "UPDATE conversation_messages SET status = 'uncertain', error_code = $2,"
        " error_message = 'the attempt that claimed it was lost: the carrier may have it'"
        " WHERE id = $1 AND status = 'sending'",
        message_id,
        CLAIM_LOST,
    )
    claimed_at: datetime | None = await pool.fetchval(
        "SELECT updated_at FROM conversation_messages WHERE id = $1 AND status = 'uncertain'"
        " AND error_code = $2 AND carrier_sid IS NULL",
        message_id,
        CLAIM_LOST,
    )
    return claimed_at


async def fail_unsent(pool: asyncpg.Pool, message_id: uuid.UUID) -> None:
    """After its send's last attempt failed: a message still `queued` never reached the
    carrier, and no attempt is left to send it, so it is `failed` (SEND_FAILED), not left
    `queued` for good."""
    await pool.execute(
        "UPDATE conversation_messages SET status = 'failed', error_code = $2,"
        " error_message = 'every attempt of its send failed before the carrier was asked',"
        " updated_at = now() WHERE id = $1 AND status = 'queued'",
        message_id,
        SEND_FAILED,
    )


async def lost_message(pool: asyncpg.Pool, message_id: uuid.UUID) -> ClaimedConversationMessage:
    """What the carrier was asked for a message whose claim was lost (`settle_lost_claim`),
    for its list to be read for it."""
    row = await pool.fetchrow(
        f"SELECT {_CLAIMED_COLUMNS} FROM conversation_messages AS m"
        " JOIN conversations AS c ON c.id = m.conversation_id WHERE m.id = $1",
        message_id,
    )
    return ClaimedConversationMessage(**dict(row))


# ClaimedConversationMessage's fields, of a message `m` and its conversation `c`.
_CLAIMED_COLUMNS = (
    "m.account_id, m.kind, m.channel, c.agent_number, c.user_number, m.body, m.content_sid,"
    " m.content_variables"
)


async def claim_message(
    pool: asyncpg.Pool, message_id: uuid.UUID, *, again: bool = False
) -> ClaimedConversationMessage | None:
    """Move a queued agent message to `sending` and return it; None if it is not queued.

    `again`: this claim runs a second time, its connection lost before the answer came (a
    PostgreSQL restart), so the first may have committed; a message found `sending` is then
    its own (an earlier attempt's was settled first, settle_lost_claim), its attempt counted
    once.
    """
    row = await pool.fetchrow(
        "UPDATE conversation_messages AS m SET status = 'sending',"
        " attempts = m.attempts + (m.status = 'queued')::int, updated_at = now()"
        " FROM conversations AS c"
        " WHERE m.id = $1 AND (m.status = 'queued' OR (m.status = 'sending' AND $2))"
        f" AND c.id = m.conversation_id RETURNING {_CLAIMED_COLUMNS}, now() AS claimed_at",
        message_id,
        again,
    )
    return ClaimedConversationMessage(**dict(row)) if row else None


async def record_outcome(
    pool: asyncpg.Pool,
    message_id: uuid.UUID,
    *,
    status: str,
    carrier_sid: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """The end of a send; only a message still `sending` moves, or one `uncertain`: an
    attempt presumed lost (settle_lost_claim) that lives on records the carrier's answer, and
    the carrier's list can settle one. A receipt that came before it was recorded is applied
    now (see receipts.first_receipts)."""
    await write_outcome(
        pool,
        message_id,
        status=status,
        carrier_sid=carrier_sid,
        error_code=error_code,
        error_message=error_message,
    )
    if carrier_sid is not None:
        await receipts.apply_conversation_receipt(pool, carrier_sid)


async def write_outcome(
    conn: asyncpg.Pool | asyncpg.Connection,
    message_id: uuid.UUID,
    *,
    status: str,
    carrier_sid: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """`record_outcome`'s write alone, in the caller's transaction (whose receipts for the sid
    are the caller's to apply once it commits); whether the message moved."""
    moved = await conn.execute(
        "UPDATE conversation_messages SET status = $2, carrier_sid = $3, error_code = $4,"
        " error_message = $5, updated_at = now(),"
        " sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END"
        " WHERE id = $1 AND status IN ('sending', 'uncertain')",
        message_id,
        status,
        carrier_sid,
        error_code,
        error_message,
    )
    return rows_affected(moved) == 1


async def sids_taken(conn: asyncpg.Pool | asyncpg.Connection, sids: list[str]) -> set[str]:
    """Which of `sids` some conversation message already holds (an agent's: the carrier's
    sids of its sends, through their index)."""
    rows = await conn.fetch(
        "SELECT carrier_sid FROM conversation_messages"
        " WHERE sender = 'AGENT' AND carrier_sid = ANY($1::text[])",
        sids,
    )
    return {r["carrier_sid"] for r in rows}


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
    pool: asyncpg.Pool, message_id: uuid.UUID, *, error_message: str
) -> bool:
    """After a failed signal: mark the message `failed` (SIGNAL_FAILED) while it is queued
    and no signal of it reached its workflow (`signalled_at`); whether it is not being sent,
    failed so now or by another request whose signal failed too (two repeats of one send at
    once). False when a send has claimed it or a signal of it went through."""
    # Two statements: the check runs after the update, on a snapshot that sees the other
    # request's failure once the update has waited for it (one statement's snapshot, taken
    # before that wait, would still see the message queued).
    if await pool.fetchval(
        "UPDATE conversation_messages SET status = 'failed', error_code = $2,"
        " error_message = $3, updated_at = now()"
        " WHERE id = $1 AND status = 'queued' AND signalled_at IS NULL RETURNING true",
        message_id,
        SIGNAL_FAILED,
        error_message,
    ):
        return True
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT FROM conversation_messages"
            " WHERE id = $1 AND status = 'failed' AND error_code = $2 AND signalled_at IS NULL)",
            message_id,
            SIGNAL_FAILED,
        )
    )


async def message_status(
    pool: asyncpg.Pool, message_id: uuid.UUID
) -> tuple[str, str | None, datetime | None]:
    """The message's status, error code and when it was recorded `sent` (`sent_at`)."""
    row = await pool.fetchrow(
        "SELECT status, error_code, sent_at FROM conversation_messages WHERE id = $1", message_id
    )
    return row["status"], row["error_code"], row["sent_at"]


async def message_for_workflow(
    pool: asyncpg.Pool | asyncpg.Connection, message_id: uuid.UUID
) -> dict:
    row = await pool.fetchrow(
        f"SELECT {_MESSAGE_COLUMNS} FROM conversation_messages WHERE id = $1", message_id
    )
    return dict(row)


async def list_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    limit: int,
    after_seq: int = -1,
) -> list[dict]:
    """Up to `limit` of the conversation's messages after `after_seq`, in `seq` order."""
    rows = await pool.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM conversation_messages"
        " WHERE conversation_id = $1 AND account_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        conversation_id,
        account_id,
        after_seq,
        limit,
    )
    return [dict(r) for r in rows]
