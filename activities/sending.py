"""Sending a batch: one activity sends a slice of the ledger under the sender's pacing."""

import asyncio
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Container
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from temporalio import activity

from activities.backoff import MAX_RETRY_AFTER_SECONDS, carrier_deferred, retry_delay
from activities.channels import Channel, carrier_address
from activities.heartbeats import SliceHeartbeat, heartbeat_until_cancelled
from activities.outages import through_outages
from activities.pacing import SenderPacer
from activities.providers.in_flight import StoppedWaiting
from activities.providers.twilio import THROTTLES, SendResult, Verdict
from activities.resources import WorkerResources
from activities.waiting import set_within
from activities.windows import WindowClock
from metrics import HistogramSeries
from store import batches, carrier_accounts, messages, opt_outs, receipts
from workflows.contracts import SendCounts, SendSliceInput
from workflows.statuses import LedgerStatus

# A row the batch's `expire_at` caught before it was sent.
EXPIRED = SendResult(verdict=Verdict.EXPIRED)
# Carrier errors that refuse every message of the account, not the one row: the slice stops
# at the first, its rows not accepted go back to `pending`, and the batch pauses (with the
# account's other batches) until someone fixes the account and resumes.
ACCOUNT_FAILURES = frozenset({"20003"})
# Deferrals that, when they defer every request of a slice for longer than the retry window
# (`carrier_outage_seconds`), are the account's, not the slice's: the carrier throttling the
# account (THROTTLES), or the carrier out of reach (no connection, no answer, 5xx,
# UNREACHABLE). The slice then stops retrying and the account's batches pause, rather than
# retry on their own.
UNREACHABLE = frozenset({"connect", "no_answer", "500", "502", "503", "504", "20500", "20503"})
# The ledger status of each verdict that settles a row (a deferral puts it back `pending`):
# looked up rather than made from the verdict's value for every row recorded.
SETTLED = MappingProxyType({v: LedgerStatus(v.value) for v in Verdict if v is not Verdict.RETRY})
# What a wave leaves for its lane to write once the next wave goes out (_Waves.on_the_wire).
T = TypeVar("T")
# What a slice's write of its outcomes returns (SendingActivities._record).
W = TypeVar("W")


