"""The side effects a conversation asks for: send a message, end it, post its events."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.backoff import carrier_deferred
from activities.channels import carrier_address
from activities.heartbeats import EventPostHeartbeat
from activities.outages import through_outages
from activities.providers.twilio import SendResult, Verdict
from activities.reconciliation import CLOCK_SLACK, carrier_list
from activities.resources import WorkerResources
from activities.webhooks import post_event, posts_by, retry_delay
from store import (
    accounts,
    carrier_accounts,
    conversation_messages,
    conversations,
    messages,
    numbers,
    opt_outs,
)
from store.db import UNAVAILABLE
from workflows.contracts import (
    ConversationEvent,
    ConversationRef,
    EndConversationInput,
    SendMessageInput,
    SendMessageResult,
)
from workflows.statuses import ConversationStatus

log = structlog.get_logger(__name__)

MESSAGE_EVENT_FIELDS = (
    "sender",
    "kind",
    "channel",
    "body",
    "content_sid",
    "status",
    "carrier_sid",
    "error_code",
    "error_message",
)


# A conversation message's error code when its sender is no longer the account's.
SENDER_NOT_HELD = "sender_not_held"


class ConversationActivities(WorkerResources):
    @activity.defn
    async def send_conversation_message(self, input: SendMessageInput) -> SendMessageResult:
        """Send the message once, or defer it to the next attempt (the carrier's deferrals
        have MESSAGE_RETRY's attempts). Every statement rides out a PostgreSQL outage
        (through_outages): a failed attempt would spend one of those attempts, and after the
        last the workflow settles the message (`settle_unsent_message`: `failed` unsent);
        once the carrier has it, the attempt's retry would find it `sending` and make it
        `uncertain`, to be looked up in the carrier's list (`_settle_lost`).
        """
        pool = self._pool
        message_id = uuid.UUID(input.message_id)
        await self._write_own_message(input)
        attempt = activity.info().attempt
        if attempt > 1:
            lost_at = await through_outages(
                lambda: conversation_messages.settle_lost_claim(pool, message_id)
            )
            if lost_at is not None:
                return await self._settle_lost(message_id, lost_at)
        claims = 0

        async def claim() -> conversation_messages.ClaimedConversationMessage | None:
            nonlocal claims
            claims += 1
            return await conversation_messages.claim_message(pool, message_id, again=claims > 1)

        message = await through_outages(claim)
        if message is None:
            return await self._status_of(message_id)
        # HELP is answered even after STOP: carriers require it.
        if message.kind != "help" and await through_outages(
            lambda: opt_outs.is_opted_out(pool, message.account_id, message.user_number)
        ):
            await through_outages(
                lambda: conversation_messages.record_outcome(
                    pool, message_id, status="skipped", error_code="opted_out"
                )
            )
            return SendMessageResult(status="skipped", error_code="opted_out")
        if not await self._sender_held(message):
            # The sender given up since the message was queued (another account's, perhaps,
            # by now) is not sent from: a silence timer's message, hours after the send that
            # set it, and a send's own, queued behind others of its pair (a backlog of a
            # conversation's messages goes out one at a time) or deferred by the carrier.
            await through_outages(
                lambda: conversation_messages.record_outcome(
                    pool,
                    message_id,
                    status="failed",
                    error_code=SENDER_NOT_HELD,
                    error_message=(
                        "the sender is no longer a sender of this account registered for its"
                        " channel"
                    ),
                )
            )
            return SendMessageResult(status="failed", error_code=SENDER_NOT_HELD)
        credentials = await through_outages(
            lambda: carrier_accounts.carrier_credentials(pool, message.account_id)
        )
        to = carrier_address(message.user_number, message.channel)
        from_ = carrier_address(message.agent_number, message.channel)
        asked = datetime.now(UTC)
        started = time.monotonic()
        result = await self._carrier.send(
            to=to,
            from_=from_,
            body=message.body or "",
            status_callback=self._settings.status_callback_url,
            content_sid=message.content_sid,
            content_variables=message.content_variables,
            credentials=credentials,
        )
        self._metrics.carrier_latency.labels(result.verdict.value).observe(
            time.monotonic() - started
        )
        reconciled = result.verdict is Verdict.UNCERTAIN
        if reconciled:
            result = await self._reconcile(
                result, message_id, to, from_, message, asked, credentials
            )
        # Counted as a batch's message is, on each attempt (a deferred one, as `retry`).
        self._metrics.messages.labels(
            result.verdict.value, result.error_code or "", message.agent_number
        ).inc()
        if reconciled and result.verdict is Verdict.SENT:
            # Recorded `sent`, with its sid, as it was found.
            log.info("conversation message", message_id=input.message_id, status="sent")
            return await self._status_of(message_id, message.claimed_at)
        if result.verdict is Verdict.RETRY and attempt < input.attempts:
            await through_outages(
                lambda: conversation_messages.requeue_message(
                    pool,
                    message_id,
                    error_code=result.error_code,
                    error_message=result.error_message,
                )
            )
            raise carrier_deferred(
                f"carrier deferred the message ({result.error_code})", result.retry_after or None
            )
        # Out of attempts, a deferred message fails: a reply minutes late is worse than none.
        status = Verdict.FAILED.value if result.verdict is Verdict.RETRY else result.verdict.value
        if result.opts_out:
            # The user unsubscribed at the carrier (21610): as a batch's row does, for the
            # account's every sender, before the outcome (a retry after it finds it again).
            await through_outages(
                lambda: opt_outs.add_opt_out(
                    pool, message.account_id, message.user_number, source="carrier"
                )
            )
        await through_outages(
            lambda: conversation_messages.record_outcome(
                pool,
                message_id,
                status=status,
                carrier_sid=result.sid,
                error_code=result.error_code,
                error_message=result.error_message,
            )
        )
        log.info("conversation message", message_id=input.message_id, status=status)
        # With the time its request was made, on the database's clock, as a reply's is: the
        # user's silence after it starts then, however long its answer or reconciliation took.
        return await self._status_of(message_id, message.claimed_at)

    @activity.defn
    async def settle_unsent_message(self, input: SendMessageInput) -> SendMessageResult:
        """After the last attempt of a message's send failed (not with the carrier's answer:
        its workers died, or PostgreSQL was away through every attempt), settle what it left,
        else it stays `sending` or `queued` for good: a message still `queued` is `failed`
        (SEND_FAILED), first, so that an attempt still running cannot claim it after; a claim
        lost in that attempt is looked up in the carrier's list (`_settle_lost`), at most
        once: a list that fails leaves it `uncertain`, and the conversation goes on. A
        workflow's own message whose row was never written is written first, to be failed."""
        pool = self._pool
        message_id = uuid.UUID(input.message_id)
        await self._write_own_message(input)
        await conversation_messages.fail_unsent(pool, message_id)
        lost_at = await conversation_messages.settle_lost_claim(pool, message_id)
        if lost_at is not None:
            try:
                await self._settle_lost(message_id, lost_at)
            except Exception as error:
                if isinstance(error, UNAVAILABLE):
                    raise
                log.warning(
                    "lost claim not looked up", message_id=input.message_id, error=repr(error)
                )
        return await self._status_of(message_id)

    async def _settle_lost(self, message_id: uuid.UUID, claimed_at: datetime) -> SendMessageResult:
        """A message an earlier attempt claimed, then never recorded (its worker died, or it
        ran past its time), now `uncertain`: `sent` if the carrier's list has it since that
        claim (`_reconcile`), with its sid, for its receipts. Otherwise it stays `uncertain`:
        that attempt may still be sending it, so it is not sent again. Only a message with its
        own text is looked up (a template's text is the carrier's, and another message to the
        user in those minutes would pass for it), and only while its account holds the
        sender (another account's messages from it are in the same list)."""
        pool = self._pool
        message = await through_outages(
            lambda: conversation_messages.lost_message(pool, message_id)
        )
        if not message.body or not await self._sender_held(message):
            return await self._status_of(message_id)
        credentials = await through_outages(
            lambda: carrier_accounts.carrier_credentials(pool, message.account_id)
        )
        found = await self._reconcile(
            SendResult(verdict=Verdict.UNCERTAIN, error_message="its attempt was lost"),
            message_id,
            carrier_address(message.user_number, message.channel),
            carrier_address(message.agent_number, message.channel),
            message,
            claimed_at,
            credentials,
        )
        log.info("lost claim looked up", message_id=str(message_id), found=found.sid is not None)
        return await self._status_of(message_id, claimed_at)

    async def _write_own_message(self, input: SendMessageInput) -> None:
        """The row of a message the workflow writes itself (a silence timer's), by its send's
        first attempt; a repeat of the insert is a no-op. A send's message has its row already."""
        if input.body is None or input.conversation_id is None:
            return
        conversation_id, kind, body = uuid.UUID(input.conversation_id), input.kind, input.body
        await through_outages(
            lambda: conversation_messages.add_agent_message(
                self._pool,
                message_id=uuid.UUID(input.message_id),
                conversation_id=conversation_id,
                kind=kind,
                body=body,
            )
        )

    async def _sender_held(self, message: conversation_messages.ClaimedConversationMessage) -> bool:
        """Whether the message's account still holds its sender, registered for its channel."""
        holder = await through_outages(
            lambda: numbers.owner_of_number(
                self._pool, message.agent_number, channel=message.channel
            )
        )
        return holder == message.account_id

    async def _status_of(
        self, message_id: uuid.UUID, requested_at: datetime | None = None
    ) -> SendMessageResult:
        """The message's outcome, with when the request the carrier took was made: at
        `requested_at` (its claim, on the database's clock), or when it was recorded `sent`
        when that is not known (an earlier attempt's)."""
        status, code, sent_at = await through_outages(
            lambda: conversation_messages.message_status(self._pool, message_id)
        )
        taken = (requested_at or sent_at) if sent_at is not None else None
        return SendMessageResult(
            status=status, error_code=code, sent_at=None if taken is None else taken.timestamp()
        )

    async def _reconcile(
        self,
        result: SendResult,
        message_id: uuid.UUID,
        to: str,
        from_: str,
        message: conversation_messages.ClaimedConversationMessage,
        asked: datetime,
        credentials: tuple[str, str] | None,
    ) -> SendResult:
        """An `uncertain` send settled as a batch's rows are (activities/reconciliation.py):
        after the reconciliation margin, the carrier's messages from the sender to the
        number; one created since the request, with its text, that no message holds yet, is
        this one, recorded `sent` with its sid here, under the number's reconciliation lock
        (messages.settle_conversation_message); none means the carrier never got it
        (deferred: sent again). Without a list it stays `uncertain`."""
        await asyncio.sleep(self._settings.reconcile_margin_seconds)
        found = await carrier_list(self._carrier, to, from_, credentials)
        if found is None:
            return result
        # A content template's text is the carrier's to render: its message matches by the
        # numbers and time alone, as a batch row's does (reconciliation._same_text).
        any_text = not message.body or message.content_sid
        matches = [
            m.sid
            for m in reversed(found)  # oldest first
            if m.created >= asked - CLOCK_SLACK and (any_text or m.body == message.body)
        ]
        sid = await through_outages(
            lambda: messages.settle_conversation_message(
                self._pool, message.account_id, message.user_number, message_id, matches
            )
        )
        log.info("uncertain message reconciled", found=sid is not None)
        if sid is not None:
            return SendResult(verdict=Verdict.SENT, sid=sid)
        return SendResult(
            verdict=Verdict.RETRY,
            error_code=result.error_code,
            error_message=f"{result.error_message} (the carrier has no such message)",
        )

    @activity.defn
    async def conversation_state(self, input: ConversationRef) -> ConversationStatus:
        conversation = await conversations.conversation_for_workflow(
            self._pool, uuid.UUID(input.conversation_id)
        )
        return ConversationStatus(conversation["state"])

    @activity.defn
    async def end_conversation(self, input: EndConversationInput) -> ConversationStatus | None:
        """End the conversation in `input.state`; the state it ended in, which is another
        when it had ended already (closed by a newer conversation of the pair while its
        timeout was being sent). None is what runs before this returned a state recorded."""
        ended = await conversations.end_conversation(
            self._pool, uuid.UUID(input.conversation_id), input.state
        )
        log.info("conversation ended", conversation_id=input.conversation_id, state=ended)
        return ended

    @activity.defn
    async def post_conversation_event(self, event: ConversationEvent) -> bool | None:
        """POST the event to the conversation's webhook (the send's own, else its sender's),
        signed as a batch's status events are, with an id that stays the same on every
        attempt. A failed post raises with the delay of the webhook retry schedule, so
        Temporal retries it then (no worker slot held meanwhile); delivered, gone (410) or
        past the schedule's last retry (an event of `one_post`, its first), the event is
        settled: whether it was delivered, None when there is no webhook to post to."""
        conversation = await conversations.conversation_for_workflow(
            self._pool, uuid.UUID(event.conversation_id)
        )
        url: str | None = conversation["webhook"] or await numbers.sender_webhook(
            self._pool, conversation["account_id"], conversation["agent_number"]
        )
        if not url:
            return None
        payload = await self._payload(conversation, event)
        secrets = await accounts.webhook_signing_secrets(self._pool, conversation["account_id"])
        attempt = await post_event(
            self._http,
            url,
            payload,
            webhook_id=_webhook_id(event),
            secrets=secrets,
            within_seconds=self._settings.webhook_timeout_seconds,
        )
        schedule = self._settings.webhook_retry_schedule_seconds
        number = EventPostHeartbeat.last().posts + 1
        if event.first_posted_at is not None:
            # Carried on by a run that ended with it undelivered: its schedule goes on.
            since = time.time() - event.first_posted_at
            number = max(number, posts_by(since, schedule) + 1)
        delay = None
        if not event.one_post:
            delay = retry_delay(
                attempt, number, schedule=schedule, jitter=self._settings.webhook_retry_jitter
            )
        log.info(
            "conversation event posted",
            conversation_id=event.conversation_id,
            kind=payload["event"],
            attempt=number,
            status_code=attempt.status_code,
            error=attempt.error,
            retry_in=delay,
        )
        if delay is not None:
            EventPostHeartbeat(posts=number).send()
            raise ApplicationError(
                f"webhook post failed: {attempt.error}", next_retry_delay=timedelta(seconds=delay)
            )
        return attempt.error is None

    async def _payload(self, conversation: dict, event: ConversationEvent) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "event": "message" if event.message_id else "status",
            "conversation_id": event.conversation_id,
            "workflow_id": conversation["workflow_id"],
            "agent_number": conversation["agent_number"],
            "user_number": conversation["user_number"],
            "timestamp": datetime.now(UTC).isoformat(),
        }
        if event.message_id:
            message = await conversation_messages.message_for_workflow(
                self._pool, uuid.UUID(event.message_id)
            )
            payload["message_id"] = event.message_id
            payload.update({name: message[name] for name in MESSAGE_EVENT_FIELDS})
        else:
            payload["status"] = event.state
            if conversation["timed_out_at"] is not None:
                payload["timed_out_at"] = conversation["timed_out_at"].isoformat()
        # In every payload, as Bland's contract has `metadata` (null when none was given).
        for name in ("metadata", "request_data"):
            payload[name] = conversation[name]
        if conversation["batch_id"] is not None:
            payload["batch_id"] = str(conversation["batch_id"])
        return payload

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [
            self.send_conversation_message,
            self.settle_unsent_message,
            self.conversation_state,
            self.end_conversation,
            self.post_conversation_event,
        ]


def _webhook_id(event: ConversationEvent) -> str:
    """The event's `webhook-id`, the same on each of its attempts: receivers dedupe on it."""
    what = event.message_id or event.state
    return f"conv_{event.conversation_id}_{what}"
