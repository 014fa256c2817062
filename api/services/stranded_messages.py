"""Messages the API recorded and never handed to their conversation's workflow, found each
minute by every API process.

An inbound post whose signal failed (503 TEMPORAL_UNAVAILABLE), or whose process died between
its commit and its signal, leaves the user's message (and its HELP answer) recorded and
unsignalled; a carrier does not post again after a 5xx, so it is signalled here, as the
carrier's repeat would (`inbound.receive`). A send whose request died the same way leaves its
message `queued`, its caller without an answer: it is failed, as a send whose signal failed
is, so that the caller's repeat with its key sends it anew and nothing is sent behind the
caller's back. One process sweeps at a time (store.db.SWEEP_LOCK: the others skip that
minute); a message signalled twice all the
same (a post's own signal racing the sweep) is sent once by its workflow."""

import asyncio
from datetime import timedelta

import asyncpg
import structlog
from temporalio.client import Client

from api.errors import HeraldError
from api.services.inbound import hand_over
from settings import Settings
from store import conversation_messages, conversations
from store.db import SWEEP_LOCK, UNAVAILABLE, session_lock

log = structlog.get_logger(__name__)

SWEEP_EVERY_SECONDS = 60.0
# A user's message is left this long to the post that recorded it (a signal takes well under
# a second, or fails within its RPC timeout), then signalled here.
INBOUND_AFTER = timedelta(minutes=1)
# A send's request is left this long (beyond the longest wait of a repeat with its key for
# the first request's answer) before its message is failed.
SEND_AFTER = timedelta(minutes=10)
# Older messages are left as they are: those recorded before `signalled_at` was, or by a
# release that did not set it, are unsignalled for good though they were signalled.
WITHIN = timedelta(days=1)
BATCH = 100
SEND_FAILED_MESSAGE = "the API stopped before handing the message to its conversation"


async def keep_handing_over(pool: asyncpg.Pool, temporal: Client, settings: Settings) -> None:
    """`hand_over_stranded` each minute, by one API process at a time, until cancelled; a
    sweep that fails is logged and the next goes on."""
    while True:
        try:
            async with session_lock(pool, SWEEP_LOCK) as sweeping:
                if sweeping:
                    await hand_over_stranded(pool, temporal, settings)
        except Exception as error:
            level = (
                log.warning
                if isinstance(error, (asyncpg.PostgresError, *UNAVAILABLE))
                else log.exception
            )
            level("stranded messages not handed over; retrying", error=repr(error))
        await asyncio.sleep(SWEEP_EVERY_SECONDS)


async def hand_over_stranded(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    *,
    inbound_after: timedelta = INBOUND_AFTER,
    send_after: timedelta = SEND_AFTER,
) -> int:
    """Signal the users' messages left unsignalled (with their answers) and fail the sends'
    messages left `queued`; how many users' messages were signalled. A signal that fails
    leaves the rest for the next sweep."""
    failed = await conversation_messages.fail_stranded_sends(
        pool, older_than=send_after, within=WITHIN, error_message=SEND_FAILED_MESSAGE
    )
    if failed:
        log.warning("sends left unsignalled failed", message_ids=[str(m) for m in failed])
    stranded = await conversation_messages.stranded_inbound(
        pool, older_than=inbound_after, within=WITHIN, limit=BATCH
    )
    for handed, message in enumerate(stranded):
        conversation = await conversations.conversation_for_workflow(pool, message.conversation_id)
        try:
            await hand_over(
                pool, temporal, settings, conversation, message.message_id, message.answer_id
            )
        except HeraldError as error:
            log.warning("stranded messages not handed over", error=error.message)
            return handed
        log.info("stranded inbound message handed over", message_id=str(message.message_id))
    return len(stranded)
