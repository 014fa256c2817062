"""The side effects a batch asks for: validate the file, send slices, record and post events."""

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.backoff import retry_delay, stalls_before
from activities.pacing import SenderPacer
from activities.providers.twilio import SendResult, Verdict
from activities.recipient_table import NotPlain, PlainCsv, plain_csv
from activities.recipients import (
    Recipient,
    RecipientRules,
    Rejected,
    SourceInvalid,
    Tally,
    build_recipients,
    header_issue,
    read_rows,
    strict_failure,
)
from activities.resources import WorkerResources
from activities.webhooks import post_event
from store import accounts, batches, events, files, messages, opt_outs
from store.db import UNAVAILABLE
from workflows.contracts import (
    BatchCounts,
    DeliverEventsInput,
    DeliverEventsResult,
    FinishInput,
    ReopenInput,
    ReopenResult,
    SendCounts,
    SendSliceInput,
    StatusUpdate,
    ValidateInput,
    ValidationResult,
)

log = structlog.get_logger(__name__)

COPY_BATCH = 10_000
# A row the batch's `expire_at` caught before it was sent.
EXPIRED = SendResult(verdict=Verdict.EXPIRED)
# Often enough that a cancellation (delivered in a heartbeat's reply) is seen within a second.
HEARTBEAT_SECONDS = 0.5
FINAL_EVENT_FIELDS = (
    "total",
    "successful",
    "failed",
    "skipped",
    "cancelled",
    "uncertain",
    "expired",
)
# How long a send activity holding the carrier's answers waits for PostgreSQL to come back
# (a restart, a failover) before it gives up, leaving its rows to end `uncertain`.
OUTAGE_WAIT_SECONDS = 60.0


