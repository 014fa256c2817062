"""ClickEventWorkflow: a short link's first click, posted to its batch's status webhook.

Started by `GET /s/{code}` on a link's first click, one per link (its id is the code's), apart
from the batch's workflow, which has usually finished by the time anyone clicks. Retries wait
on durable timers, on the status webhooks' schedule.
"""

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.status_events import StatusEventActivities
    from workflows.contracts import CLICK_EVENT_WORKFLOW, ClickEventInput
    from workflows.retries import DB_RETRY


@workflow.defn(name=CLICK_EVENT_WORKFLOW)
class ClickEventWorkflow:
    @workflow.run
    async def run(self, input: ClickEventInput) -> None:
        while True:
            result = await workflow.execute_activity_method(
                StatusEventActivities.deliver_click_event,
                input,
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=DB_RETRY,
            )
            if result.retry_in is None:
                return
            await workflow.sleep(result.retry_in)