class SendingActivities(WorkerResources):
    """Sends slices of a batch's ledger."""

    @activity.defn
    async def send_slice(self, input: SendSliceInput) -> SendCounts:
        """Send the slice's pending rows concurrently, marking them `sending` in waves just
        before they go out and recording their outcomes one statement a wave (_Waves).

        When cancelled (pause, cancel), no new request starts; those on the wire finish and
        are recorded, the rest of the slice goes back to `pending`, then the cancellation
        goes on up.
        """
        batch_id = uuid.UUID(input.batch_id)
        attempt_started = time.time()
        # Every statement rides out a PostgreSQL outage (through_outages), the pacers' too:
        # an attempt that failed once it has marked rows `sending` would leave them to its
        # retry as `uncertain`, sent or not.
        # The batch, the carrier account and the slice's rows at once, each on a connection
        # of its own: they are on the way from the slice's start to its first request.
        batch_row = asyncio.ensure_future(
            through_outages(lambda: batches.batch_for_workflow(self._pool, batch_id))
        )

        async def account() -> tuple[uuid.UUID, tuple[str, str] | None]:
            # Sends scheduled before the account was passed down read it from the batch row.
            account_id = (
                uuid.UUID(input.account_id) if input.account_id else (await batch_row)["account_id"]
            )
            credentials = await through_outages(
                lambda: carrier_accounts.carrier_credentials(self._pool, account_id)
            )
            return account_id, credentials

        batch, (account_id, credentials), claimed = await asyncio.gather(
            batch_row,
            account(),
            through_outages(
                lambda: messages.claim_slice(self._pool, batch_id, input.start, input.end)
            ),
        )
        if activity.info().attempt > 1 or len(claimed) < input.end - input.start:
            # The slice ran before (a retry, or a new activity after a pause): the attempt
            # before may have died between writing a wave's sids and applying the receipts
            # kept for them meanwhile. (A first run of all its rows skips the look.)
            await through_outages(
                lambda: messages.apply_slice_kept_receipts(
                    self._pool, batch_id, input.start, input.end
                )
            )
        way = Channel.of(batch["request"])
        # One pacer per sender: a row with its own sender goes at that sender's rate.
        pacers: dict[str, SenderPacer] = {}
        stopping = asyncio.Event()
        results: list[SendResult | None] = [None] * len(claimed)
        # Rows outside their send window: when it opens for each, by index in the slice.
        waiting: dict[int, float] = {}
        window = WindowClock(input.pace.send_window) if input.pace.send_window else None
        queue = iter(enumerate(claimed))
        waves = _Waves(len(claimed), self._settings.send_concurrency, stopping)
        # This attempt's token on the rows it marks: a wave's write run again after an outage
        # (through_outages) knows its own marks from another attempt's (write_outcomes).
        marker = secrets.randbits(63)

        async def record(
            rows: list[int], write: Callable[[list[messages.Outcome]], Awaitable[W]]
        ) -> W:
            # These rows' outcomes (None: back to `pending`), in one statement by `write`.
            return await self._record(
                account_id,
                [claimed[i] for i in rows],
                [results[i] for i in rows],
                [waiting.get(i) for i in rows],
                write,
            )

        async def apply_receipts(sids: list[str]) -> None:
            await through_outages(lambda: messages.apply_kept_receipts(self._pool, batch_id, sids))

        async def wave(index: int) -> list[str]:
            # Mark the next wave `sending` (a worker killed now leaves the rows on the wire
            # `uncertain`, not the slice) in the statement that writes the outcomes that came
            # back since the last wave; the sids of those whose receipts are still to be
            # applied, for the lane to do once the other lanes may go on (_Waves.on_the_wire).
            done = waves.unrecorded(results)
            rows = waves.next_wave(index)
            seqs = [claimed[i].seq for i in rows]
            # Before the statement: PostgreSQL's `marked_at` is its start, however long it waits.
            marking = time.monotonic()
            try:
                written = await record(
                    done,
                    lambda outcomes: messages.write_outcomes(
                        self._pool, batch_id, outcomes, mark=seqs, by=marker
                    ),
                )
            except BaseException:
                # Not written (the database down past through_outages): the slice's last
                # write takes them, or the next attempt finds them `sending`.
                waves.unrecord(done)
                raise
            attempts.update(written.marked)
            waves.marked(rows, {i for i in rows if claimed[i].seq in written.marked}, marking)
            return written.unsettled

        account_failures: list[str] = []
        # carrier_latency's series by verdict, looked up once a slice rather than per message.
        latencies: dict[Verdict, HistogramSeries] = {}
        # A property of the settings that builds its string: built once a slice. Sent with the
        # service's credentials, each message's names its send (receipts.keyed_url: its row
        # and attempt): its receipts are applied by it, whether or not its sid is written yet.
        # Callbacks signed with an account's own token are trusted with no key
        # (services.receipts).
        status_callback = self._settings.status_callback_url
        keyed = receipts.KeyedUrls(status_callback, batch_id) if credentials is None else None
        # The attempt at each row its wave marked, by seq.
        attempts: dict[int, int] = {}
        renew_after = self._settings.reconcile_margin_seconds

        async def send(index: int, message: messages.ClaimedMessage) -> SendResult | None:
            if input.pace.interval and not await _until(
                input.pace.send_time(message.seq), stopping
            ):
                return None
            if window is not None:
                if input.pace.expire_at and time.time() >= input.pace.expire_at:
                    # Expired, not waiting: marked `sending` first, as every row given an
                    # outcome is (only a `sending` row takes one).
                    return EXPIRED if await waves.on_the_wire(index, wave, apply_receipts) else None
                # Checked before the row is marked `sending`: a wait for the window is no
                # attempt (a row its wave marked already has it taken back, write_outcomes).
                opens = window.opens_at(message.to_number, time.time())
                if opens is not None:
                    waiting[index] = opens
                    return None
            sender = message.from_number or input.agent_number
            pacer = pacers.get(sender)
            if pacer is None:
                pacer = pacers[sender] = SenderPacer(self._pool, sender)
            waited = time.monotonic()
            if not await pacer.turn(stopping):
                return None
            self._metrics.pacing_delay.observe(time.monotonic() - waited)
            if window is not None:
                # Again after the sender's pace, which may have waited past the window's end
                # (a slice spans tens of seconds of a slow sender's timeline).
                opens = window.opens_at(message.to_number, time.time())
                if opens is not None:
                    waiting[index] = opens
                    return None
            if not await waves.on_the_wire(index, wave, apply_receipts):
                return None
            if stopping.is_set():
                # Paused or cancelled while its wave was marked: back to `pending`.
                return None

            async def ready() -> bool:
                # Once it has its place among the account's requests in flight and its
                # connection, just before it is written: a row marked long ago renews its mark,
                # and goes only if it still holds it (_Waves.marked_at), the slice has not
                # stopped, the batch has not expired and the recipient's window has not closed
                # meanwhile (else back to `pending`, or waiting for the window).
                if time.monotonic() - waves.marked_at(index) > renew_after and not (
                    await through_outages(
                        lambda: messages.renew_mark(self._pool, batch_id, message.seq, marker)
                    )
                ):
                    return False
                expired = input.pace.expire_at and time.time() >= input.pace.expire_at
                if stopping.is_set() or expired:
                    return False
                if window is not None:
                    opens = window.opens_at(message.to_number, time.time())
                    if opens is not None:
                        waiting[index] = opens
                        return False
                return True

            if input.pace.expire_at and time.time() >= input.pace.expire_at:
                return EXPIRED
            started = time.monotonic()
            own = message.content
            try:
                result = await self._carrier.send(
                    to=carrier_address(message.to_number, way.channel),
                    from_=carrier_address(sender, way.channel),
                    body=way.body(message.body),
                    status_callback=(
                        keyed.of(message.seq, attempts[message.seq]) if keyed else status_callback
                    ),
                    content_sid=(own and own.content_sid) or way.content_sid,
                    content_variables=(own and own.content_variables) or way.content_variables,
                    credentials=credentials,
                    stopping=stopping,
                    ready=ready,
                )
            except StoppedWaiting:
                # Paused or cancelled while it waited for a place in the account's limit of
                # requests in flight, or not to go (`ready`): never sent, so back to
                # `pending` with the rest. (A `ready` that failed, its renewal's statement,
                # fails the lane as any failure before a request leaves.)
                return None
            latency = latencies.get(result.verdict)
            if latency is None:
                latency = latencies[result.verdict] = self._metrics.carrier_latency.labels(
                    result.verdict.value
                )
            latency.observe(time.monotonic() - started)
            if result.error_code in ACCOUNT_FAILURES:
                account_failures.append(result.error_code)
                stopping.set()
                return None
            if _carrier_failing(result):
                # A server error, or no answer, that may have created the message: its row is
                # `uncertain`, and the slice stops, so that a carrier failing so leaves no more
                # than the requests in flight uncertain. It is tried again as a deferred slice
                # is.
                stopping.set()
            return result

        failures: list[Exception] = []

        async def lane() -> None:
            # A fixed set of lanes, not a task per message: the slice's rows in order, with
            # `send_concurrency` requests in flight; a row left when stopping stays None.
            for index, message in queue:
                if stopping.is_set():
                    return
                try:
                    result = results[index] = await send(index, message)
                    if result is not None:
                        waves.answered(index)
                except Exception as error:
                    # Failed before its request left (the carrier's answers, even unreadable
                    # ones, are outcomes): every lane stops, and what went out is recorded
                    # before the activity fails, so no request leaves after it has ended.
                    failures.append(error)
                    stopping.set()
                    return

        lanes = min(self._settings.send_concurrency, len(claimed))
        sends = asyncio.gather(*(lane() for _ in range(lanes)))
        # Until the slice's last write is done too: a slow one (a lock waited for) must not
        # pass for a dead attempt, whose successor would take its rows for lost.
        # With the details the attempt before left: an attempt that dies leaves them, not
        # none, to the next (the stalls, and what the attempts the carrier deferred sent).
        last = SliceHeartbeat.last()
        heartbeats = asyncio.create_task(heartbeat_until_cancelled(last.send))
        try:
            cancelled = await _to_the_end(sends, on_cancel=stopping.set)
            # What went out is recorded even when the cancellation comes while it is
            # written: a record cut short would leave the rows `sending`, to end `uncertain`.
            # The slice's last write, then the receipts that came for its sids meanwhile.
            rest = asyncio.ensure_future(
                record(
                    waves.unrecorded(results, unsent=True, waiting=waiting),
                    lambda outcomes: messages.record_outcomes(
                        self._pool, batch_id, outcomes, by=marker
                    ),
                )
            )
            cancelled = await _to_the_end(rest) or cancelled
        finally:
            heartbeats.cancel()
        self._count([m.from_number or input.agent_number for m in claimed], results)
        if cancelled:
            raise asyncio.CancelledError
        if failures:
            raise failures[0]
        # What the slice sent and failed, with what the attempts before this one did.
        sent = last.sent + sum(r is not None and r.verdict is Verdict.SENT for r in results)
        failed = [r for r in results if r is not None and r.verdict is Verdict.FAILED]
        errors = Counter(last.errors)
        errors.update(r.error_code or "" for r in failed)
        failed_count = last.failed + len(failed)
        # The carrier's deferrals, and its server errors (the rows `uncertain`, above).
        retry = [r for r in results if r is not None and _deferred(r)]
        if retry:
            # An attempt that got anything through resets the backoff; the next attempt reads
            # this heartbeat to know how long the carrier has refused everything, and what
            # the slice has sent and failed so far.
            progressed = len(retry) < sum(r is not None for r in results)
            stalls = 0 if progressed else last.stalls + 1
            since = last.deferred_since if last.stalls and last.deferred_since else attempt_started
            retry_after = max((r.retry_after or 0) for r in retry)
            outage = None if progressed else account_deferral(retry)
            if outage is not None and time.time() - since >= self._settings.carrier_outage_seconds:
                # Deferred whole for the retry window: the account's batches pause instead.
                return SendCounts(
                    sent=sent,
                    failed=failed_count,
                    errors=dict(errors),
                    waiting=len(waiting),
                    next_window=min(waiting.values(), default=0.0),
                    account_failure=outage,
                    deferred_since=since,
                    resume_after=(
                        max(
                            min(retry_after, MAX_RETRY_AFTER_SECONDS),
                            self._settings.carrier_throttle_pause_seconds,
                        )
                        if outage in THROTTLES
                        else 0.0
                    ),
                )
            SliceHeartbeat(
                stalls=stalls,
                deferred_since=0.0 if progressed else since,
                sent=sent,
                failed=failed_count,
                errors=dict(errors),
            ).send()
            raise carrier_deferred(
                f"carrier deferred {len(retry)} of {len(results)} messages ({retry[0].error_code})",
                retry_delay(stalls, retry_after),
            )
        return SendCounts(
            sent=sent,
            failed=failed_count,
            waiting=len(waiting),
            next_window=min(waiting.values(), default=0.0),
            errors=dict(errors),
            account_failure=account_failures[0] if account_failures else None,
        )

    async def _record(
        self,
        account_id: uuid.UUID,
        claimed: list[messages.ClaimedMessage],
        results: list[SendResult | None],
        opens: list[float | None],
        write: Callable[[list[messages.Outcome]], Awaitable[W]],
    ) -> W:
        """Record outcomes of a slice: first the opt-outs the carrier reported (idempotent, so
        a crash before the outcomes loses none), then every outcome in one statement, by
        `write` (messages.record_outcomes, or write_outcomes marking the next wave)."""
        opted_out = [
            m.to_number
            for m, r in zip(claimed, results, strict=True)
            if r is not None and r.opts_out
        ]
        if opted_out:
            await through_outages(lambda: self._record_opt_outs(account_id, opted_out))
        return await through_outages(lambda: write(_outcomes(claimed, results, opens)))

    def _count(self, senders: list[str], results: list[SendResult | None]) -> None:
        """Count the slice's messages, each by its sender, once recorded; one deferred (retry)
        counts on each attempt, one not sent (stopped) not at all."""
        counts = Counter(
            (result.verdict, result.error_code or "", sender)
            for sender, result in zip(senders, results, strict=True)
            if result is not None
        )
        for (verdict, code, sender), count in counts.items():
            self._metrics.messages.labels(verdict.value, code, sender).inc(count)

    async def _record_opt_outs(self, account_id: uuid.UUID, numbers: list[str]) -> None:
        for number in numbers:
            await opt_outs.add_opt_out(self._pool, account_id, number, source="carrier")

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [self.send_slice]


