"""Conversations: list and read them; the carrier's inbound-message webhook feeds them."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.carrier_signature import SignedForm
from api.conversation_models import ConversationDetail, ConversationList, ConversationMessages
from api.deps import AppSettings, ConversationsRead, Pool, Temporal
from api.models import Envelope
from api.pagination import Cursor, Limit
from api.services import conversations as service
from api.services import inbound
from settings import INBOUND_PATH
from workflows.statuses import ConversationStatus

router = APIRouter(tags=["conversations"])

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


@router.get("/v1/sms/conversations", response_model=Envelope[ConversationList])
async def list_conversations(
    account_id: ConversationsRead,
    pool: Pool,
    user_number: Annotated[str | None, Query(description="Only with this user.")] = None,
    agent_number: Annotated[str | None, Query(description="Only from this sender.")] = None,
    state: Annotated[
        str | None, Query(description=f"One of {', '.join(ConversationStatus)}")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict:
    """The account's conversations, newest first (see Pagination)."""
    page = await service.list_conversations(
        pool,
        account_id,
        agent_number=agent_number,
        user_number=user_number,
        state=state,
        limit=limit,
        cursor=cursor,
    )
    return {"data": page}


@router.get("/v1/sms/conversations/{conversation_id}", response_model=Envelope[ConversationDetail])
async def get_conversation(
    account_id: ConversationsRead, pool: Pool, settings: AppSettings, conversation_id: str
) -> dict:
    """One conversation with its messages, both directions, oldest first: the first 1,000,
    and `messages_next_cursor` for the rest."""
    return {"data": await service.get_conversation(pool, settings, account_id, conversation_id)}


@router.get(
    "/v1/sms/conversations/{conversation_id}/messages",
    response_model=Envelope[ConversationMessages],
)
async def list_conversation_messages(
    account_id: ConversationsRead,
    pool: Pool,
    conversation_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict:
    """The conversation's messages, both directions, oldest first (see Pagination)."""
    page = await service.list_messages(
        pool, account_id, conversation_id, limit=limit, cursor=cursor
    )
    return {"data": page}


@router.post(
    INBOUND_PATH,
    response_class=Response,
    responses={200: {"content": {"text/xml": {}}, "description": "Empty TwiML"}},
)
async def twilio_inbound(
    pool: Pool, temporal: Temporal, settings: AppSettings, signed: SignedForm
) -> Response:
    """The carrier's webhook for messages users send to a registered sender (form body)."""
    await inbound.receive(pool, temporal, settings, signed.params, signers=signed.signers)
    return Response(EMPTY_TWIML, media_type="text/xml")
