"""Reconciliation: settle a batch's `uncertain` rows by asking the carrier what it has.

A row is `uncertain` when its request may have reached the carrier but its answer was never
recorded (the worker died, the answer was unreadable). Twilio takes no idempotency key, so
such a row is never sent again blindly; instead, as the batch ends, its sender's messages to
that number are listed (Twilio's Messages list, filtered by `To` and by `From`: the row's
own sender, or the batch's, both addressed on the batch's channel as the send addressed them,
`whatsapp:+E164` on WhatsApp). A message created since the row's last attempt marked it
`sending` (an earlier send of the row, failed by its receipt and retried, is not this one),
with the text the row's send had (any text, for a row sent as a content template: the
carrier renders it), whose sid no ledger row and no conversation message holds, is the
row's (the newest such one): it becomes `sent` with that sid. A row the
carrier shows nothing for never reached it: it goes back to `pending`, and the batch sends
it.
"""

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from twilio.base.exceptions import TwilioException, TwilioRestException

from activities.channels import Channel, carrier_address
from activities.providers.http1 import ConnectFailed, NoAnswer
from activities.providers.twilio import CarrierMessage, TwilioCarrier
from activities.resources import WorkerResources
from store import batches, carrier_accounts, messages
from workflows.contracts import ReconcileInput, ReconcileResult

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 1.0
# A list the carrier did not answer is asked again this many times in all (a busy carrier, a
# short carrier timeout); a row whose list never comes stays `uncertain`.
LIST_ATTEMPTS = 5
# The statuses of a Messages list page refused for good: the account's credentials.
REFUSED_FOR_GOOD = frozenset({401, 403})
# A row's text is matched among this many of the newest messages between the two numbers.
NEWEST_MESSAGES = 50
# A message is the row's only if the carrier created it once the row's last attempt had
# marked it `sending`, but for this much: the carrier gives whole seconds (Twilio's
# date_created), by its own clock.
CLOCK_SLACK = timedelta(seconds=2)
# Rounds of a reconciliation whose rows' numbers another send has on the wire: each waits for
# it (the carrier timeout and the margin) before the last, which settles them whatever.
IN_FLIGHT_ROUNDS = 10


