"""Signalling a pair's ConversationWorkflow, and reading conversations."""

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from activities.recipients.phones import to_e164
from api import pagination
from api.conversation_models import (
    ConversationDetail,
    ConversationList,
    ConversationMessage,
    ConversationMessages,
    ConversationSummary,
)
from api.errors import HeraldError, InvalidRequest
from api.models import STORED_FIELDS, kept_stored_fields
from api.services.batches import TemporalUnavailable
from settings import Settings
from store import conversation_messages, conversations
from workflows.contracts import (
    ACCOUNT_ID,
    AGENT_NUMBER,
    CONVERSATION_WORKFLOW,
    ConversationInput,
    ConversationSignal,
    SilenceTimers,
)
from workflows.statuses import ConversationStatus


class ConversationNotFound(HeraldError):
    status_code = 404
    code = "CONVERSATION_NOT_FOUND"


async def signal_conversation(
    temporal: Client,
    settings: Settings,
    conversation: dict[str, Any],
    *,
    message_id: uuid.UUID,
    sender: str,
    kind: str = "message",
    timers: SilenceTimers | None = None,
    answer_id: uuid.UUID | None = None,
    received_at: float | None = None,
) -> None:
    """Hand a recorded message (and the answer it asks for, ConversationSignal.answer_id) to
    the pair's workflow, starting a run if none is open; a user's with when it was recorded."""
    conversation_id = str(conversation["id"])
    try:
        await temporal.start_workflow(
            CONVERSATION_WORKFLOW,
            ConversationInput(
                conversation_id=conversation_id,
                conversation_seq=conversation["seq"],
                account_id=str(conversation["account_id"]),
                agent_number=conversation["agent_number"],
                user_number=conversation["user_number"],
            ),
            id=conversation["workflow_id"],
            task_queue=settings.task_queue,
            start_signal="message",
            start_signal_args=[
                ConversationSignal(
                    conversation_id=conversation_id,
                    conversation_seq=conversation["seq"],
                    message_id=str(message_id),
                    sender=sender,
                    kind=kind,
                    timers=timers,
                    answer_id=None if answer_id is None else str(answer_id),
                    received_at=received_at,
                )
            ],
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(ACCOUNT_ID, str(conversation["account_id"])),
                    SearchAttributePair(AGENT_NUMBER, conversation["agent_number"]),
                ]
            ),
        )
    except (RuntimeError, RPCError) as error:
        raise TemporalUnavailable(
            f"the message is recorded but its conversation could not be signalled ({error})"
        ) from error


# The messages a conversation's read shows, oldest first; the rest by its messages' pages.
MESSAGES_SHOWN = 1000


def parse_conversation_id(value: str) -> uuid.UUID:
    """A malformed id cannot name anything of the caller's: the same 404 as a missing one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ConversationNotFound(f"{value!r} is not a conversation of this account") from None


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    stored = row["stored_fields"] or {}
    return {
        **row,
        **dict.fromkeys(STORED_FIELDS),
        **kept_stored_fields(stored),
        "conversation_id": str(row["id"]),
        "batch_id": str(row["batch_id"]) if row["batch_id"] else None,
    }


def _message(row: dict[str, Any]) -> ConversationMessage:
    variables = row["content_variables"]
    return ConversationMessage(
        **{
            **row,
            "message_id": str(row["id"]),
            "content_variables": json.loads(variables) if variables else None,
        }
    )


async def list_conversations(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    agent_number: str | None,
    user_number: str | None,
    state: str | None,
    limit: int,
    cursor: str | None,
) -> ConversationList:
    """A page of the account's conversations, newest first; the numbers may be given in any
    form `to_e164` reads."""
    if state is not None and state not in tuple(ConversationStatus):
        raise InvalidRequest(f"state must be one of {', '.join(ConversationStatus)}")
    after = pagination.decode(cursor, (datetime, uuid.UUID), of="conversations")
    rows = await conversations.list_conversations(
        pool,
        account_id,
        agent_number=agent_number and (to_e164(agent_number, require_valid=False) or agent_number),
        user_number=user_number and (to_e164(user_number, require_valid=False) or user_number),
        state=state,
        limit=limit + 1,
        after=after,
    )
    kept, next_cursor = pagination.page(
        rows, limit, lambda r: (r["created_at"], r["id"]), of="conversations"
    )
    return ConversationList(
        conversations=[ConversationSummary(**_summary(r)) for r in kept],
        next_cursor=next_cursor,
    )


async def get_conversation(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, conversation_id: str
) -> ConversationDetail:
    row = await conversations.get_conversation(
        pool, account_id, parse_conversation_id(conversation_id)
    )
    if row is None:
        raise ConversationNotFound(f"no conversation {conversation_id!r}")
    messages = await _messages(pool, account_id, row["id"], limit=MESSAGES_SHOWN, cursor=None)
    ui = (
        f"{settings.temporal_ui_base}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{row['workflow_id']}"
    )
    return ConversationDetail(
        **_summary(row),
        messages=messages.messages,
        messages_next_cursor=messages.next_cursor,
        temporal_ui_url=ui,
    )


async def list_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    conversation_id: str,
    *,
    limit: int,
    cursor: str | None,
) -> ConversationMessages:
    """A page of the conversation's messages, both directions, oldest first."""
    found = await conversations.get_conversation(
        pool, account_id, parse_conversation_id(conversation_id)
    )
    if found is None:
        raise ConversationNotFound(f"no conversation {conversation_id!r}")
    return await _messages(pool, account_id, found["id"], limit=limit, cursor=cursor)


async def _messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None,
) -> ConversationMessages:
    of = f"messages of conversation {conversation_id}"
    after = pagination.decode(cursor, (int,), of=of)
    rows = await conversation_messages.list_messages(
        pool, account_id, conversation_id, limit=limit + 1, after_seq=after[0] if after else -1
    )
    kept, next_cursor = pagination.page(rows, limit, lambda r: (r["seq"],), of=of)
    return ConversationMessages(messages=[_message(r) for r in kept], next_cursor=next_cursor)
