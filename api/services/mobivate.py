"""The Mobivate dialect: its batch request turned into Herald's own, on the same pipeline."""

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio.client import Client

from activities.recipients.rows import MESSAGE_COLUMN, PHONE_COLUMN, REQUEST_DATA_PREFIX
from api.mobivate_models import (
    MobivateBatchAccepted,
    MobivateBatchRead,
    MobivateBatchRequest,
    MobivateRecipient,
)
from api.models import BatchRequest
from api.services.batch_checks import TooManyRecipients
from api.services.batches import batch_or_404, get_batch, start_batch
from api.services.mailing_lists import list_sizes
from settings import Settings


async def send_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    body: MobivateBatchRequest,
) -> MobivateBatchAccepted:
    """Start the batch as an inline one of Herald's: the numbers are its rows, in order, and
    the mailing lists follow them; keep the recipients' references."""
    numbers = [r for r in body.to_send() if not r.is_mailing_list()]
    lists = [r for r in body.to_send() if r.is_mailing_list()]
    sizes = await list_sizes(pool, account_id, [r.recipient for r in lists])
    recipient_count = len(numbers) + sum(sizes[r.recipient] for r in lists)
    if recipient_count > settings.max_rows_per_batch:
        # Known now: refused here rather than accepted, then failed by its validation.
        raise TooManyRecipients(
            f"{recipient_count} recipients with the lists' contacts; a batch holds at most"
            f" {settings.max_rows_per_batch}"
        )
    # JSON rows count from 1, in the order given.
    senders = {
        row_number: recipient.originator
        for row_number, recipient in enumerate(numbers, start=1)
        if recipient.originator is not None
    }
    references = [
        (row_number, recipient.reference)
        for row_number, recipient in enumerate(numbers, start=1)
        if recipient.reference is not None
    ]
    started = await start_batch(
        pool,
        temporal,
        settings,
        account_id,
        batch_request(body),
        senders=senders,
        references=references,
    )
    # The time it was accepted, as the batch keeps it: read back, the record says the same.
    scheduled = (
        body.schedule_date_time
        or (await batch_or_404(pool, account_id, started.batch_id))["created_at"]
    )
    return MobivateBatchAccepted.model_validate(
        {
            "record": {
                "id": started.batch_id,
                "scheduled": _utc(scheduled),
                "recipient_count": recipient_count,
            }
        }
    )


def batch_request(body: MobivateBatchRequest) -> BatchRequest:
    """Herald's request for the same batch. Both template syntaxes are `{{NAME}}`, so the
    texts carry over as they are; the dialect's defaults are left to Herald's."""
    settings_global: dict[str, Any] = {"agent_number": body.originator, "agent_message": body.text}
    if body.route_id is not None:
        settings_global["route_id"] = body.route_id
    numbers = [_row(r) for r in body.to_send() if not r.is_mailing_list()]
    lists = [_list(r) for r in body.to_send() if r.is_mailing_list()]
    request: dict[str, Any] = {
        "recipients": numbers or None,
        "lists": lists or None,
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


def _list(recipient: MobivateRecipient) -> dict[str, Any]:
    """A mailing-list recipient as one of Herald's batch lists: its text and originator
    are its contacts', its other meta keys defaults of their fields."""
    source: dict[str, Any] = {"id": recipient.recipient}
    defaults = {k: v for k, v in (recipient.meta or {}).items() if k != "type"}
    if defaults:
        source["request_data"] = defaults
    if recipient.text is not None:
        source["agent_message"] = recipient.text
    if recipient.originator is not None:
        source["agent_number"] = recipient.originator
    return source


async def read_batch(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, batch_id: str
) -> MobivateBatchRead:
    """A batch of the account (started in any dialect) as the dialect's record."""
    stored = await batch_or_404(pool, account_id, batch_id)
    batch = await get_batch(pool, settings, account_id, batch_id)
    schedule_at = stored["request"].get("schedule_at")
    scheduled = datetime.fromisoformat(schedule_at) if schedule_at else batch.created_at
    return MobivateBatchRead.model_validate(
        {
            "record": {
                "id": batch.batch_id,
                "scheduled": _utc(scheduled),
                "recipient_count": batch.rows_total,
                "name": batch.name,
                "status": batch.status,
                "counts": batch.counts,
            }
        }
    )


def _utc(moment: datetime) -> str:
    """The dialect's time: UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
