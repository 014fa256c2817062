"""Delivery receipts: the carrier's status callbacks, queued at once and applied in batches.

At full send rate the carrier posts two or three callbacks per message. A callback is
answered as soon as its receipt is taken: the receipts of concurrent callbacks are taken in
one statement (`ReceiptIntake`, store.receipts.take_receipts), which applies those whose
message holds its sid and appends the others to `receipt_queue`. `apply_receipts` moves the
queued ones to the ledger in batches, in every API process (the processes share the queue).
"""

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg
import structlog

from activities.providers.sids import MESSAGE_SID
from activities.waiting import set_within
from api.carrier_signature import CarrierForm
from api.errors import HeraldError, InvalidRequest
from store import receipts
from store.db import UNAVAILABLE
from store.receipts import FINAL_RECEIPTS, MessageKey, Receipt

log = structlog.get_logger(__name__)

# Receipts applied per transaction: one statement per table, whatever the number.
APPLY_BATCH = 1000
# How long the applier sleeps when nothing arrives in this process: the queue may hold
# receipts another process took in (or one that stopped before applying them).
IDLE_SECONDS = 1.0
# After a database failure.
RETRY_SECONDS = 1.0
# After a batch that emptied the queue, the applier lets this long pass before the next one:
# at full rate receipts then go to the ledger a few hundred per transaction, not a handful.
APPLY_PAUSE_SECONDS = 0.2
# How long resetting the intake's connection may take before it is ended instead.
RESET_SECONDS = 5.0
# What a failed intake statement raises. The carrier is answered 503, never 2xx: one that
# retries a failed callback posts it again (docs/DELIVERY.md: Twilio documents no such retry).
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class ReceiptNotQueued(HeraldError):
    status_code = 503
    code = "RECEIPT_NOT_QUEUED"


class SignerNotOwner(HeraldError):
    status_code = 403
    code = "SIGNER_NOT_OWNER"


class ReceiptIntake:
    """Takes receipts, those of concurrent requests in one statement, and wakes the applier."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        # Held between statements: a connection released to the pool is reset with a
        # statement of its own, which cost the API as much as the intake's at full rate.
        self._connection: asyncpg.pool.PoolConnectionProxy | None = None
        # The receipts for the next statement, and the future they share (done when it is).
        self._waiting: list[Receipt] = []
        self._done: asyncio.Future[None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self.arrived = asyncio.Event()

    async def put(self, receipt: Receipt) -> None:
        """Return once `receipt` is taken (at once for a non-final one: it moves nothing)."""
        if receipt.status in FINAL_RECEIPTS:
            # Shielded: a cancelled request must not cancel the others' shared future.
            await asyncio.shield(self.submit(receipt))

    def submit(self, receipt: Receipt) -> asyncio.Future[None]:
        """A future done once the final `receipt` is taken (its exception if it could not
        be): for callers that answer from a callback rather than a task of their own. The
        receipts taken in one statement share it: do not cancel it."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        self._waiting.append(receipt)
        if self._writing is None:
            self._writing = asyncio.create_task(self._write())
        return self._done

    async def _write(self) -> None:
        # While one statement is under way the next requests gather for the following one.
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                done, self._done = self._done, None
                assert done is not None
                try:
                    await self._take(batch)
                except Exception as error:  # each waiting request answers it
                    if not done.done():
                        done.set_exception(error)
                    await self._release()
                    continue
                if not done.done():
                    done.set_result(None)
                self.arrived.set()
        finally:
            self._writing = None

    async def _take(self, batch: list[Receipt]) -> None:
        """Take `batch` on the held connection. One PostgreSQL ended while it was held (a
        restart, an idle timeout, `pg_terminate_backend`) shows before the statement or in
        it, as asyncpg happens to learn of it: the batch is then taken once more on a new
        connection, not answered 503. Whether or not the lost statement committed, taking
        the batch again is safe: a receipt taken twice changes nothing."""
        for last in (False, True):
            connection = await self._held()
            try:
                await receipts.take_receipts(connection, batch)
                return
            except Exception as error:
                if last or not (isinstance(error, UNAVAILABLE) or _lost(connection)):
                    raise
                await self._release()

    async def _held(self) -> asyncpg.pool.PoolConnectionProxy:
        """The connection the intake holds, a new one from the pool if it holds none that
        is open, set to keep one plan of its statement (receipts.INTAKE_PLANS)."""
        if self._connection is None or _lost(self._connection):
            await self._release()
            self._connection = await self._pool.acquire()
            await self._connection.execute(receipts.INTAKE_PLANS)
        return self._connection

    async def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # The pool keeps sessions as they are (store.db): give none back with the intake's plans.
        # One that cannot be reset (lost, closed, busy or stuck) is ended: the pool replaces it.
        try:
            await connection.execute(receipts.INTAKE_PLANS_RESET, timeout=RESET_SECONDS)
        except Exception:
            with contextlib.suppress(asyncpg.InterfaceError):
                connection.terminate()
        finally:
            await self._pool.release(connection)

    async def close(self) -> None:
        """Finish the statement under way and give the connection back (before the pool closes)."""
        if self._writing is not None:
            await asyncio.wait([self._writing])
        await self._release()


