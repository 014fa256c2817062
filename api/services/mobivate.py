"""The Mobivate dialect: its batch request turned into Herald's own, on the same pipeline."""

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio.client import Client

from activities.recipients.rows import MESSAGE_COLUMN, PHONE_COLUMN, REQUEST_DATA_PREFIX
from api.mobivate_models import MobivateBatchAccepted, MobivateBatchRequest, MobivateRecipient
from api.models import BatchRequest
from api.services.batches import start_batch
from settings import Settings
from store import messages


async def send_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    body: MobivateBatchRequest,
) -> MobivateBatchAccepted:
    """Start the batch as an inline one of Herald's; keep the recipients' references."""
    recipients = body.to_send()
    started = await start_batch(pool, temporal, settings, account_id, batch_request(body))
    batch_id = uuid.UUID(started.batch_id)
    # JSON rows count from 1, in the order given.
    references = [
        (row_number, recipient.reference)
        for row_number, recipient in enumerate(recipients, start=1)
        if recipient.reference is not None
    ]
    if references:
        await messages.add_references(pool, account_id, batch_id, references)
    scheduled = body.schedule_date_time or datetime.now(UTC)
    return MobivateBatchAccepted.model_validate(
        {
            "record": {
                "id": started.batch_id,
                "scheduled": scheduled.astimezone(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "recipient_count": len(recipients),
            }
        }
    )


def batch_request(body: MobivateBatchRequest) -> BatchRequest:
    """Herald's request for the same batch. Both template syntaxes are `{{NAME}}`, so the
    texts carry over as they are; the dialect's defaults are left to Herald's."""
    settings_global: dict[str, Any] = {"agent_number": body.originator, "agent_message": body.text}
    if body.route_id is not None:
        settings_global["route_id"] = body.route_id
    request: dict[str, Any] = {
        "recipients": [_row(recipient) for recipient in body.to_send()],
        "global": settings_global,
        "name": body.name,
        "schedule_at": body.schedule_date_time,
        "spread_hours": body.spread_hours or None,
        "number_check": body.number_check,
    }
    if body.exclude_duplicates is not None:
        request["exclude_duplicates"] = body.exclude_duplicates
    if body.exclude_opt_outs is not None:
        request["exclude_opt_outs"] = body.exclude_opt_outs
    if body.shorten_urls:
        request["shorten_urls"] = True
    if body.status_webhook is not None:
        request["status_webhook"] = str(body.status_webhook)
    return BatchRequest.model_validate(request)


def _row(recipient: MobivateRecipient) -> dict[str, Any]:
    """A recipient as a row of a JSON file. Its meta keys become `request_data.` columns,
    which give template variables of those names and cannot be taken for the number or
    the row's own message, whatever the keys are."""
    row: dict[str, Any] = {PHONE_COLUMN: recipient.recipient}
    for key, value in (recipient.meta or {}).items():
        row[REQUEST_DATA_PREFIX + key] = value
    if recipient.text is not None:
        row[MESSAGE_COLUMN] = recipient.text
    return row