class ReconciliationActivities(WorkerResources):
    @activity.defn
    async def reconcile_uncertain(self, input: ReconcileInput) -> ReconcileResult:
        batch_id = uuid.UUID(input.batch_id)
        rows = await messages.uncertain_rows(self._pool, batch_id)
        sent, unresolved = await self._settle(input, rows) if rows else (0, 0)
        # Read from the ledger, not kept from the settling: an attempt that failed (or whose
        # result was lost) after it had reopened rows left them `pending`, not `uncertain`,
        # and its retry must still have the batch send them; so must rows a failed chunk
        # left. A stopped batch sends none: it closes them `cancelled` or `expired`.
        unsent = [] if input.stopped else await messages.unsent_rows(self._pool, batch_id)
        log.info(
            "uncertain rows reconciled",
            batch_id=input.batch_id,
            sent=sent,
            reopened=len(unsent),
            unresolved=unresolved,
        )
        return ReconcileResult(
            sent=sent,
            reopened=len(unsent),
            unresolved=unresolved,
            first_seq=min(unsent, default=0),
            end_seq=max(unsent, default=-1) + 1,
        )

    async def _settle(
        self, input: ReconcileInput, rows: list[messages.UncertainRow]
    ) -> tuple[int, int]:
        """Settle `rows` with what the carrier has; how many became `sent`, and how many stay
        `uncertain` (their lists never came, or a template's pair is another batch's too)."""
        batch_id, account_id = uuid.UUID(input.batch_id), uuid.UUID(input.account_id)
        # A row's request could still be on the wire this long after the row last changed
        # (an attempt presumed dead that is in fact alive finishes its requests within the
        # carrier timeout): reconciliation waits that long, and a margin, before it concludes.
        quiet = self._settings.carrier_timeout_seconds + self._settings.reconcile_margin_seconds
        await _sleep_heartbeating(max(r.updated_at.timestamp() for r in rows) + quiet)
        credentials = await carrier_accounts.carrier_credentials(self._pool, account_id)
        way = Channel.of((await batches.batch_for_workflow(self._pool, batch_id))["request"])
        lanes = asyncio.Semaphore(self._settings.send_concurrency)

        async def listed(r: messages.UncertainRow) -> list[CarrierMessage] | None:
            # Addressed as the send addressed it (a WhatsApp batch's `whatsapp:+E164`).
            to = carrier_address(r.to_number, way.channel)
            from_ = carrier_address(r.from_number or input.agent_number, way.channel)
            async with lanes:
                found = await carrier_list(self._carrier, to, from_, credentials)
            # Each list a sign of life: thousands of them outlast the heartbeat timeout.
            activity.heartbeat()
            return found

        sent = unresolved = 0
        # A row sent with a content template takes any message of the pair (its text is the
        # carrier's to render): another batch's `uncertain` row to the pair may own the one
        # found (the user would get that template twice and this one never). It stays
        # `uncertain`, neither taken for sent nor sent again.
        templated = [r for r in rows if r.content_sid or way.content_sid]
        if templated:
            pairs = [(r.from_number or input.agent_number, r.to_number) for r in templated]
            shared = await messages.uncertain_elsewhere(self._pool, account_id, batch_id, pairs)
            left = {r.seq for r, pair in zip(templated, pairs, strict=True) if pair in shared}
            unresolved += len(left)
            rows = [r for r in rows if r.seq not in left]
        for round_ in range(IN_FLIGHT_ROUNDS):
            # Another send to a row's number still on the wire has its message at the carrier
            # and no sid in the ledger yet: taken for the row's, it would be the row's and
            # that send's both. Such rows wait for it (all but the last round).
            pairs = [(r.from_number or input.agent_number, r.to_number) for r in rows]
            busy = (
                await messages.numbers_in_flight(self._pool, account_id, batch_id, pairs, quiet)
                if round_ < IN_FLIGHT_ROUNDS - 1
                else set()
            )
            now = [r for r in rows if r.to_number not in busy]
            lists = await asyncio.gather(*(listed(r) for r in now))
            candidates = {
                r.seq: (
                    r.to_number,
                    [
                        m.sid
                        # Oldest first: the row's own message came first after its mark;
                        # later ones are other sends' (another batch's to the same number).
                        for m in reversed(found)
                        if m.created >= (r.marked_at or r.created_at) - CLOCK_SLACK
                        and _same_text(m, r, way)
                    ],
                )
                for r, found in zip(now, lists, strict=True)
                if found is not None
            }
            settled = await messages.settle_uncertain(self._pool, account_id, batch_id, candidates)
            sent += len(settled)
            unresolved += len(now) - len(candidates)
            rows = [r for r in rows if r.to_number in busy]
            if not rows:
                break
            log.info("uncertain rows wait for sends on the wire", rows=len(rows))
            await _sleep_heartbeating(time.time() + quiet)
        return sent, unresolved

    @activity.defn
    async def has_uncertain(self, input: ReconcileInput) -> bool:
        """Whether the batch has rows to reconcile or still to send as it ends
        (`messages.rows_to_settle`): a short step, which the batch runs as a local activity
        so that a batch without any skips `reconcile_uncertain`."""
        return await messages.rows_to_settle(
            self._pool, uuid.UUID(input.batch_id), stopped=input.stopped
        )

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [self.reconcile_uncertain, self.has_uncertain]


async def carrier_list(
    carrier: TwilioCarrier, to: str, from_: str, credentials: tuple[str, str] | None
) -> list[CarrierMessage] | None:
    """The newest messages the carrier has from `from_` to `to`, asked up to LIST_ATTEMPTS
    times; None when it never answers."""
    for attempt in range(LIST_ATTEMPTS):
        try:
            return await carrier.sent_messages(
                to=to, from_=from_, credentials=credentials, limit=NEWEST_MESSAGES
            )
        except (TwilioRestException, ConnectFailed, NoAnswer) as error:
            # The sender, not the recipient: a user's number is kept out of the logs.
            log.warning("carrier list failed", sender=from_, error=repr(error))
            activity.heartbeat()
            await asyncio.sleep(0.2 * 2**attempt)
        except TwilioException as error:
            # A page the carrier answered other than 200 raises the base class. Refused for
            # good (credentials revoked: 401, 403): no list, and the rows stay `uncertain`;
            # retried, such an activity failed on every attempt, holding its batch or
            # conversation. Else (429, 5xx) the activity fails and is tried again later.
            if _page_status(error) in REFUSED_FOR_GOOD:
                log.warning("carrier list refused", sender=from_, error=repr(error))
                return None
            raise
    return None


def _page_status(error: TwilioException) -> int | None:
    """The HTTP status of the answer twilio's `Page.process_response` refused."""
    answer = error.args[1] if len(error.args) > 1 else None
    status = getattr(answer, "status_code", None)
    return status if isinstance(status, int) else None


def _same_text(found: CarrierMessage, row: messages.UncertainRow, way: Channel) -> bool:
    """Whether the carrier's message has the text the row's send had. A content template's
    text is the carrier's to render (the ledger keeps a placeholder, and no Body is sent),
    so a row sent as one matches by its numbers and time alone, as one sent with no text."""
    if row.content_sid or way.content_sid:
        return True
    sent = way.body(row.body)
    return not sent or found.body == sent


async def _sleep_heartbeating(until: float) -> None:
    while (left := until - time.time()) > 0:
        activity.heartbeat()
        await asyncio.sleep(min(left, HEARTBEAT_SECONDS))