class BatchActivities(WorkerResources):
    @activity.defn
    async def validate_recipients(self, input: ValidateInput) -> ValidationResult:
        batch_id = uuid.UUID(input.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        account_id = batch["account_id"]
        _, content = await files.file_content(self._pool, account_id, batch_id)
        request: dict[str, Any] = batch["request"]
        settings_global: dict[str, Any] = request.get("global") or {}
        # The stored request leaves out options at their API defaults, repeated here.
        strict = bool(request.get("strict", False))
        opted_out: set[str] = set()
        if request.get("exclude_opt_outs", True):
            opted_out = await opt_outs.opted_out_numbers(self._pool, account_id)
        rules = RecipientRules(
            max_rows=input.limits.max_rows,
            max_message_chars=input.limits.max_message_chars,
            agent_message=settings_global.get("agent_message"),
            request_data=settings_global.get("request_data") or {},
            column_mapping=request.get("column_mapping") or {},
            exclude_duplicates=request.get("exclude_duplicates", True),
            opted_out=opted_out,
        )
        try:
            # A plain CSV file is validated by columns, a block at a time; any other file,
            # or one that turns out not to be plain, row by row (a JSON file is parsed
            # whole). Either way off the event loop.
            plain = plain_csv(content, rules)
            async with self._pool.acquire() as conn, conn.transaction():
                await messages.clear_validation(conn, batch_id)
                tally = None
                if plain is not None:
                    try:
                        # A savepoint: the blocks before one that is not plain are undone.
                        async with conn.transaction():
                            tally = await _copy_blocks(
                                conn, batch_id, account_id, plain, with_ledger=not strict
                            )
                        header = plain.header
                    except NotPlain as error:
                        log.info("file not plain after all", batch_id=str(batch_id), why=str(error))
                if tally is None:
                    header, rows = await asyncio.to_thread(read_rows, content)
                    tally = await self._copy_rows(
                        conn,
                        batch_id,
                        account_id,
                        build_recipients(header, rows, rules),
                        stop_ledger_at_rejection=strict,
                    )
                issue = header_issue(header)
                if issue is not None:
                    await messages.copy_rejected(
                        conn, [_rejected_record(batch_id, account_id, issue)]
                    )
                failure = strict_failure(issue, tally) if strict else None
                if failure is not None:
                    await messages.clear_ledger(conn, batch_id)
                    tally = tally.without_ledger()
                await batches.set_validation_counts(
                    conn,
                    batch_id,
                    rows_total=tally.rows,
                    recipients=tally.recipients,
                    rejected=tally.rejected,
                    segments_total=tally.segments,
                    messages_gsm7=tally.gsm7,
                    messages_ucs2=tally.ucs2,
                )
            await messages.refresh_statistics(self._pool)
        except SourceInvalid as error:
            return ValidationResult(
                rows_total=0,
                recipients=0,
                rejected=0,
                skipped=0,
                code=error.code,
                reason=error.reason,
            )
        log.info(
            "file validated", batch_id=input.batch_id, recipients=tally.recipients, failure=failure
        )
        return ValidationResult(
            rows_total=tally.rows,
            recipients=tally.recipients,
            rejected=tally.rejected,
            skipped=tally.skipped,
            code=None if failure is None else "validation_failed",
            reason=failure,
        )

    async def _copy_rows(
        self,
        conn: asyncpg.Connection,
        batch_id: uuid.UUID,
        account_id: uuid.UUID,
        outcomes: Iterator[Recipient | Rejected],
        *,
        stop_ledger_at_rejection: bool,
    ) -> Tally:
        """COPY rows in blocks; parsing runs in a thread so the worker's loop stays free.

        With `stop_ledger_at_rejection` (strict), a rejected row dooms the batch: from then on
        only rejected rows are written, and the pass goes on so that every one is reported.
        """
        tally = Tally()
        while block := await asyncio.to_thread(list, itertools.islice(outcomes, COPY_BATCH)):
            ledger: list[tuple] = []
            refused: list[tuple] = []
            for item in block:
                tally.count(item)
                if isinstance(item, Rejected):
                    refused.append(_rejected_record(batch_id, account_id, item))
                    continue
                ledger.append(
                    (
                        batch_id,
                        tally.recipients - 1,
                        account_id,
                        item.row_number,
                        item.to_number,
                        item.body,
                        "skipped" if item.skip_code else "pending",
                        item.skip_code,
                        item.encoding,
                        item.segments,
                    )
                )
            if not (stop_ledger_at_rejection and tally.rejected):
                await messages.copy_recipients(conn, ledger)
            await messages.copy_rejected(conn, refused)
            activity.heartbeat(tally.rows)
        return tally

    @activity.defn
    async def send_slice(self, input: SendSliceInput) -> SendCounts:
        """Send the slice's pending rows concurrently and record them in one statement.

        When cancelled (pause, cancel), no new request starts; those on the wire finish and
        are recorded, the rest of the slice goes back to `pending`, then the cancellation
        goes on up.
        """
        batch_id = uuid.UUID(input.batch_id)
        claimed = await messages.claim_slice(self._pool, batch_id, input.start, input.end)
        pacer = SenderPacer(self._pool, input.agent_number)
        stopping = asyncio.Event()
        results: list[SendResult | None] = [None] * len(claimed)
        queue = iter(enumerate(claimed))

        async def send(message: messages.ClaimedMessage) -> SendResult | None:
            if input.pace.interval and not await _until(
                input.pace.send_time(message.seq), stopping
            ):
                return None
            if not await pacer.turn(stopping):
                return None
            if input.pace.expire_at and time.time() >= input.pace.expire_at:
                return EXPIRED
            return await self._carrier.send(
                to=message.to_number,
                from_=input.agent_number,
                body=message.body,
                status_callback=self._settings.status_callback_url,
            )

        async def lane() -> None:
            # A fixed set of lanes, not a task per message: the slice's rows in order, with
            # `send_concurrency` requests in flight; a row left when stopping stays None.
            for index, message in queue:
                if stopping.is_set():
                    return
                results[index] = await send(message)

        lanes = min(self._settings.send_concurrency, len(claimed))
        sends = asyncio.gather(*(lane() for _ in range(lanes)))
        heartbeats = asyncio.create_task(_heartbeat_until_done())
        try:
            await asyncio.shield(sends)
        except asyncio.CancelledError:
            stopping.set()
            heartbeats.cancel()
            # Temporal may repeat the cancellation; the requests on the wire still finish.
            while not sends.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(sends)
            await self._record(batch_id, claimed, results)
            raise
        finally:
            heartbeats.cancel()
        await self._record(batch_id, claimed, results)
        retry = [r for r in results if r is not None and r.verdict is Verdict.RETRY]
        if retry:
            # An attempt that got anything through resets the backoff; the next attempt reads
            # this heartbeat to know how long the carrier has refused everything.
            progressed = len(retry) < sum(r is not None for r in results)
            stalls = 0 if progressed else stalls_before(activity.info().heartbeat_details) + 1
            activity.heartbeat(stalls)
            retry_after = max((r.retry_after or 0) for r in retry)
            raise ApplicationError(
                f"carrier deferred {len(retry)} of {len(results)} messages ({retry[0].error_code})",
                type="CarrierDeferred",
                next_retry_delay=timedelta(seconds=retry_delay(stalls, retry_after)),
            )
        return SendCounts(
            sent=sum(r is not None and r.verdict is Verdict.SENT for r in results),
            failed=sum(r is not None and r.verdict is Verdict.FAILED for r in results),
        )

    async def _record(
        self,
        batch_id: uuid.UUID,
        claimed: list[messages.ClaimedMessage],
        results: list[SendResult | None],
    ) -> None:
        """Record a slice: first the opt-outs the carrier reported (idempotent, so a crash
        before the outcomes loses none), then every outcome in one statement."""
        opted_out = [
            m.to_number
            for m, r in zip(claimed, results, strict=True)
            if r is not None and r.opts_out
        ]
        if opted_out:
            await _through_outages(lambda: self._record_opt_outs(batch_id, opted_out))
        await _through_outages(
            lambda: messages.record_outcomes(self._pool, batch_id, _outcomes(claimed, results))
        )

    async def _record_opt_outs(self, batch_id: uuid.UUID, numbers: list[str]) -> None:
        account_id = (await batches.batch_for_workflow(self._pool, batch_id))["account_id"]
        for number in numbers:
            await opt_outs.add_opt_out(self._pool, account_id, number, source="carrier")

    @activity.defn
    async def record_status(self, update: StatusUpdate) -> None:
        batch_id = uuid.UUID(update.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        await batches.set_status(
            self._pool, batch_id, status=update.status, code=update.code, reason=update.reason
        )
        payload: dict[str, Any] = {
            "batch_id": update.batch_id,
            "workflow_id": update.workflow_id,
            "status": update.status,
            "timestamp": datetime.now(UTC).isoformat(),
        }
        if update.message:
            payload["message"] = update.message
        metadata = (batch["request"].get("global") or {}).get("metadata")
        if metadata:
            payload["metadata"] = metadata
        if update.code:
            payload["code"] = update.code
            payload["reason"] = update.reason
        if update.counts is not None:
            payload.update(
                {f"messages_{name}": getattr(update.counts, name) for name in FINAL_EVENT_FIELDS}
            )
        await events.append_event(
            self._pool,
            batch_id=batch_id,
            account_id=batch["account_id"],
            seq=update.event_seq,
            status=update.status,
            payload=payload,
        )
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
        schedule = self._settings.webhook_retry_schedule_seconds
        for event in await events.pending_events(self._pool, batch_id):
            activity.heartbeat(event["seq"])
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
            )
            number = event["attempts"] + 1
            final = attempt.error is None or attempt.status_code == 410
            delay = (
                None
                if final or number > len(schedule)
                else _jittered(schedule[number - 1], self._settings.webhook_retry_jitter)
            )
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
            if attempt.status_code == 410:
                await batches.disable_webhook(self._pool, batch_id)
                disabled = True
                log.info("status webhook gone: turned off", batch_id=input.batch_id)
            elif delay is not None:
                return DeliverEventsResult(retry_in=delay)
        return DeliverEventsResult()

    @activity.defn
    async def finish_ledger(self, input: FinishInput) -> BatchCounts:
        """Give every row a terminal state, then count them for the final event."""
        batch_id = uuid.UUID(input.batch_id)
        await messages.close_ledger(self._pool, batch_id, pending_as=input.close_pending_as)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        by_status = await messages.count_by_status(self._pool, batch_id)
        return BatchCounts(
            total=batch["rows_total"] or 0,
            successful=by_status.get("sent", 0) + by_status.get("delivered", 0),
            failed=by_status.get("failed", 0) + by_status.get("undelivered", 0),
            skipped=by_status.get("skipped", 0) + (batch["rejected"] or 0),
            cancelled=by_status.get("cancelled", 0),
            uncertain=by_status.get("uncertain", 0),
            expired=by_status.get("expired", 0),
        )

    @activity.defn
    async def reopen_rows(self, input: ReopenInput) -> ReopenResult:
        batch_id = uuid.UUID(input.batch_id)
        reopened = await messages.reopen(self._pool, batch_id, input.statuses)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        return ReopenResult(
            reopened=reopened,
            rows_total=batch["rows_total"] or 0,
            recipients=batch["recipients"] or 0,
        )

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [
            self.validate_recipients,
            self.send_slice,
            self.record_status,
            self.deliver_status_events,
            self.finish_ledger,
            self.reopen_rows,
        ]


async def _until(moment: float, stopping: asyncio.Event) -> bool:
    """Wait until the Unix time `moment`; False when `stopping` is set first."""
    delay = moment - time.time()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
    return not stopping.is_set()


async def _through_outages(write: Callable[[], Awaitable[object]]) -> None:
    """Run `write`, and again while PostgreSQL is unreachable, heartbeating, for up to
    OUTAGE_WAIT_SECONDS. The carrier's answers are worth the wait: an activity that failed
    here would be retried, and its retry would find these rows `sending` and make them
    `uncertain`."""
    deadline = time.monotonic() + OUTAGE_WAIT_SECONDS
    pause = 0.1
    while True:
        try:
            await write()
            return
        except UNAVAILABLE as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database unavailable; outcomes kept until it is back", error=repr(error))
        activity.heartbeat()
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


async def _heartbeat_until_done() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _outcomes(
    claimed: list[messages.ClaimedMessage], results: list[SendResult | None]
) -> list[messages.Outcome]:
    """Ledger outcomes of a slice; a message not sent, or deferred by the carrier, goes back
    to `pending`."""
    return [
        messages.Outcome(seq=m.seq, status="pending")
        if r is None or r.verdict is Verdict.RETRY
        else messages.Outcome(
            seq=m.seq,
            status=r.verdict.value,
            carrier_sid=r.sid,
            error_code=r.error_code,
            error_message=r.error_message,
        )
        for m, r in zip(claimed, results, strict=True)
    ]


def _after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _jittered(delay: float, jitter: float) -> float:
    """`delay` spread by up to `jitter` of itself either way, so that receivers coming back
    from an outage are not hit by every batch's retries at the same instant."""
    return delay * random.uniform(1 - jitter, 1 + jitter)


async def _copy_blocks(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    plain: PlainCsv,
    *,
    with_ledger: bool,
) -> Tally:
    """COPY a plain file's outcomes block by block, the next block validated (in a thread)
    while this one is COPYed; a strict batch writes no ledger once a row is rejected."""
    blocks = plain.blocks()
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, blocks, None))
    try:
        while (block := await upcoming) is not None:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, blocks, None))
            if with_ledger or not plain.tally.rejected:
                parts = block.ledger_csv(batch_id, account_id)
                while part := await asyncio.to_thread(next, parts, b""):
                    await messages.copy_recipients_csv(conn, part)
            await messages.copy_rejected(
                conn, [_rejected_record(batch_id, account_id, row) for row in block.rejected]
            )
            activity.heartbeat(plain.tally.rows)
    finally:
        upcoming.cancel()
    return plain.tally


def _rejected_record(batch_id: uuid.UUID, account_id: uuid.UUID, row: Rejected) -> tuple:
    return (batch_id, row.row_number, account_id, row.code, row.reason, row.value)