class _Waves:
    """Which rows of a slice are marked `sending`, and which outcomes are written. Rows are
    marked in waves of at most `size` (the lanes), as the first row of a wave is about to go
    on the wire, in the statement that writes the outcomes that came back since the wave
    before; the rest of it is right behind, each lane holding one row."""

    def __init__(self, rows: int, size: int, stopping: asyncio.Event) -> None:
        self._size = max(size, 1)
        # Once set, no lane marks a wave: the slice is paused, cancelled or failing.
        self._stopping = stopping
        self._tried = [False] * rows
        self._marked = [False] * rows
        self._marked_at = [0.0] * rows
        self._recorded = [False] * rows
        # Rows given an outcome since the last wave took them: a wave takes these rather
        # than look through the whole slice.
        self._answered: list[int] = []
        # A lane marks a wave (and waits for the write before it) at a time; the lanes that
        # come meanwhile wait for it to end, each on a future of its own made on this loop:
        # all woken at once when it ends, where an asyncio.Lock would wake them one by one
        # (one turn of the loop each), and ask for the running loop (a `getpid` system call)
        # for each of them.
        self._loop = asyncio.get_running_loop()
        self._marking = False
        self._waiters: list[asyncio.Future[None]] = []
        # The `record` of what the last wave left, once started.
        self._recording: asyncio.Future[None] | None = None

    async def on_the_wire(
        self,
        index: int,
        wave: Callable[[int], Awaitable[list[T]]],
        record: Callable[[list[T]], Awaitable[None]],
    ) -> bool:
        """Whether row `index` is this attempt's to send, running `wave` first if its wave is
        not marked yet (one wave at a time), then `record` on what `wave` left to write (the
        sids of the outcomes it wrote, whose receipts are still to be applied): once the wave
        is marked, so that the other lanes send the new wave meanwhile rather than wait for
        it. A wave is marked only once `record` of the one before is done."""
        if self._tried[index]:
            # Its wave is marked (and `_marked` final): nothing to wait for, as most rows find.
            return self._marked[index]
        while self._marking:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
            if self._tried[index]:
                return self._marked[index]
        if self._stopping.is_set():
            # The wave before failed to be written, or the slice stops: mark no more.
            return False
        recording: asyncio.Future[None] | None = None
        self._marking = True
        try:
            if self._recording is not None:
                await self._recording
                if self._stopping.is_set():
                    # Stopped while the wave before's receipts were applied.
                    return False
            done = await wave(index)
            if done:
                recording = self._recording = asyncio.ensure_future(record(done))
        finally:
            self._marking = False
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if recording is not None:
            await recording
        return self._marked[index]

    def next_wave(self, index: int) -> list[int]:
        return [
            i for i in range(index, min(index + self._size, len(self._tried))) if not self._tried[i]
        ]

    def marked(self, rows: list[int], moved: set[int], at: float) -> None:
        """The wave of `rows` is marked, `moved` of them by this attempt, by a statement
        started `at` (monotonic)."""
        for i in rows:
            self._tried[i] = True
            self._marked[i] = i in moved
            self._marked_at[i] = at

    def marked_at(self, index: int) -> float:
        """When the statement that marked row `index`'s wave started (monotonic).

        A row goes on the wire after the sender's pace, its place among the account's
        requests in flight, a connection and the lanes ahead of it: long after its wave was
        marked, on a slow sender. Meanwhile this attempt may have been taken for dead (cut off from
        Temporal, not from the carrier) and its row made `uncertain`; reconciliation, which
        waits a carrier timeout and its margin after the row last changed for a live
        attempt's request to show, may then have found nothing and reopened it to be sent
        again. So a row whose wave was marked more than the reconcile margin ago renews its
        mark once it has its place in flight and its connection, just before it is written
        (messages.renew_mark), and is not sent if it no longer holds it: every request is
        written within the margin of its row's last change that it saw, and is over within a
        carrier timeout after. (A margin of 0 renews every row: a statement each.)
        """
        return self._marked_at[index]

    def unrecord(self, rows: list[int]) -> None:
        """`unrecorded` took these rows, whose write then failed: not written after all."""
        for i in rows:
            self._recorded[i] = False

    def answered(self, index: int) -> None:
        """Row `index` has its outcome in the slice's results."""
        self._answered.append(index)

    def unrecorded(
        self,
        results: list[SendResult | None],
        unsent: bool = False,
        waiting: Container[int] = (),
    ) -> list[int]:
        """Rows with an outcome not yet written (in slice order), and taken as written from
        now on; with `unsent`, the marked rows that never went out as well (to go back to
        `pending`) and the rows `waiting` for their send window (to take the time it opens)."""
        if unsent:
            rows = [
                i
                for i, result in enumerate(results)
                if not self._recorded[i] and (result is not None or self._marked[i] or i in waiting)
            ]
        else:
            # The rows `answered` since the last wave: none of them is written yet.
            rows = sorted(self._answered)
        self._answered = []
        for i in rows:
            self._recorded[i] = True
        return rows


