"""Single sends: one message to one person inside the pair's conversation, safe to retry."""

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client

from activities.recipients.phones import is_sender_id, to_e164
from activities.recipients.rows import render
from api.conversation_models import SendReply, SendRequest
from api.errors import HeraldError
from api.models import STORED_FIELDS
from api.services.batch_checks import MissingAgentMessage
from api.services.batches import (
    AgentNumberNotFound,
    TemporalUnavailable,
    campaign_template,
    own_sender,
)
from api.services.conversations import signal_conversation
from api.services.webhook_urls import require_safe_webhook
from settings import Settings
from store import conversation_messages, conversations, idempotency, opt_outs
from workflows.contracts import SilenceTimers, conversation_workflow_id

# How often a request waits on the first request with its idempotency key.
POLL_SECONDS = 0.05


class InvalidTimeoutConfig(HeraldError):
    code = "INVALID_TIMEOUT_CONFIG"


class InvalidUserNumber(HeraldError):
    code = "INVALID_USER_NUMBER"


class MessageTooLong(HeraldError):
    code = "MESSAGE_TOO_LONG"


class SenderIdCannotConverse(HeraldError):
    code = "SENDER_ID_CANNOT_CONVERSE"


class IdempotencyKeyReused(HeraldError):
    status_code = 409
    code = "IDEMPOTENCY_KEY_REUSED"


class InvalidParams(HeraldError):
    code = "INVALID_PARAMS"


class RecipientOptedOut(HeraldError):
    status_code = 409
    code = "RECIPIENT_OPTED_OUT"


@dataclass(frozen=True, kw_only=True)
class PreparedSend:
    """A checked request, numbers in E.164, a campaign's template filled in."""

    account_id: uuid.UUID
    user_number: str
    agent_number: str
    body: SendRequest
    timers: SilenceTimers | None

    @property
    def content_variables(self) -> str | None:
        variables = self.body.content_variables
        return json.dumps(variables) if variables is not None else None


def request_hash(body: SendRequest) -> str:
    """What an idempotency key is held for: the request as given, its numbers in E.164 (a
    campaign's template not filled in, so that a repeat finds its first reply however the
    campaign changed since, or if it was deleted)."""
    request = body.model_dump(mode="json", exclude_none=True)
    request.update(
        user_number=to_e164(body.user_number) or body.user_number,
        agent_number=to_e164(body.agent_number, require_valid=False) or body.agent_number,
    )
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def silence_timers(body: SendRequest) -> SilenceTimers | None:
    """The send's timer fields, None when it sets none. Each one given replaces the
    conversation's and the others persist, as Bland's do (`checked_timers` checks what
    they make together)."""
    timers = body.silence_timers()
    if timers == SilenceTimers():
        return None
    for name, value in (("time_out", timers.time_out), ("warning_time", timers.warning_time)):
        if value is not None and value <= 0:
            raise InvalidTimeoutConfig(f"{name} must be more than 0 seconds")
    return timers


def checked_timers(conversation: dict[str, Any]) -> SilenceTimers:
    """The conversation's timers once a send's have replaced theirs: InvalidTimeoutConfig
    unless the warning comes before the timeout, and each message has its time (Herald
    writes no text of its own: a time without one, or a message without its time, could
    never be sent)."""
    timers = conversations.conversation_timers(conversation)
    if timers.time_out is not None and timers.warning_time is not None:
        if timers.warning_time >= timers.time_out:
            raise InvalidTimeoutConfig(
                f"warning_time ({timers.warning_time:g} s) must be less than time_out"
                f" ({timers.time_out:g} s)"
            )
    if timers.warning_time is not None and not timers.warning_message:
        raise InvalidTimeoutConfig("warning_time needs a warning_message")
    if timers.warning_time is None and timers.warning_message:
        raise InvalidTimeoutConfig("warning_message needs a warning_time")
    if timers.time_out is None and timers.timeout_message:
        raise InvalidTimeoutConfig("timeout_message needs a time_out")
    return timers


