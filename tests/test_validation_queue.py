"""Large files are validated from a task queue of their own, where a worker takes at most
`validations_at_once` at once and the others wait holding none of its slots; a small file is
validated on the workflow's own task queue, never behind them."""

import httpx
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from api.services.batches import LARGE_FILE_BYTES
from settings import Settings
from tests.support.batches import in_an_hour, start_marked_batch, waiting_batch
from tests.support.builders import slow_to_validate, unique_numbers
from tests.support.delivery import own_worker
from tests.support.stack import Account, WebhookReceiver, api_client
from workflows.contracts import batch_workflow_id

# Past LARGE_FILE_BYTES, and read row by row (a quote in an unquoted cell): about a second.
LARGE = slow_to_validate(60_000)


async def validations(temporal: Client, batch_id: str) -> list[HistoryEvent]:
    """The batch's validate_recipients events: scheduled, started, completed."""
    history = await temporal.get_workflow_handle(batch_workflow_id(batch_id)).fetch_history()
    scheduled = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "validate_recipients"
    ]
    ids = {e.event_id for e in scheduled}
    return [
        *scheduled,
        *(
            e
            for e in history.events
            if (
                e.HasField("activity_task_started_event_attributes")
                and e.activity_task_started_event_attributes.scheduled_event_id in ids
            )
            or (
                e.HasField("activity_task_completed_event_attributes")
                and e.activity_task_completed_event_attributes.scheduled_event_id in ids
            )
        ),
    ]


async def test_a_large_file_is_validated_on_the_validation_queue_and_a_small_one_not(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    temporal: Client,
) -> None:
    assert len(LARGE) > LARGE_FILE_BYTES
    large = await waiting_batch(api, account, webhooks, LARGE)
    small = await waiting_batch(api, account, webhooks, unique_numbers(3))
    queues = [
        (await validations(temporal, batch_id))[0].activity_task_scheduled_event_attributes
        for batch_id in (large, small)
    ]
    for batch_id in (large, small):
        await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    assert [q.task_queue.name for q in queues] == [
        settings.validation_task_queue,
        settings.task_queue,
    ]


async def test_a_worker_validates_no_more_large_files_at_once_than_its_turns(
    account: Account, webhooks: WebhookReceiver, settings: Settings, temporal: Client
) -> None:
    async with (
        own_worker(temporal, settings, validations_at_once=1) as own,
        api_client(own) as api,
    ):
        started = [
            await start_marked_batch(api, account, webhooks, LARGE, schedule_at=in_an_hour())
            for _ in range(2)
        ]
        for _, marker in started:
            await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
        spans = []
        for batch_id, _ in started:
            _, began, ended = await validations(temporal, batch_id)
            spans.append((began.event_time.ToDatetime(), ended.event_time.ToDatetime()))
            await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    first, second = sorted(spans)
    assert second[0] >= first[1], spans