def _deferred(result: SendResult) -> bool:
    """Whether the carrier put `result`'s message off: deferred it (back to `pending`), or
    failed in a way that may have created it (`_carrier_failing`)."""
    return result.verdict is Verdict.RETRY or _carrier_failing(result)


def _carrier_failing(result: SendResult) -> bool:
    """Whether `result` is a server error, or no answer within the carrier timeout, that may
    have created its message: `uncertain`, and its slice stops (a carrier holding every
    request unanswered made every row of every slice wait it out, `uncertain`)."""
    return result.verdict is Verdict.UNCERTAIN and (
        result.server_error or result.error_code == "no_answer"
    )


def account_deferral(retry: list[SendResult]) -> str | None:
    """The code of a whole slice's deferrals when it is the account's (THROTTLES; UNREACHABLE,
    no answer included, or any server error: the commonest of them), else None (a sender's
    full queue, a mix)."""
    codes = Counter(r.error_code or "" for r in retry)
    if set(codes) <= THROTTLES or all(r.server_error or r.error_code in UNREACHABLE for r in retry):
        return codes.most_common(1)[0][0]
    return None


async def _until(moment: float, stopping: asyncio.Event) -> bool:
    """Wait until the Unix time `moment`; False when `stopping` is set first."""
    return not await set_within(stopping, moment - time.time())


