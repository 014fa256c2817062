"""Single sends: one message to one person, inside the pair's conversation."""

from typing import Annotated

from fastapi import APIRouter, Header

from api.conversation_models import SendReply, SendRequest
from api.deps import AppSettings, Pool, SendWriteKey, Temporal, require_named
from api.models import Envelope
from api.services import send as service

router = APIRouter(tags=["send"])


@router.post("/v1/sms/send", response_model=Envelope[SendReply])
async def send_sms(
    grant: SendWriteKey,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    body: SendRequest,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="The same key with the same body returns the first reply, sending nothing.",
        ),
    ] = None,
) -> dict:
    """Send one message; answers once it is recorded and handed to its conversation."""
    require_named(grant, campaign=body.campaign_id is not None)
    reply = await service.send_message(
        pool, temporal, settings, grant.account_id, body, idempotency_key
    )
    return {"data": reply}