def prepare(account_id: uuid.UUID, body: SendRequest, max_chars: int) -> PreparedSend:
    """The request checked and normalised; the sender is checked only when it is sent, so a
    repeated request gets its first reply even if the sender was removed in between. Each
    text is at most `max_chars` characters, as a batch's messages are: a longer one the
    carrier refuses, after it rode in the conversation's workflow history (and in each of
    its signals, a timer's text)."""
    if not (body.agent_message and body.agent_message.strip()) and not body.content_sid:
        raise MissingAgentMessage("agent_message (or content_sid) is required: Herald writes none")
    for name in ("agent_message", "warning_message", "timeout_message"):
        text: str | None = getattr(body, name)
        if text is not None and len(text) > max_chars:
            raise MessageTooLong(
                f"{name} has {len(text)} characters; a message has at most {max_chars}"
                " (HERALD_MAX_MESSAGE_CHARS)"
            )
    timers = silence_timers(body)
    user_number = to_e164(body.user_number)
    if user_number is None:
        raise InvalidUserNumber(f"{body.user_number!r} is not a valid phone number")
    if is_sender_id(body.agent_number.strip()):
        # No one can reply to an alphanumeric ID, so it cannot hold a conversation.
        raise SenderIdCannotConverse(
            f"{body.agent_number!r} is a sender ID: it sends batches but cannot converse"
        )
    agent_number = to_e164(body.agent_number, require_valid=False)
    if agent_number is None:
        raise AgentNumberNotFound(f"{body.agent_number!r} is not a phone number")
    return PreparedSend(
        account_id=account_id,
        user_number=user_number,
        agent_number=agent_number,
        body=body,
        timers=timers,
    )


async def send_message(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    body: SendRequest,
    idempotency_key: str | None,
) -> SendReply:
    if idempotency_key is None:
        return await _send(
            pool, temporal, settings, await _prepared(pool, settings, account_id, body)
        )
    held_for = request_hash(body)
    ttl = timedelta(hours=settings.idempotency_ttl_hours)
    while True:
        claim = await idempotency.claim(pool, account_id, idempotency_key, held_for, ttl=ttl)
        if claim is None:
            first = await _first_reply(
                pool, account_id, idempotency_key, held_for, settings.idempotency_wait_seconds
            )
            if first is None:
                continue  # the key is free again: claim it
            if isinstance(first, SendReply):
                return first
            held = idempotency.Claim(idempotency_key, first.claimed_at)
            if first.message is not None and first.message.failed_unsent:
                # Its request's signal failed: the key is free once that request releases
                # it, which it may have died before doing. Released here too (fenced by the
                # claim's time, so only that claim), then claimed anew.
                await idempotency.release(pool, account_id, held)
                continue
            if first.message is not None:
                return await _finish_first(
                    pool, temporal, settings, account_id, body, held, first.message
                )
            # The first request recorded no message within the wait: it died before, or is
            # stuck. The repeat takes its place, and it can record none any more.
            claim = await idempotency.take_over(pool, account_id, held)
            if claim is None:
                continue  # another repeat took it over, or the message came: wait again
        reply = await _send_holding(pool, temporal, settings, account_id, body, claim)
        if reply is not None:
            return reply


async def _send_holding(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    body: SendRequest,
    claim: idempotency.Claim,
) -> SendReply | None:
    """The send of the request holding `claim`, its reply stored with the key; None when a
    repeat took the key over before its message was recorded (nothing recorded: the
    repeat's reply is this request's too)."""
    try:
        reply = await _send(
            pool, temporal, settings, await _prepared(pool, settings, account_id, body), claim=claim
        )
    except _ClaimTakenOver:
        return None
    except Exception:
        # Nothing reached the conversation (refused or not signalled): free the key. A key
        # whose message is queued or signalled is kept (idempotency.release).
        await idempotency.release(pool, account_id, claim)
        raise
    await idempotency.complete(pool, account_id, claim.key, reply.model_dump())
    return reply


class _ClaimTakenOver(Exception):
    """A repeat took the request's idempotency key over before its message was recorded:
    its transaction is rolled back."""


async def _prepared(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: SendRequest
) -> PreparedSend:
    return prepare(
        account_id, await _campaign_message(pool, account_id, body), settings.max_message_chars
    )


async def _campaign_message(
    pool: asyncpg.Pool, account_id: uuid.UUID, body: SendRequest
) -> SendRequest:
    """With `campaign_id`, the request with its template in `language`, filled from
    `params`, as its `agent_message`; InvalidParams unless `params` holds exactly the
    campaign's parameters, none blank."""
    if body.campaign_id is None:
        if body.params is not None:
            raise InvalidParams("params are for a campaign's template: give campaign_id too")
        return body
    campaign, template = await campaign_template(
        pool, account_id, body.campaign_id, body.language, body.agent_message
    )
    params = body.params or {}
    missing = [name for name in campaign["parameters"] if not params.get(name, "").strip()]
    extra = sorted(set(params) - set(campaign["parameters"]))
    if missing or extra:
        raise InvalidParams(
            f"params must fill exactly the campaign's parameters {campaign['parameters']};"
            f" missing or blank {missing}, not parameters {extra}"
        )
    text, _ = render(template, params.get)
    return body.model_copy(update={"agent_message": text})


