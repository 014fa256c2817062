"""Inbound messages from the carrier: checked, routed to their conversation, STOP and HELP."""

import asyncio
import uuid
from typing import Any

import asyncpg
import structlog
from temporalio.client import Client

from activities.providers.sids import MESSAGE_SID
from activities.recipients.phones import to_e164
from activities.recipients.rejections import SourceInvalid
from activities.recipients.rows import kept_request_data, request_field, row_request_data
from api.errors import InvalidRequest
from api.models import kept_stored_fields
from api.services import batch_checks
from api.services.batches import AgentNumberNotFound
from api.services.conversations import signal_conversation
from settings import Settings
from store import conversation_messages, conversations, files, inbound, messages, numbers, opt_outs
from workflows.contracts import conversation_workflow_id

log = structlog.get_logger(__name__)

# Twilio's default opt-out, opt-in and help keywords (Advanced Opt-Out): Twilio blocks the
# one sender a user sent one to; Herald applies it to the account's every sender.
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})
WHATSAPP_PREFIX = "whatsapp:"
# The longest `From` or `To` taken: `whatsapp:` and an E.164 number take 25.
MAX_ADDRESS_CHARS = 64


class AlreadyRecorded(Exception):
    """The carrier posted this message before: nothing is recorded again."""


def address(value: str) -> tuple[str, str]:
    """The channel and the E.164 number of a carrier address (`+1...` or `whatsapp:+1...`)."""
    channel = "whatsapp" if value.startswith(WHATSAPP_PREFIX) else "sms"
    number = value.removeprefix(WHATSAPP_PREFIX).strip()
    return channel, to_e164(number, require_valid=False) or number


async def receive(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    params: dict[str, str],
    *,
    signers: frozenset[uuid.UUID] | None = None,
) -> None:
    """Record a user's message in the pair's active conversation (opening one if none is)
    and signal it; STOP and START change the opt-out of the account that holds the sender.

    Each MessageSid changes an opt-out at most once, ever, and is signalled once: a post whose
    signal failed (503), or that stopped between its commit and its signal (its process
    died), left its message unsignalled (`signalled_at`), and the carrier's retry signals it.
    A post that died after its signal and before `signalled_at` was written has its message
    signalled again by the retry: its workflow then posts the message's event again (the same
    `webhook-id`) and sends nothing twice (claim_message)."""
    carrier_sid = params.get("MessageSid")
    if not carrier_sid or not params.get("From") or not params.get("To"):
        raise InvalidRequest("MessageSid, From and To are required")
    # Twilio's signature does not tell `MessageSid=SM..` + `NumMedia=0` from
    # `MessageSid=SM..NumMedia0` (names and values joined): a sid of any other form would make
    # a captured post a new message, applied again.
    if not MESSAGE_SID.fullmatch(carrier_sid):
        raise InvalidRequest(f"MessageSid {carrier_sid[:40]!r} is not a message SID")
    # An address the number can't be read from is kept as written (a short code, a sender
    # ID), but none is this long: longer, it would not fit the conversations' index.
    for name in ("From", "To"):
        if len(params[name]) > MAX_ADDRESS_CHARS:
            raise InvalidRequest(f"{name} is not a carrier address")
    channel, agent_number = address(params["To"])
    _, user_number = address(params["From"])
    body = params.get("Body", "")
    holder = await numbers.holder_of_number(pool, agent_number)
    # Signed with a subaccount's token: it speaks only for its own accounts' senders, or any
    # tenant could sign messages to another's numbers with a subaccount of its own.
    if holder is None or (signers is not None and holder["account_id"] not in signers):
        raise AgentNumberNotFound(f"{agent_number} is not a registered sender for {channel}")
    account_id: uuid.UUID = holder["account_id"]
    keyword = body.strip().upper()
    # An SMS only to a number registered for SMS: one registered for WhatsApp sends none, so
    # its conversation would have no way to answer (its timers' and HELP's messages). Its
    # STOP or START is the user's word to the account all the same, for its every sender.
    if not numbers.sends_on(holder, channel):
        if keyword in OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS:
            async with pool.acquire() as conn, conn.transaction():
                await _apply_keyword(conn, carrier_sid, account_id, user_number, keyword)
        raise AgentNumberNotFound(f"{agent_number} is not a registered sender for {channel}")
    fields = await _reply_fields(pool, account_id, agent_number, user_number, channel)
    help_id = uuid.uuid4() if keyword in HELP_KEYWORDS else None
    try:
        # One transaction: a repeat changes nothing, whatever it finds changed since.
        async with pool.acquire() as conn, conn.transaction():
            await _apply_keyword(conn, carrier_sid, account_id, user_number, keyword)
            conversation = await conversations.open_conversation(
                conn,
                account_id=account_id,
                agent_number=agent_number,
                user_number=user_number,
                workflow_id=conversation_workflow_id(str(account_id), agent_number, user_number),
                fields=fields,
            )
            recorded = await conversation_messages.record_user_message(
                conn,
                conversation=conversation,
                channel=channel,
                body=body,
                carrier_sid=carrier_sid,
                answer_id=help_id,
            )
            if recorded is None:
                raise AlreadyRecorded(carrier_sid)
            if help_id is not None:
                await conversation_messages.queue_agent_message(
                    conn,
                    conversation=conversation,
                    kind="help",
                    body=settings.help_reply,
                    message_id=help_id,
                )
            message_id = recorded
    except AlreadyRecorded:
        unsignalled = await conversation_messages.unsignalled_inbound(pool, account_id, carrier_sid)
        if unsignalled is None:
            log.info("inbound message repeated by the carrier", carrier_sid=carrier_sid)
            return
        # Its first post was recorded and never signalled (its process died in between, so the
        # carrier had no 2xx and posts again): this repeat hands it over, answer included.
        log.warning("inbound message repeated before it was signalled", carrier_sid=carrier_sid)
        conversation = await conversations.conversation_for_workflow(
            pool, unsignalled.conversation_id
        )
        message_id, help_id = unsignalled.message_id, unsignalled.answer_id
    # A failed signal (TemporalUnavailable, 503) leaves both recorded and unsignalled, as a
    # process that died here would: the carrier's repeat hands them over. Never forgotten: a
    # signal can reach the workflow and still fail here (its answer lost), and the workflow
    # may be sending the HELP answer already.
    await hand_over(pool, temporal, settings, conversation, message_id, help_id)


