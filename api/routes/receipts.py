"""Delivery receipts: the carrier's status callback for each message Herald sent."""

from fastapi import APIRouter, Request, Response

from api.carrier_signature import signed_form
from api.models import ErrorEnvelope
from api.services import receipts as service
from settings import STATUS_CALLBACK_PATH

router = APIRouter(tags=["carrier webhooks"])


@router.post(
    STATUS_CALLBACK_PATH,
    status_code=204,
    response_class=Response,
    responses={
        400: {"model": ErrorEnvelope},
        403: {"model": ErrorEnvelope},
        503: {"model": ErrorEnvelope},
    },
)
async def message_status(request: Request) -> Response:
    """Twilio's StatusCallback, signed with the auth token: moves the message (found by the
    send's key in the URL's query, `?m=<batch id>.<seq>.<attempt>`, which Herald gives each batch
    message it sends with its own credentials, else by `MessageSid`) to `delivered`,
    `undelivered` or `failed` with the carrier's `ErrorCode`.

    Idempotent, and a receipt never moves a message back: a `sent` after `delivered`, or a
    second final status, changes nothing. Answered once the receipt is queued; it is applied
    within moments, in a batch. An unknown `MessageSid` is answered 204 as well; a final
    receipt is kept and applied when its send is recorded. 503 `RECEIPT_NOT_QUEUED` when
    it could not be stored: the carrier posts it again.
    """
    # No dependencies: solving them cost a callback more than all its own work, and the
    # carrier posts two or three per message sent. The carrier's own (urlencoded) callbacks
    # do not even come here: api/receipt_lane.py answers them before the app's middleware.
    state = request.app.state
    with service.stored_or_retried():
        form = await signed_form(request, state.settings, state.pool, receipts=True)
    await service.take_receipt(state.pool, state.receipt_intake, form, request.url.query)
    return Response(status_code=204)