async def _to_the_end(
    work: asyncio.Future[Any], on_cancel: Callable[[], None] | None = None
) -> bool:
    """Await `work` to its end even if this activity is cancelled meanwhile, as often as
    Temporal repeats the cancellation; whether it was. `on_cancel` runs at each one."""
    cancelled = False
    while True:
        try:
            await asyncio.shield(work)
            return cancelled
        except asyncio.CancelledError:
            if work.cancelled():
                raise
            cancelled = True
            if on_cancel is not None:
                on_cancel()


def _outcomes(
    claimed: list[messages.ClaimedMessage],
    results: list[SendResult | None],
    opens: list[float | None],
) -> list[messages.Outcome]:
    """Ledger outcomes of a slice; a message not sent, or deferred by the carrier, goes back
    to `pending`, one outside its send window with the time the window opens; one whose
    request never left (back to `pending`, or `expired`) counts no attempt (`unsent`)."""
    return [
        messages.Outcome(
            seq=m.seq,
            status=LedgerStatus.PENDING,
            window_opens_at=None if o is None else _utc(o),
            unsent=r is None,
        )
        if r is None or r.verdict is Verdict.RETRY
        else messages.Outcome(
            seq=m.seq,
            status=SETTLED[r.verdict],
            carrier_sid=r.sid,
            error_code=r.error_code,
            error_message=r.error_message,
            unsent=r.verdict is Verdict.EXPIRED,
        )
        for m, r, o in zip(claimed, results, opens, strict=True)
    ]


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)