async def _apply_keyword(
    conn: asyncpg.Connection,
    carrier_sid: str,
    account_id: uuid.UUID,
    user_number: str,
    keyword: str,
) -> None:
    """STOP opts the user out of the account's messages, START back in: once per MessageSid,
    ever (a repeat, or a later START's replay, changes nothing)."""
    if await inbound.claim_sid(conn, carrier_sid, account_id):
        if keyword in OPT_OUT_KEYWORDS:
            await opt_outs.add_opt_out(conn, account_id, user_number, source="inbound")
        elif keyword in OPT_IN_KEYWORDS:
            await opt_outs.remove_opt_out(conn, account_id, user_number)


async def hand_over(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    conversation: dict[str, Any],
    message_id: uuid.UUID,
    answer_id: uuid.UUID | None,
) -> None:
    """Signal a user's message (and its HELP answer, in the same signal) to its conversation,
    then note both signalled; a failed signal (TemporalUnavailable) leaves them unsignalled."""
    await signal_conversation(
        temporal,
        settings,
        conversation,
        message_id=message_id,
        sender="USER",
        answer_id=answer_id,
        received_at=await conversation_messages.recorded_at(pool, message_id),
    )
    await conversation_messages.mark_signalled(
        pool, [m for m in (message_id, answer_id) if m is not None]
    )


async def _reply_fields(
    pool: asyncpg.Pool, account_id: uuid.UUID, agent_number: str, user_number: str, channel: str
) -> conversations.ConversationFields:
    """What a reply sets on its conversation: its channel and, when it answers a batch
    message the conversation does not carry yet, that batch's fields (`metadata`, Bland's
    stored fields) and `request_data` (the batch's defaults, under the recipient's row's
    own, which its ledger row keeps; a row validated before rows kept theirs has it read
    from the batch's file)."""
    fields = conversations.ConversationFields(channel=channel)
    origin = await messages.last_sent_to(pool, account_id, agent_number, user_number)
    if origin is None:
        return fields
    active = await conversations.active_conversation(pool, account_id, agent_number, user_number)
    if active is not None and (
        active["batch_id"] == origin["batch_id"]
        or (origin["sent_at"] is not None and origin["sent_at"] < active["created_at"])
    ):
        return fields  # it carries the batch already, or began after the batch's message
    request: dict[str, Any] = origin["request"]
    settings_global: dict[str, Any] = request.get("global") or {}
    kept: dict[str, Any] | None = origin["request_data"]
    if kept is not None:
        row_data = kept_request_data(kept)
    elif origin["keeps_request_data"]:
        row_data = {}  # its file has no request-data column
    else:
        row_data = await _row_request_data(
            pool,
            account_id,
            origin["batch_id"],
            origin["row_number"],
            request.get("column_mapping") or {},
        )
    request_data = {**(settings_global.get("request_data") or {}), **row_data}
    return conversations.ConversationFields(
        channel=channel,
        metadata=settings_global.get("metadata"),
        request_data=request_data or None,
        stored_fields=kept_stored_fields(settings_global),
        batch_id=origin["batch_id"],
    )


async def _row_request_data(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    row_number: int,
    column_mapping: dict[str, str],
) -> dict[str, str]:
    """The request data of a batch row validated before rows kept theirs. A file whose
    header shows no request-data column is not read past its header; else the file is read
    up to the row, off the event loop."""
    header = (await batch_checks.shape_of_file(pool, account_id, batch_id)).header
    if header is not None and not any(request_field(c, column_mapping) for c in header):
        return {}
    _, content = await files.file_content(pool, account_id, batch_id)
    try:
        return await asyncio.to_thread(row_request_data, content, row_number, column_mapping)
    except SourceInvalid:
        return {}