def _lost(connection: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether `connection` takes no more statements. Once asyncpg has seen a connection
    lost, it detaches it from the pool's proxy, whose `is_closed()` then raises."""
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True


async def apply_receipts(pool: asyncpg.Pool, arrived: asyncio.Event) -> None:
    """Apply queued receipts until cancelled: at once while the queue is full, else when
    `arrived` is set or after IDLE_SECONDS."""
    while True:
        arrived.clear()
        try:
            taken = len(await receipts.apply_queued(pool, APPLY_BATCH))
        except asyncpg.DeadlockDetectedError:
            # Two appliers met on the same rows; the loser's receipts are back in the queue.
            continue
        except DATABASE_ERRORS as error:
            log.warning("receipts not applied; retrying", error=repr(error))
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if taken < APPLY_BATCH:
            await asyncio.sleep(APPLY_PAUSE_SECONDS)
            await set_within(arrived, IDLE_SECONDS)


async def take_receipt(
    pool: asyncpg.Pool, intake: ReceiptIntake, form: CarrierForm, query: str
) -> None:
    """Take the receipt of a status callback's signed `form`, posted with `query`: it is
    applied to its message, now or when its send is recorded. Return only once it is taken."""
    with stored_or_retried():
        await intake.put(await signed_receipt(pool, form, query))


@contextlib.contextmanager
def stored_or_retried() -> Iterator[None]:
    """A callback's database failure (reading the signing tokens of a subaccount's signature,
    storing its receipt) answered 503 RECEIPT_NOT_QUEUED, never a 2xx or a 500: nothing is
    taken for a receipt that was not stored."""
    try:
        yield
    except DATABASE_ERRORS as error:
        raise not_queued(error) from error


async def signed_receipt(pool: asyncpg.Pool, form: CarrierForm, query: str) -> Receipt:
    """The receipt of a status callback's signed `form`, posted with `query`.

    A final one signed with an account's own token is refused (403 `SIGNER_NOT_OWNER`) for
    a message another account holds: an account sets its own AccountSid and token, so it can
    sign a receipt for any sid, and a forged `failed` would hide another's delivery (and a
    retry send it again). A sid no message holds yet is taken: until its send is written,
    only the carrier (and whoever sent it) knows it.
    """
    receipt = receipt_of(form.params, trusted_key(form, query))
    if (
        form.signers is not None
        and is_final(receipt)
        and await receipts.held_by_others(pool, receipt.carrier_sid, form.signers)
    ):
        raise SignerNotOwner("The message of this MessageSid is not the signing account's")
    return receipt


def trusted_key(form: CarrierForm, query: str) -> MessageKey | None:
    """The ledger key in the query of a callback's URL (receipts.keyed_url), if it was signed
    with the service's token: Herald puts keys only in the URLs of what it sends with its
    own credentials, and one signed with an account's own token must not reach another's rows."""
    return receipts.message_key(query) if query and form.signers is None else None


def receipt_of(form: dict[str, str], key: MessageKey | None = None) -> Receipt:
    """The receipt a status callback's (signed) `form` carries, of the send `key`."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    status = form.get("MessageStatus") or form.get("SmsStatus")
    if not sid or not status:
        raise InvalidRequest("MessageSid and MessageStatus are required")
    # Of no other form is it a message's: and a receipt's statement is shared by the receipts
    # that come with it, which a sid too long for the queue's index would fail as well.
    if not MESSAGE_SID.fullmatch(sid):
        raise InvalidRequest(f"MessageSid {sid[:40]!r} is not a message SID")
    return Receipt(sid, status, form.get("ErrorCode") or None, key)


def is_final(receipt: Receipt) -> bool:
    """Whether `receipt` is queued: a non-final one moves nothing and is answered at once."""
    return receipt.status in FINAL_RECEIPTS


def not_queued(error: BaseException) -> ReceiptNotQueued:
    """The answer to a callback whose receipt's statement failed with `error`: 503, never a 2xx
    (the receipt was not stored)."""
    log.warning("receipt not queued", error=repr(error))
    return ReceiptNotQueued("The receipt could not be stored; post it again (the carrier retries)")
