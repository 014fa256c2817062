"""A conversation message rides out a PostgreSQL outage (a restart refusing connections for a
while) inside its send activity: the message is sent once and its outcome, sid included, is
recorded, whether the outage comes before the send or just after the carrier accepted it.
Before, the activity failed on the first refused statement: each outage spent one of the
attempts meant for the carrier's deferrals, and the message was left `queued` or `sending`.
And a message whose attempt was lost (its worker died after claiming it) is settled from the
carrier's list by the next attempt, or by the lost attempt's own answer if it lives on."""

import asyncio
import dataclasses
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.conversations import ConversationActivities
from activities.providers.twilio import SendResult, TwilioCarrier
from metrics import WorkerMetrics
from settings import Settings
from store import conversation_messages, messages, numbers
from tests.support.batches import recorded_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.sending import eventually, queued_agent_message, twilio_carrier
from tests.support.stack import Account
from workflows.contracts import SendMessageInput
from workflows.retries import MESSAGE_ATTEMPTS

# Statements refused in a row: the outage.
REFUSED = 3


class DownPool:
    """The worker's pool, as a PostgreSQL that is restarting: while `refusals` lasts, each
    statement (or connection taken) is refused, as asyncpg refuses it when nothing listens."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.refusals = 0

    def _refuse(self) -> None:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionRefusedError(111, "Connect call failed")

    def __getattr__(self, name: str) -> Any:
        if name in ("execute", "fetch", "fetchrow", "fetchval", "acquire"):
            self._refuse()
        return getattr(self._pool, name)


class DownAfterSend:
    """The carrier, after whose answer PostgreSQL goes down."""

    def __init__(self, carrier: TwilioCarrier, pool: DownPool) -> None:
        self._carrier = carrier
        self._pool = pool

    async def send(self, **request: Any) -> SendResult:
        result = await self._carrier.send(**request)
        self._pool.refusals = REFUSED
        return result


@pytest.fixture
async def carrier(settings: Settings) -> AsyncIterator[TwilioCarrier]:
    carrier = twilio_carrier(settings)
    yield carrier
    await carrier.close()


@pytest.mark.parametrize("when", ["before the send", "after the carrier accepted"])
async def test_a_message_rides_out_an_outage_and_keeps_its_outcome(
    settings: Settings,
    pool: asyncpg.Pool,
    account: Account,
    carrier: TwilioCarrier,
    emulator_url: str,
    when: str,
) -> None:
    user = unique_numbers(1)[0]
    body = f"outage {secrets.token_hex(6)}"
    message_id = await queued_agent_message(pool, account, user, body)
    down = DownPool(pool)
    if when == "before the send":
        down.refusals = REFUSED
        used: Any = carrier
    else:
        used = DownAfterSend(carrier, down)
    async with httpx.AsyncClient() as http:
        sender = ConversationActivities(
            pool=cast(asyncpg.Pool, down),
            carrier=cast(TwilioCarrier, used),
            http=http,
            settings=settings,
            metrics=WorkerMetrics(),
        )
        result = await ActivityEnvironment().run(
            sender.send_conversation_message,
            SendMessageInput(message_id=str(message_id), attempts=MESSAGE_ATTEMPTS),
        )

    assert down.refusals == 0
    [received] = await emulator_messages(emulator_url, body_contains=body)
    assert result.status == "sent"
    message = await conversation_messages.message_for_workflow(pool, message_id)
    assert (message["status"], message["attempts"]) in {("sent", 1), ("delivered", 1)}
    assert message["carrier_sid"] == received["sid"]


async def test_a_claim_run_again_after_its_answer_was_lost_takes_its_own_message(
    pool: asyncpg.Pool, account: Account
) -> None:
    """The claim committed, then its connection closed before the answer came: run again, it
    takes the message it left `sending`, its attempt counted once. A retry's claim does not
    take one an earlier attempt left `sending`: that is settled `uncertain` first."""
    user = unique_numbers(1)[0]
    message_id = await queued_agent_message(pool, account, user, "claimed twice")

    first = await conversation_messages.claim_message(pool, message_id)
    plain = await conversation_messages.claim_message(pool, message_id)
    again = await conversation_messages.claim_message(pool, message_id, again=True)
    taken = await conversation_messages.message_for_workflow(pool, message_id)
    await conversation_messages.settle_lost_claim(pool, message_id)
    retried = await conversation_messages.claim_message(pool, message_id, again=True)

    # The same message, claimed again now (its request goes from this claim).
    assert first is not None and again is not None
    assert dataclasses.replace(again, claimed_at=None) == dataclasses.replace(
        first, claimed_at=None
    )
    assert plain is None
    assert (taken["status"], taken["attempts"]) == ("sending", 1)
    assert retried is None
    assert (await conversation_messages.message_status(pool, message_id))[:2] == (
        "uncertain",
        conversation_messages.CLAIM_LOST,
    )


@pytest.mark.parametrize(
    ("carrier_got_it", "looked_up_before", "given_up"),
    [
        (True, False, False),
        (False, False, False),
        # The retry that settled it died before its lookup ended: the next one looks.
        (True, True, False),
        # The sender is another account's since: its messages are in the same list.
        (True, False, True),
    ],
)
async def test_a_retry_after_a_lost_claim_finds_the_message_in_the_carriers_list(
    settings: Settings,
    pool: asyncpg.Pool,
    account: Account,
    other_account: Account,
    carrier: TwilioCarrier,
    emulator_url: str,
    carrier_got_it: bool,
    looked_up_before: bool,
    given_up: bool,
) -> None:
    """The first attempt claimed the message, then its worker died, after the carrier took
    it or before: a later attempt records it `sent` with the carrier's sid (its receipts can
    then find it), or leaves it `uncertain` (that attempt may live on), sending nothing; so
    too when the account no longer holds the sender."""
    user = unique_numbers(1)[0]
    body = f"lost claim {secrets.token_hex(6)}"
    message_id = await queued_agent_message(pool, account, user, body)
    assert await conversation_messages.claim_message(pool, message_id) is not None
    if carrier_got_it:
        await carrier.send(to=user, from_=account.agent_number, body=body, status_callback=None)
    if looked_up_before:
        assert await conversation_messages.settle_lost_claim(pool, message_id) is not None
    if given_up:
        await pool.execute("DELETE FROM sender_numbers WHERE number = $1", account.agent_number)
        await numbers.add_number(pool, other_account.account_id, account.agent_number, "sms", None)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=3 if looked_up_before else 2)
    async with httpx.AsyncClient() as http:
        sender = ConversationActivities(
            pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
        )
        result = await env.run(
            sender.send_conversation_message,
            SendMessageInput(message_id=str(message_id), attempts=MESSAGE_ATTEMPTS),
        )

    received = await emulator_messages(emulator_url, body_contains=body)
    message = await conversation_messages.message_for_workflow(pool, message_id)
    assert len(received) == int(carrier_got_it)
    if carrier_got_it and not given_up:
        assert (result.status, message["carrier_sid"]) == ("sent", received[0]["sid"])
    else:
        assert (result.status, result.error_code) == ("uncertain", "claim_lost")
        assert message["carrier_sid"] is None


async def test_an_attempt_presumed_lost_that_lives_on_records_the_carriers_answer(
    pool: asyncpg.Pool, account: Account
) -> None:
    """Its claim settled `uncertain` by the next attempt, the first attempt's answer comes:
    the message takes it, sid and all, rather than stay `uncertain` with its receipts lost."""
    user = unique_numbers(1)[0]
    message_id = await queued_agent_message(pool, account, user, "lives on")
    assert await conversation_messages.claim_message(pool, message_id) is not None
    assert await conversation_messages.settle_lost_claim(pool, message_id) is not None
    sid = f"SM{secrets.token_hex(16)}"

    await conversation_messages.record_outcome(pool, message_id, status="sent", carrier_sid=sid)

    message = await conversation_messages.message_for_workflow(pool, message_id)
    assert (message["status"], message["carrier_sid"]) == ("sent", sid)


@pytest.mark.parametrize(
    "left", ["queued", "claimed, then sent", "claimed, never sent", "a timer's, never written"]
)
async def test_what_a_messages_last_attempt_left_is_settled(
    settings: Settings,
    pool: asyncpg.Pool,
    account: Account,
    carrier: TwilioCarrier,
    emulator_url: str,
    left: str,
) -> None:
    """Every attempt of a send failed (not with the carrier's answer): a message still
    `queued` is `failed`, never sent, as is a silence timer's whose row no attempt wrote;
    one its last attempt claimed is looked up at the carrier (`sent` with its sid, or
    `uncertain`). Nothing is sent."""
    user = unique_numbers(1)[0]
    body = f"last attempt {secrets.token_hex(6)}"
    message_id = await queued_agent_message(pool, account, user, body)
    settling = SendMessageInput(message_id=str(message_id), attempts=MESSAGE_ATTEMPTS)
    if left == "a timer's, never written":
        written = await conversation_messages.message_for_workflow(pool, message_id)
        message_id = uuid.uuid4()
        settling = SendMessageInput(
            message_id=str(message_id),
            attempts=MESSAGE_ATTEMPTS,
            conversation_id=str(written["conversation_id"]),
            kind="warning",
            body=body,
        )
    elif left != "queued":
        assert await conversation_messages.claim_message(pool, message_id) is not None
    if left == "claimed, then sent":
        await carrier.send(to=user, from_=account.agent_number, body=body, status_callback=None)
    async with httpx.AsyncClient() as http:
        sender = ConversationActivities(
            pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
        )
        result = await ActivityEnvironment().run(sender.settle_unsent_message, settling)

    received = await emulator_messages(emulator_url, body_contains=body)
    message = await conversation_messages.message_for_workflow(pool, message_id)
    settled = (message["status"], message["error_code"], message["carrier_sid"])
    expected = {
        "queued": ("failed", conversation_messages.SEND_FAILED, None),
        "claimed, then sent": ("sent", None, received[0]["sid"] if received else None),
        "claimed, never sent": ("uncertain", conversation_messages.CLAIM_LOST, None),
        "a timer's, never written": ("failed", conversation_messages.SEND_FAILED, None),
    }[left]
    assert len(received) == int(left == "claimed, then sent")
    assert settled == expected
    assert (result.status, result.error_code) == expected[:2]


async def test_a_lost_claim_and_a_batchs_row_reconciled_at_once_never_take_one_message(
    settings: Settings, pool: asyncpg.Pool, account: Account, carrier: TwilioCarrier
) -> None:
    """A conversation message whose claim was lost and a batch's uncertain row, to one user
    with one text, looked up in the carrier's list at once, one message there: the batch's
    reconciliation had written the sid and not yet committed when the conversation's read the
    sids held, and both took it (a message never sent counted `sent`). The conversation's now
    waits for the number's reconciliation lock, as a batch's does."""
    user = unique_numbers(1)[0]
    body = f"one of two {secrets.token_hex(6)}"
    message_id = await queued_agent_message(pool, account, user, body)
    assert await conversation_messages.claim_message(pool, message_id) is not None
    only = await carrier.send(to=user, from_=account.agent_number, body=body, status_callback=None)
    batch_id = await recorded_batch(pool, account)
    # Two rows to the user: the first takes the message, the second (no message left) goes
    # back to `pending`, a statement this test holds up with a lock on its row.
    await pool.execute(
        "INSERT INTO messages (batch_id, seq, account_id, row_number, to_number, body, status,"
        " attempts, updated_at) SELECT $1, i, $2, i + 1, $3, $4, 'uncertain', 1, now()"
        " FROM generate_series(0, 1) AS i",
        batch_id,
        account.account_id,
        user,
        body,
    )
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2)
    async with pool.acquire() as holder, holder.transaction(), httpx.AsyncClient() as http:
        await holder.execute(
            "SELECT 1 FROM messages WHERE batch_id = $1 AND seq = 1 FOR UPDATE", batch_id
        )
        candidates = {seq: (user, [only.sid or ""]) for seq in (0, 1)}
        batch = asyncio.create_task(
            messages.settle_uncertain(pool, account.account_id, batch_id, candidates)
        )
        # Until the batch's transaction waits for that row: its sid written, not committed.
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                holder.get_server_pid(),
            ),
            lambda waiting: waiting == 1,
        )
        sender = ConversationActivities(
            pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
        )
        conversation = asyncio.create_task(
            env.run(
                sender.send_conversation_message,
                SendMessageInput(message_id=str(message_id), attempts=MESSAGE_ATTEMPTS),
            )
        )
        # Until the conversation's lookup has ended, or waits behind the batch's transaction
        # (a backend blocked by the one this test blocks).
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity AS a WHERE EXISTS (SELECT 1"
                " FROM pg_stat_activity AS b WHERE $1 = ANY(pg_blocking_pids(b.pid))"
                " AND b.pid = ANY(pg_blocking_pids(a.pid)))",
                holder.get_server_pid(),
            ),
            lambda behind: conversation.done() or behind == 1,
        )
    found = await batch
    result = await conversation

    holders = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE carrier_sid = $1", only.sid
    ) + await pool.fetchval(
        "SELECT count(*) FROM conversation_messages WHERE carrier_sid = $1", only.sid
    )
    assert found == {0: only.sid}
    assert holders == 1
    assert (result.status, result.error_code) == ("uncertain", "claim_lost")


async def test_a_settlement_run_again_after_it_committed_gives_the_sid_it_wrote(
    pool: asyncpg.Pool, account: Account
) -> None:
    """`through_outages` runs the whole settlement again when an outage cuts it short after
    its commit (applying the receipts, say): the second run finds the message holding the
    sid, as it wrote it, not taken by another; before, it answered None (the carrier has no
    such message) for a message recorded `sent`."""
    user = unique_numbers(1)[0]
    message_id = await queued_agent_message(pool, account, user, "settled twice")
    assert await conversation_messages.claim_message(pool, message_id) is not None
    sid = f"SM{secrets.token_hex(16)}"

    first = await messages.settle_conversation_message(
        pool, account.account_id, user, message_id, [sid]
    )
    again = await messages.settle_conversation_message(
        pool, account.account_id, user, message_id, [sid]
    )

    assert first == again == sid
    message = await conversation_messages.message_for_workflow(pool, message_id)
    assert (message["status"], message["carrier_sid"]) == ("sent", sid)
