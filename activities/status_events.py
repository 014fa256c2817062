"""A batch's lifecycle events: recorded on the batch row and posted to its status webhook."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from temporalio import activity

from activities.heartbeats import DeliveryHeartbeat
from activities.resources import WorkerResources
from activities.webhooks import DeliveryAttempt, post_event, retry_delay
from store import accounts, batches, events, links, messages
from workflows.contracts import (
    ClickEventInput,
    DeliverEventsInput,
    DeliverEventsResult,
    StatusUpdate,
)

log = structlog.get_logger(__name__)


class StatusEventActivities(WorkerResources):
    """Records a batch's events and posts them, in order."""

    @activity.defn
    async def record_status(self, update: StatusUpdate) -> None:
        batch_id = uuid.UUID(update.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        # The status and its event in one transaction: a client that sees the batch final
        # finds its final event in the batch's log.
        async with self._pool.acquire() as conn, conn.transaction():
            await batches.set_status(
                conn, batch_id, status=update.status, code=update.code, reason=update.reason
            )
            waiting = (
                await messages.count_waiting_for_window(conn, batch_id)
                if batch["request"].get("send_window")
                else None
            )
            payload = events.event_payload(batch, update, waiting_for_window=waiting)
            recorded = await events.append_event(
                conn,
                batch_id=batch_id,
                account_id=batch["account_id"],
                seq=update.event_seq,
                # The run that records it: a reset run's events go after the old run's.
                run_id=activity.info().workflow_run_id or "",
                status=update.status,
                payload=payload,
                posted=not update.progress or bool(batch["request"].get("status_webhook_progress")),
            )
        if recorded and not update.progress:
            self._metrics.batches.labels(update.status).inc()
        log.info("batch status", batch_id=update.batch_id, status=update.status)

    @activity.defn
    async def deliver_status_events(self, input: DeliverEventsInput) -> DeliverEventsResult:
        """Post the batch's unsettled events in order until one must wait for a retry.

        An event is posted only once the one before it is settled (delivered or given up
        on), so a receiver sees a batch's events in order. Only a 2xx delivers; `410 Gone`
        turns the batch's webhook off. The workflow sleeps `retry_in` on a durable timer and
        calls again, so no worker slot is held while a retry waits.
        """
        batch_id = uuid.UUID(input.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        url: str | None = batch["request"].get("status_webhook")
        disabled = batch["webhook_disabled_at"] is not None
        # Once an event is given up on, each one after it gets one post until one is
        # delivered: a receiver that failed a whole schedule is down, and a schedule for
        # each event, one after another, kept the batch's run open for days.
        failing = bool(url) and not disabled and await events.receiver_failing(self._pool, batch_id)
        for event in await events.pending_events(self._pool, batch_id):
            DeliveryHeartbeat(event_seq=event["seq"]).send()
            if not url or disabled:
                await events.settle_unsent(self._pool, batch_id, event["seq"])
                continue
            due = event["next_attempt_at"]
            if due is not None and due > datetime.now(UTC):
                return DeliverEventsResult(retry_in=(due - datetime.now(UTC)).total_seconds())
            secrets = await accounts.webhook_signing_secrets(self._pool, event["account_id"])
            attempt = await post_event(
                self._http,
                url,
                event["payload"],
                webhook_id=f"evt_{batch_id}_{event['seq']}",
                secrets=secrets,
                within_seconds=self._settings.webhook_timeout_seconds,
            )
            number = event["attempts"] + 1
            delay = None if failing else self._retry_delay(attempt, number)
            failing = attempt.error is not None and delay is None
            await events.record_delivery(
                self._pool,
                batch_id=batch_id,
                account_id=event["account_id"],
                event_seq=event["seq"],
                url=url,
                attempt=number,
                status_code=attempt.status_code,
                error=attempt.error,
                duration_ms=attempt.duration_ms,
                next_retry_at=None if delay is None else _after(delay),
            )
            self._count(attempt)
            if attempt.status_code == 410:
                await batches.disable_webhook(self._pool, batch_id)
                disabled = True
                log.info("status webhook gone: turned off", batch_id=input.batch_id)
            elif delay is not None:
                return DeliverEventsResult(retry_in=delay)
        return DeliverEventsResult()

    @activity.defn
    async def deliver_click_event(self, input: ClickEventInput) -> DeliverEventsResult:
        """Post a short link's first click to its batch's status webhook, signed and retried
        as the batch's own events, whether or not the batch is still running (a click
        usually comes after it has finished). `retry_in`: when to call again."""
        click = await links.click_for_event(self._pool, input.code)
        if click is None:
            return DeliverEventsResult()
        url: str | None = click["request"].get("status_webhook")
        if not url or click["webhook_disabled_at"] is not None:
            return DeliverEventsResult()
        secrets = await accounts.webhook_signing_secrets(self._pool, click["account_id"])
        attempt = await post_event(
            self._http,
            url,
            _click_payload(click),
            webhook_id=f"click_{input.code}",
            secrets=secrets,
            within_seconds=self._settings.webhook_timeout_seconds,
        )
        number = await links.record_event_attempt(
            self._pool, input.code, delivered=attempt.error is None
        )
        self._count(attempt)
        if attempt.status_code == 410:
            await batches.disable_webhook(self._pool, click["batch_id"])
            log.info("status webhook gone: turned off", batch_id=str(click["batch_id"]))
        return DeliverEventsResult(retry_in=self._retry_delay(attempt, number))

    def _retry_delay(self, attempt: DeliveryAttempt, number: int) -> float | None:
        return retry_delay(
            attempt,
            number,
            schedule=self._settings.webhook_retry_schedule_seconds,
            jitter=self._settings.webhook_retry_jitter,
        )

    def _count(self, attempt: DeliveryAttempt) -> None:
        self._metrics.webhook_deliveries.labels(
            "delivered"
            if attempt.error is None
            else "gone"
            if attempt.status_code == 410
            else "failed"
        ).inc()

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [self.record_status, self.deliver_status_events, self.deliver_click_event]


def _click_payload(click: dict[str, Any]) -> dict[str, Any]:
    """A `click` event: the batch's, as its lifecycle events, with the message and link."""
    payload: dict[str, Any] = {
        "batch_id": str(click["batch_id"]),
        "workflow_id": click["workflow_id"],
        "status": "click",
        "timestamp": datetime.now(UTC).isoformat(),
        "seq": click["seq"],
        "row_number": click["row_number"],
        "to_number": click["to_number"],
        "url": click["url"],
        "clicked_at": click["first_clicked_at"].isoformat(),
        "user_agent": click["first_user_agent"],
    }
    if click["reference"] is not None:
        payload["reference"] = click["reference"]
    metadata = (click["request"].get("global") or {}).get("metadata")
    if metadata:
        payload["metadata"] = metadata
    return payload


def _after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