async def _first_reply(
    pool: asyncpg.Pool, account_id: uuid.UUID, key: str, request_hash: str, wait_seconds: float
) -> SendReply | idempotency.StoredKey | None:
    """The reply of the request that holds the key, once it has one, or the key as it is if
    that request holds it `wait_seconds` without a reply; None if the key is free."""
    while True:
        stored = await idempotency.get(pool, account_id, key)
        if stored is None:
            return None
        if stored.request_hash != request_hash:
            raise IdempotencyKeyReused(
                f"idempotency key {key!r} was used with a different request body"
            )
        if stored.reply is not None:
            return SendReply(**stored.reply)
        if stored.claimed_seconds_ago >= wait_seconds:
            return stored
        await asyncio.sleep(POLL_SECONDS)


async def _finish_first(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    body: SendRequest,
    claimed: idempotency.Claim,
    held: idempotency.HeldMessage,
) -> SendReply:
    """The first request with the key recorded its message and stopped before its reply (its
    process died, or an unexpected error): the message, if it was never signalled, is
    signalled now, and the first request's reply is stored and given.

    A message signalled twice (the first request still running past the wait, two repeats at
    once, or one that died after its signal but before noting it) is sent once
    (claim_message); its conversation posts its event again, with the same `webhook-id`."""
    conversation = await conversations.conversation_for_workflow(pool, held.conversation_id)
    if held.unsignalled:
        # The key holds the same request: if it set timers, the conversation has had them
        # (with those it kept) since the first request's transaction.
        timers = (
            None
            if silence_timers(body) is None
            else conversations.conversation_timers(conversation)
        )
        try:
            await _hand_over(pool, temporal, settings, conversation, held.message_id, timers)
        except HeraldError:
            await idempotency.release(pool, account_id, claimed)
            raise
    reply = SendReply(
        conversation_id=str(conversation["id"]),
        message_id=str(held.message_id),
        workflow_id=conversation["workflow_id"],
    )
    await idempotency.complete(pool, account_id, claimed.key, reply.model_dump())
    return reply


async def _hand_over(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    conversation: dict[str, Any],
    message_id: uuid.UUID,
    timers: SilenceTimers | None,
) -> None:
    """Signal the queued message to its conversation and note it signalled; a failed signal
    fails the message and is raised, unless the workflow has claimed the message."""
    try:
        await signal_conversation(
            temporal,
            settings,
            conversation,
            message_id=message_id,
            sender="AGENT",
            timers=timers,
        )
    except HeraldError as error:
        # A signal can reach the workflow and still fail here (the answer lost on the way):
        # a message its workflow has claimed is being sent, and this request is its send.
        if await conversation_messages.fail_queued_message(
            pool, message_id, error_message=error.message
        ):
            raise
    if not await conversation_messages.mark_agent_message_signalled(pool, message_id):
        # A repeat's signal failed first and failed the message; the workflow skips it.
        raise TemporalUnavailable(
            "the message failed unsent: another request with its idempotency key could not"
            " signal its conversation; send it again"
        )


async def _send(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    prepared: PreparedSend,
    *,
    claim: idempotency.Claim | None = None,
) -> SendReply:
    body = prepared.body
    await own_sender(pool, prepared.account_id, prepared.agent_number, channel=body.channel)
    await require_safe_webhook(str(body.webhook) if body.webhook else None, settings)
    if await opt_outs.is_opted_out(pool, prepared.account_id, prepared.user_number):
        raise RecipientOptedOut(
            f"{prepared.user_number} has opted out of messages from this account; nothing sent"
        )
    stored: dict[str, Any] = {
        name: value for name in STORED_FIELDS if (value := getattr(body, name)) is not None
    }
    fields = conversations.ConversationFields(
        channel=body.channel,
        webhook=str(body.webhook) if body.webhook else None,
        metadata=body.metadata,
        request_data=body.request_data,
        timers=prepared.timers,
        stored_fields=stored,
    )
    workflow_id = conversation_workflow_id(
        str(prepared.account_id), prepared.agent_number, prepared.user_number
    )
    async with pool.acquire() as conn, conn.transaction():
        conversation = await conversations.open_conversation(
            conn,
            account_id=prepared.account_id,
            agent_number=prepared.agent_number,
            user_number=prepared.user_number,
            workflow_id=workflow_id,
            fields=fields,
            close_current=body.new_conversation,
        )
        # Checked as the conversation holds them now: its timers and the send's, together.
        timers = None if prepared.timers is None else checked_timers(conversation)
        message_id = await conversation_messages.queue_agent_message(
            conn,
            conversation=conversation,
            kind="message",
            body=body.agent_message,
            content_sid=body.content_sid,
            content_variables=prepared.content_variables,
        )
        if claim is not None and not await idempotency.hold_message(
            conn, prepared.account_id, claim, message_id
        ):
            raise _ClaimTakenOver
    await _hand_over(pool, temporal, settings, conversation, message_id, timers)
    return SendReply(
        conversation_id=str(conversation["id"]),
        message_id=str(message_id),
        workflow_id=workflow_id,
    )
