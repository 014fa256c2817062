"""`POST /v1/sms/send` on the real stack: idempotency keys, WhatsApp and content templates,
conversations, and every error code of single sends."""

import asyncio
import json
import secrets
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from api.conversation_models import SendRequest
from api.services import send as send_service
from api.services.send import request_hash
from api.services.stranded_messages import hand_over_stranded
from settings import Settings
from store import accounts, conversation_messages, conversations, idempotency, numbers, opt_outs
from store.accounts import create_account, create_api_key
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.databases import blocked_behind
from tests.support.delivery import own_worker
from tests.support.pages import every_page
from tests.support.sending import (
    OPTED_OUT_AT_CARRIER,
    SignalAnswerLost,
    conversation,
    conversation_when,
    eventually,
    received_by,
    send,
    send_ok,
)
from tests.support.stack import Account, Configure, WebhookReceiver, api_client, error_code

SENT = "SMS sent successfully"


# A message failed unsent (its signal failed), then its repeat's, sent.
FAILED_THEN_SENT = [("failed", "TEMPORAL_UNAVAILABLE"), ("sent", None)]


async def outcomes_once_sent(
    api: httpx.AsyncClient, account: Account, conversation_id: str
) -> list[tuple[str, str | None]]:
    """The conversation's messages' statuses and error codes, once its last is sent."""
    detail = await conversation_when(
        api, account, conversation_id, lambda c: c["messages"][-1]["status"] == "sent"
    )
    return [(m["status"], m["error_code"]) for m in detail["messages"]]


def all_sent(detail: dict) -> bool:
    return all(m["status"] == "sent" for m in detail["messages"])


async def test_a_send_reaches_the_carrier_and_its_conversation(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]

    response = await send(
        api,
        account,
        user,
        agent_message="Your table is ready",
        metadata={"booking": 7},
        request_data={"name": "Ada"},
        persona_id="persona-1",
        pathway_version=3,
        disposition_ids=["d1"],
    )

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    digits = account.agent_number.removeprefix("+")
    assert data["message"] == SENT
    assert data["workflow_id"] == f"sms-conversation-{account.account_id}-{digits}-{user[1:]}"
    [received] = await received_by(emulator_url, user, 1)
    assert (received["from"], received["body"]) == (account.agent_number, "Your table is ready")
    detail = await conversation_when(api, account, data["conversation_id"], all_sent)
    assert detail["state"] == "active"
    assert (detail["metadata"], detail["request_data"]) == ({"booking": 7}, {"name": "Ada"})
    assert (detail["persona_id"], detail["pathway_version"]) == ("persona-1", 3)
    assert detail["disposition_ids"] == ["d1"]
    [message] = detail["messages"]
    assert message["message_id"] == data["message_id"]
    assert (message["sender"], message["body"]) == ("AGENT", "Your table is ready")
    assert message["carrier_sid"] == received["sid"]


async def test_the_same_key_twice_sends_once_and_returns_the_first_reply(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)

    first = await send(api, account, user, key=key, agent_message="once")
    second = await send(api, account, user, key=key, agent_message="once")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    detail = await conversation_when(
        api, account, first.json()["data"]["conversation_id"], all_sent
    )
    assert len(detail["messages"]) == 1
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_concurrent_requests_with_one_key_send_one_message(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)

    responses = await asyncio.gather(
        *(send(api, account, user, key=key, agent_message="only one") for _ in range(8))
    )

    assert [r.status_code for r in responses] == [200] * 8
    assert len({json.dumps(r.json()) for r in responses}) == 1
    conversation_id = responses[0].json()["data"]["conversation_id"]
    detail = await conversation_when(api, account, conversation_id, all_sent)
    assert len(detail["messages"]) == 1
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_a_key_reused_with_another_body_is_refused(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    first = await send(api, account, user, key=key, agent_message="first")

    changed = await send(api, account, user, key=key, agent_message="second")

    assert first.status_code == 200
    assert changed.status_code == 409
    assert error_code(changed) == "IDEMPOTENCY_KEY_REUSED"
    await received_by(emulator_url, user, 1)
    assert [m["body"] for m in await emulator_messages(emulator_url, to=user)] == ["first"]


async def test_keys_belong_to_one_account(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    other_id = await create_account(pool, "other")
    other = Account(other_id, (await create_api_key(pool, other_id)).key, unique_numbers(1)[0])
    await numbers.add_number(pool, other_id, other.agent_number, "sms", None)
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)

    mine = await send(api, account, user, key=key, agent_message="same key")
    theirs = await send(api, other, user, key=key, agent_message="same key")

    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["data"]["message_id"] != theirs.json()["data"]["message_id"]
    assert len(await received_by(emulator_url, user, 2)) == 2


async def test_a_repeated_request_waits_for_the_first_ones_reply(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    body = {"user_number": user, "agent_number": account.agent_number, "agent_message": "wait"}
    # Another request holds the key, and is still sending.
    assert await idempotency.claim(
        pool, account.account_id, key, request_hash(SendRequest(**body)), ttl=timedelta(hours=1)
    )
    first_reply = {
        "message": SENT,
        "conversation_id": str(uuid.uuid4()),
        "message_id": str(uuid.uuid4()),
        "workflow_id": "sms-conversation-first",
    }

    async def finish_first() -> None:
        await asyncio.sleep(0.5)
        await idempotency.complete(pool, account.account_id, key, first_reply)

    response, _ = await asyncio.gather(
        send(api, account, user, key=key, agent_message="wait"), finish_first()
    )

    assert response.status_code == 200
    assert response.json()["data"] == first_reply
    assert await emulator_messages(emulator_url, to=user) == []


async def test_a_key_whose_first_request_recorded_nothing_is_taken_over_by_a_repeat(
    settings: Settings, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    """The first request claimed the key and stopped before its message was recorded (its
    process died): a repeat past the wait sends the message, and later repeats get its reply.
    Before, every repeat was refused until the key expired, with nothing sent."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    body = {"user_number": user, "agent_number": account.agent_number, "agent_message": "stuck"}
    assert await idempotency.claim(
        pool, account.account_id, key, request_hash(SendRequest(**body)), ttl=timedelta(hours=1)
    )

    async with api_client(settings.model_copy(update={"idempotency_wait_seconds": 0.5})) as api:
        repeated = await send(api, account, user, key=key, agent_message="stuck")
        again = await send(api, account, user, key=key, agent_message="stuck")

    assert repeated.status_code == 200, repeated.text
    assert again.json() == repeated.json()
    assert len(await received_by(emulator_url, user, 1)) == 1


async def test_a_first_request_stuck_past_the_wait_answers_with_the_repeats_reply(
    settings: Settings, account: Account, emulator_url: str
) -> None:
    """The first request stalls after claiming its key, past the wait: a repeat takes the key
    over and sends; the first, going on, records nothing and answers with the repeat's reply.
    One message is sent."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    first_claimed, repeat_sent = asyncio.Event(), asyncio.Event()
    real_prepared = send_service._prepared
    calls = 0

    async def stalls_first(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_claimed.set()  # its key's claim committed
            await repeat_sent.wait()
        return await real_prepared(*args)

    impatient = settings.model_copy(update={"idempotency_wait_seconds": 0.5})
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(send_service, "_prepared", stalls_first)
        async with api_client(impatient) as api:
            first = asyncio.ensure_future(send(api, account, user, key=key, agent_message="one"))
            async with asyncio.timeout(10):
                await first_claimed.wait()
            repeated = await send(api, account, user, key=key, agent_message="one")
            repeat_sent.set()
            answered = await first

    assert repeated.status_code == answered.status_code == 200, (repeated.text, answered.text)
    assert answered.json() == repeated.json()
    assert calls == 2
    assert len(await received_by(emulator_url, user, 1)) == 1


async def test_a_request_whose_key_was_taken_over_records_nothing_under_it(
    account: Account, pool: asyncpg.Pool
) -> None:
    """A first request stuck past the wait, then going on, after a repeat took its key over:
    it can neither record its message under the key nor free the repeat's claim."""
    key = secrets.token_hex(8)
    first = await idempotency.claim(pool, account.account_id, key, "hash", ttl=timedelta(hours=1))
    assert first is not None

    repeat = await idempotency.take_over(pool, account.account_id, first)
    assert repeat is not None and repeat.claimed_at > first.claimed_at
    # Only one repeat gets it.
    assert await idempotency.take_over(pool, account.account_id, first) is None
    async with pool.acquire() as conn:
        recorded = await idempotency.hold_message(conn, account.account_id, first, uuid.uuid4())
    await idempotency.release(pool, account.account_id, first)

    assert not recorded
    stored = await idempotency.get(pool, account.account_id, key)
    assert stored is not None and (stored.claimed_at, stored.message) == (repeat.claimed_at, None)
    async with pool.acquire() as conn:
        assert await idempotency.hold_message(conn, account.account_id, repeat, uuid.uuid4())


async def test_an_expired_key_is_claimed_again(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    assert await idempotency.claim(pool, account.account_id, key, "old", ttl=timedelta(0))

    response = await send(api, account, user, key=key, agent_message="after expiry")

    assert response.status_code == 200, response.text
    assert len(await received_by(emulator_url, user, 1)) == 1


async def test_a_refused_send_leaves_its_key_free(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user, sender = unique_numbers(2)
    key = secrets.token_hex(8)

    refused = await send(api, account, user, key=key, agent_number=sender, agent_message="hi")
    await api.post("/v1/sms/numbers", headers=account.headers, json={"number": sender})
    accepted = await send(api, account, user, key=key, agent_number=sender, agent_message="hi")

    assert refused.status_code == 404
    assert error_code(refused) == "AGENT_NUMBER_NOT_FOUND"
    assert accepted.status_code == 200
    assert len(await received_by(emulator_url, user, 1)) == 1


async def test_a_repeat_gets_the_first_reply_even_after_its_sender_is_removed(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user, sender = unique_numbers(2)
    key = secrets.token_hex(8)
    await api.post("/v1/sms/numbers", headers=account.headers, json={"number": sender})
    first = await send(api, account, user, key=key, agent_number=sender, agent_message="hi")
    # Sent before the sender goes: a message still queued then is not sent from it
    # (`sender_not_held`, tests/test_senders.py).
    await received_by(emulator_url, user, 1)
    await api.delete(f"/v1/sms/numbers/{sender}", headers=account.headers)

    repeated = await send(api, account, user, key=key, agent_number=sender, agent_message="hi")

    assert first.status_code == repeated.status_code == 200
    assert repeated.json() == first.json()
    assert len(await received_by(emulator_url, user, 1)) == 1


async def test_without_temporal_the_send_fails_and_its_key_is_free_again(
    settings: Settings, api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        failed = await send(unreachable, account, user, key=key, agent_message="retry me")
    retried = await send(api, account, user, key=key, agent_message="retry me")

    assert failed.status_code == 503
    assert error_code(failed) == "TEMPORAL_UNAVAILABLE"
    assert retried.status_code == 200
    outcomes = await outcomes_once_sent(api, account, retried.json()["data"]["conversation_id"])
    assert outcomes == FAILED_THEN_SENT
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_a_send_whose_signal_arrived_but_whose_answer_was_lost_is_the_send(
    settings: Settings, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    lost = api_client(
        settings,
        temporal_as=lambda client: SignalAnswerLost(client, pool, lambda s: s.message_id),
    )
    async with lost as api:
        first = await send(api, account, user, key=key, agent_message="once")
    # Not a 503 asking for the request again: the message is on its way.
    assert first.status_code == 200, first.text
    async with api_client(settings) as api:
        repeated = await send(api, account, user, key=key, agent_message="once")
        detail = await conversation_when(
            api, account, first.json()["data"]["conversation_id"], all_sent
        )

    assert repeated.json() == first.json()
    assert [m["status"] for m in detail["messages"]] == ["sent"]
    assert len(await emulator_messages(emulator_url, to=user)) == 1


class _ProcessKilled(BaseException):
    """The API process dying: nothing of the request runs after it (no handler catches it)."""


async def _stops_after_the_commit(
    api: httpx.AsyncClient, account: Account, user: str, key: str, stop: type[BaseException]
) -> None:
    """A send whose signal is not sent: its message committed, then `stop` raised."""

    async def stops(*args: object, **kwargs: object) -> None:
        raise stop("after the commit, before the signal")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr("api.services.send.signal_conversation", stops)
        try:
            response = await send(api, account, user, key=key, agent_message="once")
        except _ProcessKilled:
            return
    assert response.status_code == 500, response.text


@pytest.mark.parametrize("stop", [_ProcessKilled, RuntimeError])
async def test_a_send_stopped_before_its_signal_is_signalled_by_its_repeat(
    settings: Settings,
    account: Account,
    pool: asyncpg.Pool,
    emulator_url: str,
    stop: type[BaseException],
) -> None:
    """Its message committed and never signalled (the process died, or an unexpected error),
    the key held without a reply: a repeat past the wait signals that message and answers as
    the first would have; later repeats get that reply, and the message is sent once."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    impatient = settings.model_copy(update={"idempotency_wait_seconds": 0.5})

    async with api_client(impatient) as api:
        await _stops_after_the_commit(api, account, user, key, stop)
        repeated = await send(api, account, user, key=key, agent_message="once")
        assert repeated.status_code == 200, repeated.text
        data = repeated.json()["data"]
        detail = await conversation_when(api, account, data["conversation_id"], all_sent)
        again = await send(api, account, user, key=key, agent_message="once")

    assert data["message"] == SENT
    assert [(m["message_id"], m["status"]) for m in detail["messages"]] == [
        (data["message_id"], "sent")
    ]
    assert data["workflow_id"] == detail["workflow_id"]
    assert again.json() == repeated.json()
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_a_send_stopped_before_its_signal_is_failed_then_sent_anew_by_its_repeat(
    settings: Settings,
    account: Account,
    pool: asyncpg.Pool,
    temporal: Client,
    emulator_url: str,
) -> None:
    # Its caller had no answer, and without a repeat the message stayed `queued` for good.
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    impatient = settings.model_copy(update={"idempotency_wait_seconds": 0.5})
    async with api_client(impatient) as api:
        await _stops_after_the_commit(api, account, user, key, _ProcessKilled)
        stored = await idempotency.get(pool, account.account_id, key)
        assert stored is not None and stored.message is not None
        await hand_over_stranded(pool, temporal, settings, send_after=timedelta(0))
        failed = await conversation_messages.message_status(pool, stored.message.message_id)
        later = await send(api, account, user, key=key, agent_message="once")
        outcomes = await outcomes_once_sent(api, account, later.json()["data"]["conversation_id"])

    assert failed[:2] == ("failed", "TEMPORAL_UNAVAILABLE")
    assert later.status_code == 200, later.text
    assert later.json()["data"]["message_id"] != str(stored.message.message_id)
    assert outcomes == FAILED_THEN_SENT
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_two_repeats_whose_signals_both_fail_answer_503_and_a_later_one_sends(
    settings: Settings, account: Account, emulator_url: str
) -> None:
    """The first request committed its message and died before its signal; two repeats at
    once, Temporal down: neither answers 200 for the message one of them failed, and the next
    repeat, Temporal back, sends it once."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    impatient = settings.model_copy(update={"idempotency_wait_seconds": 0.5})
    down = impatient.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(impatient) as api:
        await _stops_after_the_commit(api, account, user, key, _ProcessKilled)
    async with api_client(down) as unreachable:
        repeats = await asyncio.gather(
            *(send(unreachable, account, user, key=key, agent_message="once") for _ in range(2))
        )
    async with api_client(impatient) as api:
        later = await send(api, account, user, key=key, agent_message="once")
        opened = later.json()["data"]["conversation_id"]
        outcomes = await outcomes_once_sent(api, account, opened)

    assert [r.status_code for r in repeats] == [503, 503], [r.text for r in repeats]
    assert later.status_code == 200, later.text
    # The first request's message failed unsent; so may a message of the second repeat, if
    # it came once the first had failed that one (it freed the key, then failed its own);
    # the later repeat's is the one sent.
    failed, sent = outcomes[:-1], outcomes[-1]
    assert sent == ("sent", None), outcomes
    assert 1 <= len(failed) <= 2, outcomes
    assert set(failed) == {("failed", "TEMPORAL_UNAVAILABLE")}, outcomes
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_a_signal_failing_while_another_fails_the_message_is_a_failure_too(
    settings: Settings, account: Account, pool: asyncpg.Pool
) -> None:
    """Two repeats' signals fail at once: the second's `fail_queued_message` waits on the
    first's update of the row and, once that commits, answers that the message is not being
    sent (its request answers 503), never that a send claimed it (a 200 for a failed message)."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    async with api_client(settings) as api:
        await _stops_after_the_commit(api, account, user, key, _ProcessKilled)
    stored = await idempotency.get(pool, account.account_id, key)
    assert stored is not None and stored.message is not None and stored.message.unsignalled
    message_id = stored.message.message_id

    async with pool.acquire() as first, first.transaction():
        await first.execute(
            "UPDATE conversation_messages SET status = 'failed',"
            " error_code = 'TEMPORAL_UNAVAILABLE' WHERE id = $1",
            message_id,
        )
        second = asyncio.create_task(
            conversation_messages.fail_queued_message(pool, message_id, error_message="down")
        )
        await blocked_behind(pool, first)
    assert await second is True


class _FailedByARepeat:
    """The real Temporal client, whose signal of a message goes through after another
    request's signal of the same message failed and failed it (a repeat of the same send,
    with Temporal flapping)."""

    def __init__(self, client: Client, pool: asyncpg.Pool) -> None:
        self._client = client
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def start_workflow(self, *args: Any, **kwargs: Any) -> Any:
        [signal] = kwargs["start_signal_args"]
        assert await conversation_messages.fail_queued_message(
            self._pool, uuid.UUID(signal.message_id), error_message="the repeat's signal failed"
        )
        return await self._client.start_workflow(*args, **kwargs)


async def test_a_send_whose_message_a_repeat_failed_before_its_signal_answers_503(
    settings: Settings, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    """Its signal goes through, but the workflow skips the message another request failed:
    a 503 (never a 200 for a message not sent), and the next repeat sends it once."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    failing = api_client(settings, temporal_as=lambda client: _FailedByARepeat(client, pool))
    async with failing as api:
        first = await send(api, account, user, key=key, agent_message="once")
    async with api_client(settings) as api:
        later = await send(api, account, user, key=key, agent_message="once")
        outcomes = await outcomes_once_sent(api, account, later.json()["data"]["conversation_id"])

    assert first.status_code == 503, first.text
    assert error_code(first) == "TEMPORAL_UNAVAILABLE"
    assert later.status_code == 200, later.text
    assert outcomes == FAILED_THEN_SENT
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_a_repeat_finding_the_message_failed_by_a_request_that_died_sends_anew(
    settings: Settings, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    """The first request died after its commit; a repeat's signal failed, failed the message,
    and that repeat died before releasing the key: the next repeat sends a new message (not
    the failed one's 200 reply, for a message never sent)."""
    user = unique_numbers(1)[0]
    key = secrets.token_hex(8)
    impatient = settings.model_copy(update={"idempotency_wait_seconds": 0.5})
    async with api_client(impatient) as api:
        await _stops_after_the_commit(api, account, user, key, _ProcessKilled)
        stored = await idempotency.get(pool, account.account_id, key)
        assert stored is not None and stored.message is not None
        assert await conversation_messages.fail_queued_message(
            pool, stored.message.message_id, error_message="the repeat's signal failed"
        )
        later = await send(api, account, user, key=key, agent_message="once")
        outcomes = await outcomes_once_sent(api, account, later.json()["data"]["conversation_id"])

    assert later.status_code == 200, later.text
    assert later.json()["data"]["message_id"] != str(stored.message.message_id)
    assert outcomes == FAILED_THEN_SENT
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def open_pair(
    conn: asyncpg.Connection, account: Account, user: str, webhook: str, *, new: bool
) -> dict:
    """The pair's conversation as a send (`new`: with `new_conversation`) or a reply opens it,
    in `conn`'s transaction."""
    return await conversations.open_conversation(
        conn,
        account_id=account.account_id,
        agent_number=account.agent_number,
        user_number=user,
        workflow_id="sms-conversation-test",
        fields=conversations.ConversationFields(channel="sms", webhook=webhook),
        close_current=new,
    )


async def opened_while_another_opens(
    pool: asyncpg.Pool, account: Account, *, first_new: bool
) -> tuple[dict, dict, dict | None]:
    """A pair's conversation opened (`first_new`: by a send with `new_conversation`; else as
    a reply opens it), its transaction not committed yet, as a `new_conversation` send
    opens one: the first, the send's, and the first as it is once both committed."""
    user = unique_numbers(1)[0]
    async with pool.acquire() as first_conn, pool.acquire() as second_conn:
        opening = first_conn.transaction()
        await opening.start()
        first = await open_pair(
            first_conn, account, user, "https://first.example/hook", new=first_new
        )
        async with second_conn.transaction():
            second_open = asyncio.create_task(
                open_pair(second_conn, account, user, "https://second.example/hook", new=True)
            )
            await blocked_behind(pool, first_conn)
            await opening.commit()
            second = await second_open
    ended = await conversations.get_conversation(pool, account.account_id, first["id"])
    return first, second, ended


async def test_two_new_conversations_of_a_pair_at_once_are_two(
    account: Account, pool: asyncpg.Pool
) -> None:
    """Two sends with `new_conversation` for one pair at once: the second waits for the
    first, closes the conversation it opened and opens its own (not the first's, its webhook
    and fields overwritten)."""
    first, second, ended = await opened_while_another_opens(pool, account, first_new=True)

    assert second["id"] != first["id"]
    assert second["webhook"] == "https://second.example/hook"
    assert ended is not None and ended["state"] == "closed"
    assert ended["webhook"] == "https://first.example/hook"


async def test_a_new_conversation_waits_for_one_a_reply_is_opening_and_closes_it(
    account: Account, pool: asyncpg.Pool
) -> None:
    """A reply opens the pair's conversation (its transaction not committed yet) as a send
    with `new_conversation` comes: the send's close found nothing to close, then its insert
    met the reply's and joined it, the reply's batch fields kept, not a new conversation."""
    reply, sent, replied = await opened_while_another_opens(pool, account, first_new=False)

    assert sent["id"] != reply["id"]
    assert sent["webhook"] == "https://second.example/hook"
    assert replied is not None and replied["state"] == "closed"


async def test_whatsapp_goes_to_the_carrier_with_whatsapp_addresses(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]

    response = await send(api, account, user, channel="whatsapp", agent_message="hola")

    assert response.status_code == 200, response.text
    [received] = await received_by(emulator_url, f"whatsapp:{user}", 1)
    assert received["from"] == f"whatsapp:{account.agent_number}"
    assert received["body"] == "hola"
    detail = await conversation_when(
        api, account, response.json()["data"]["conversation_id"], all_sent
    )
    assert detail["channel"] == detail["messages"][0]["channel"] == "whatsapp"


@pytest.mark.parametrize(
    "variables", [{"1": "Ada", "2": "7pm"}, json.dumps({"1": "Ada", "2": "7pm"})]
)
async def test_a_content_template_passes_through_as_twilio_expects(
    api: httpx.AsyncClient, account: Account, emulator_url: str, variables: object
) -> None:
    user = unique_numbers(1)[0]
    content_sid = "HX" + secrets.token_hex(16)

    response = await send(
        api,
        account,
        user,
        channel="whatsapp",
        content_sid=content_sid,
        content_variables=variables,
    )

    assert response.status_code == 200, response.text
    [received] = await received_by(emulator_url, f"whatsapp:{user}", 1)
    assert received["content_sid"] == content_sid
    assert json.loads(received["content_variables"]) == {"1": "Ada", "2": "7pm"}
    assert received["body"] == ""
    detail = await conversation_when(
        api, account, response.json()["data"]["conversation_id"], all_sent
    )
    assert detail["messages"][0]["content_variables"] == {"1": "Ada", "2": "7pm"}


async def test_sends_share_a_conversation_until_a_new_one_is_asked_for(
    api: httpx.AsyncClient,
    account: Account,
    emulator_url: str,
    temporal: Client,
    webhooks: WebhookReceiver,
) -> None:
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)

    first = await send_ok(api, account, user, agent_message="one", webhook=webhooks.url(run))
    second = await send_ok(api, account, user, agent_message="two")
    await received_by(emulator_url, user, 2)
    third = await send_ok(api, account, user, agent_message="three", new_conversation=True)

    assert first["conversation_id"] == second["conversation_id"] != third["conversation_id"]
    assert first["workflow_id"] == third["workflow_id"]
    await received_by(emulator_url, user, 3)
    old = await conversation_when(
        api, account, first["conversation_id"], lambda c: c["state"] == "closed"
    )
    new = await conversation_when(api, account, third["conversation_id"], all_sent)
    assert [m["body"] for m in old["messages"]] == ["one", "two"]
    assert old["ended_at"] is not None and old["timed_out_at"] is None
    assert [m["body"] for m in new["messages"]] == ["three"]
    assert new["state"] == "active"
    assert new["webhook"] is None
    await webhooks.wait_for(run, "closed")
    # The post of "two" in flight as the pair's next conversation took over was cut short, and
    # its event posted again with its id: taken once.
    events = [json.loads(post.body) for post in webhooks.delivered(run)]
    assert [(e["event"], e["status"]) for e in events] == [
        ("status", "active"),
        ("message", "sent"),
        ("message", "sent"),
        ("status", "closed"),
    ]
    assert {e["conversation_id"] for e in events} == {first["conversation_id"]}
    description = await temporal.get_workflow_handle(third["workflow_id"]).describe()
    assert description.status is not None and description.status.name == "RUNNING"


async def test_a_failing_receivers_first_event_is_given_up_on_its_schedule_across_runs(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    # Each run that carried the pair's undelivered events on started the first one's retry
    # schedule over: a receiver that always fails, on a pair whose conversations follow each
    # other faster than the schedule, held that event for good, and the rest piled up.
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)
    webhooks.answers[run] = [500] * 1000
    schedule = {"webhook_retry_schedule_seconds": [1.0, 1.0], "webhook_retry_jitter": 0.0}
    async with own_worker(temporal, settings, **schedule) as own, api_client(own) as api:
        first = await send_ok(api, account, user, agent_message="m0", webhook=webhooks.url(run))
        for n in range(1, 6):
            await asyncio.sleep(1.2)
            await send_ok(
                api,
                account,
                user,
                agent_message=f"m{n}",
                new_conversation=True,
                webhook=webhooks.url(run),
            )
        await asyncio.sleep(2)
    posted = [json.loads(post.body) for post in webhooks.posts[run]]

    opening = [
        e
        for e in posted
        if (e["event"], e["status"], e["conversation_id"])
        == ("status", "active", first["conversation_id"])
    ]
    # Posted at 0 s and 1 s on its schedule, once more by the run that took it on at 1.2 s
    # (past its schedule by then), then given up on.
    assert 1 <= len(opening) <= 4, len(opening)


async def test_a_conversation_closed_before_its_run_began_gets_its_active_and_closed_events(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, carrier: Configure
) -> None:
    # Two sends opening conversations while the pair's run was busy sending: the first one's
    # conversation, closed by the second before its run began, got neither event.
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)
    # Long enough that the steps below fit in one send, on a loaded machine too.
    await carrier(latency_ms=3000)
    await send_ok(api, account, user, agent_message="busy")
    first = await send_ok(
        api, account, user, agent_message="one", new_conversation=True, webhook=webhooks.url(run)
    )
    await send_ok(api, account, user, agent_message="two", new_conversation=True)
    await webhooks.wait_for(run, "closed")
    # Each event once: one cut off by the run's end is posted again, with the same id.
    events = [json.loads(post.body) for post in webhooks.delivered(run)]

    assert [(e["event"], e["status"]) for e in events] == [
        ("status", "active"),
        ("message", "sent"),
        ("status", "closed"),
    ]
    assert {e["conversation_id"] for e in events} == {first["conversation_id"]}


async def test_an_event_attempt_that_failed_before_posting_is_no_post_of_its_schedule(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    """The event's first attempt fails on the database, before it posts: the receiver still
    gets every post of the retry schedule (here a post and one retry), not one fewer."""
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)
    webhooks.answers[run] = [500] * 10
    real = accounts.webhook_signing_secrets
    failed: list[uuid.UUID] = []

    async def fails_once(pool: asyncpg.Pool, account_id: uuid.UUID) -> list[str]:
        if account_id == account.account_id and not failed:
            failed.append(account_id)
            raise asyncpg.PostgresConnectionError("the database went away")
        return await real(pool, account_id)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(accounts, "webhook_signing_secrets", fails_once)
        async with (
            own_worker(temporal, settings, webhook_retry_schedule_seconds=[0.1]) as own,
            api_client(own) as api,
        ):
            await send_ok(api, account, user, agent_message="hi", webhook=webhooks.url(run))

            async def received() -> list[dict[str, Any]]:
                return webhooks.received[run]

            await eventually(
                received, lambda events: [e["status"] for e in events].count("active") >= 2
            )
            # Past the schedule's end, no more: a retry would come 0.1 s after the last post
            # (a durable timer of about a second on the dev server).
            await asyncio.sleep(2.5)
            posts = await received()

    assert failed == [account.account_id]
    assert [e["status"] for e in posts].count("active") == 2


async def test_conversations_are_listed_by_number_and_state(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    first_user, second_user = unique_numbers(2)
    first = await send_ok(api, account, first_user, agent_message="a")
    await send(api, account, second_user, agent_message="b")
    await send(api, account, first_user, agent_message="c", new_conversation=True)

    everything = await api.get("/v1/sms/conversations", headers=account.headers)
    closed = await api.get(
        "/v1/sms/conversations",
        headers=account.headers,
        params={"user_number": first_user[1:], "state": "closed"},
    )
    paged = await every_page(api, account, "/v1/sms/conversations", "conversations", limit=1)
    by_user = await every_page(
        api,
        account,
        "/v1/sms/conversations",
        "conversations",
        limit=1,
        params={"user_number": first_user},
    )

    assert everything.json()["data"]["next_cursor"] is None
    assert [c["user_number"] for c in everything.json()["data"]["conversations"]] == [
        first_user,
        second_user,
        first_user,
    ]
    assert [c["conversation_id"] for c in closed.json()["data"]["conversations"]] == [
        first["conversation_id"]
    ]
    assert [[c["user_number"] for c in page] for page in paged] == [
        [first_user],
        [second_user],
        [first_user],
    ]
    assert [c["conversation_id"] for page in by_user for c in page][1] == first["conversation_id"]


async def test_a_send_to_an_opted_out_number_is_refused(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    await opt_outs.add_opt_out(pool, account.account_id, user, source="api")

    response = await send(api, account, user, agent_message="not wanted")

    assert response.status_code == 409, response.text
    assert error_code(response) == "RECIPIENT_OPTED_OUT"
    listed = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )
    assert listed.json()["data"]["conversations"] == []
    assert await emulator_messages(emulator_url, to=user) == []


async def test_a_carrier_refusal_is_kept_on_the_message(
    api: httpx.AsyncClient, account: Account
) -> None:
    response = await send(api, account, "+15005550009", agent_message="landline")

    detail = await conversation_when(
        api,
        account,
        response.json()["data"]["conversation_id"],
        lambda c: c["messages"][-1]["status"] not in ("queued", "sending"),
    )
    assert (detail["messages"][-1]["status"], detail["messages"][-1]["error_code"]) == (
        "failed",
        "21614",
    )


async def test_a_carrier_opt_out_of_a_send_opts_the_number_out_for_the_account(
    api: httpx.AsyncClient, account: Account
) -> None:
    # The carrier's 21610 (the user unsubscribed there) failed the message alone: the next
    # send from any of the account's senders went to the carrier again, and batches too.
    first = await send(api, account, OPTED_OUT_AT_CARRIER, agent_message="hello")
    await conversation_when(
        api,
        account,
        first.json()["data"]["conversation_id"],
        lambda c: c["messages"][-1]["status"] == "failed",
    )

    again = await send(api, account, OPTED_OUT_AT_CARRIER, agent_message="hello again")

    assert (again.status_code, error_code(again)) == (409, "RECIPIENT_OPTED_OUT"), again.text
    listed = (await api.get("/v1/opt-outs", headers=account.headers)).json()["data"]["opt_outs"]
    assert [(o["number"], o["source"]) for o in listed] == [(OPTED_OUT_AT_CARRIER, "carrier")]


VALID = {"agent_message": "hi"}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"user_number": None, **VALID}, 400, "INVALID_USER_NUMBER"),
        ({"user_number": "12", **VALID}, 400, "INVALID_USER_NUMBER"),
        ({"user_number": "+1 555 000", **VALID}, 400, "INVALID_USER_NUMBER"),
        ({"agent_number": None, **VALID}, 400, "MISSING_AGENT_NUMBER"),
        ({"agent_number": "", **VALID}, 400, "MISSING_AGENT_NUMBER"),
        ({"agent_number": "+15551230000", **VALID}, 404, "AGENT_NUMBER_NOT_FOUND"),
        ({"agent_number": "not a number", **VALID}, 404, "AGENT_NUMBER_NOT_FOUND"),
        ({}, 400, "MISSING_AGENT_MESSAGE"),
        ({"agent_message": "  "}, 400, "MISSING_AGENT_MESSAGE"),
        ({"content_variables": {"1": "x"}}, 400, "MISSING_AGENT_MESSAGE"),
        (
            {"time_out": 4, "warning_time": 4, "warning_message": "w", **VALID},
            400,
            "INVALID_TIMEOUT_CONFIG",
        ),
        (
            {"time_out": 4, "warning_time": 5, "warning_message": "w", **VALID},
            400,
            "INVALID_TIMEOUT_CONFIG",
        ),
        ({"time_out": 0, **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"time_out": -3, **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"time_out": "soon", **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"time_out": 1e300, **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"time_out": 366 * 86400, **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        (
            {"time_out": 10, "warning_time": 1e300, "warning_message": "w", **VALID},
            400,
            "INVALID_TIMEOUT_CONFIG",
        ),
        ({"time_out": 10, "warning_time": 5, **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"warning_message": "w", **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"timeout_message": "t", **VALID}, 400, "INVALID_TIMEOUT_CONFIG"),
        ({"webhook": "ftp://example.com", **VALID}, 400, "INVALID_WEBHOOK_URL"),
        ({"channel": "fax", **VALID}, 400, "INVALID_REQUEST"),
        ({"content_sid": "HX1", "content_variables": "[1]"}, 400, "INVALID_REQUEST"),
        ({"content_sid": "HX1", "content_variables": "{"}, 400, "INVALID_REQUEST"),
    ],
)
async def test_send_request_errors(
    api: httpx.AsyncClient,
    account: Account,
    emulator_url: str,
    body: dict,
    status: int,
    code: str,
) -> None:
    user = unique_numbers(1)[0]
    payload = {"user_number": user, "agent_number": account.agent_number, **body}
    payload = {name: value for name, value in payload.items() if value is not None}

    response = await api.post("/v1/sms/send", headers=account.headers, json=payload)

    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert await emulator_messages(emulator_url, to=user) == []


async def test_a_send_needs_a_key(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/sms/send", json={"user_number": "+12015550123"})

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


async def test_unknown_and_foreign_conversations_are_not_found(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    user = unique_numbers(1)[0]
    mine = await send_ok(api, account, user, agent_message="mine")
    other_id = await create_account(pool, "other")
    other_key = (await create_api_key(pool, other_id)).key

    responses = [
        await api.get(f"/v1/sms/conversations/{uuid.uuid4()}", headers=account.headers),
        await api.get("/v1/sms/conversations/not-an-id", headers=account.headers),
        await api.get(
            f"/v1/sms/conversations/{mine['conversation_id']}",
            headers={"authorization": other_key},
        ),
    ]

    assert [r.status_code for r in responses] == [404, 404, 404]
    assert {error_code(r) for r in responses} == {"CONVERSATION_NOT_FOUND"}
    assert (await conversation(api, account, mine["conversation_id"]))["user_number"] == user


async def test_an_unknown_state_filter_is_refused(api: httpx.AsyncClient, account: Account) -> None:
    response = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"state": "sleeping"}
    )

    assert response.status_code == 400
    assert error_code(response) == "INVALID_REQUEST"


async def test_nulls_for_defaults_are_the_defaults_and_events_carry_metadata_even_when_null(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    # Clients that send every optional field send the unset ones as null; and Bland's
    # `metadata` "is returned in all webhook payloads".
    run = secrets.token_hex(6)
    user = unique_numbers(1)[0]

    sent = await send_ok(
        api,
        account,
        user,
        agent_message="hello",
        webhook=webhooks.url(run),
        channel=None,
        new_conversation=None,
    )
    events = await webhooks.wait_for(run, "sent")

    detail = await conversation(api, account, sent["conversation_id"])
    assert detail["channel"] == "sms"
    assert [(e["event"], e["metadata"], e["request_data"]) for e in events] == [
        ("status", None, None),
        ("message", None, None),
    ]


async def test_a_senders_own_webhook_gets_events_when_a_send_names_none(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    run = secrets.token_hex(6)
    sender, user = unique_numbers(2)
    registered = await api.post(
        "/v1/sms/numbers",
        headers=account.headers,
        json={"number": sender, "mps": None, "webhook": webhooks.url(f"{run}-old")},
    )
    changed = await api.patch(
        f"/v1/sms/numbers/{sender}", headers=account.headers, json={"webhook": webhooks.url(run)}
    )

    sent = await send_ok(api, account, user, agent_number=sender, agent_message="hello")
    events = await webhooks.wait_for(run, "sent")

    assert registered.status_code == 201, registered.text
    assert changed.json()["data"] == {**registered.json()["data"], "webhook": webhooks.url(run)}
    assert [(e["event"], e["status"]) for e in events] == [
        ("status", "active"),
        ("message", "sent"),
    ]
    assert {e["conversation_id"] for e in events} == {sent["conversation_id"]}
    assert webhooks.received[f"{run}-old"] == []


async def test_a_text_longer_than_a_message_may_be_is_refused_before_anything_is_recorded(
    settings: Settings, account: Account, pool: asyncpg.Pool
) -> None:
    """`agent_message`, `warning_message` and `timeout_message` are held to
    `HERALD_MAX_MESSAGE_CHARS`, as a batch's messages are: any length was accepted, and
    rode in the conversation's signals and history (a few timers' texts of 700 KB passed
    the 2 MB a continue-as-new may carry) before the carrier refused it."""
    short = settings.model_copy(update={"max_message_chars": 5})
    user = unique_numbers(1)[0]
    timers: dict[str, Any] = {"warning_time": 60, "time_out": 120}
    async with api_client(short) as api:
        answers = {
            "agent_message": await send(api, account, user, agent_message="123456"),
            "warning_message": await send(
                api,
                account,
                user,
                agent_message="hi",
                warning_message="123456",
                timeout_message="bye",
                **timers,
            ),
            "timeout_message": await send(
                api,
                account,
                user,
                agent_message="hi",
                warning_message="hey",
                timeout_message="123456",
                **timers,
            ),
            "within": await send(
                api,
                account,
                user,
                agent_message="12345",
                warning_message="12345",
                timeout_message="12345",
                **timers,
            ),
        }

    codes = {
        name: (answer.status_code, error_code(answer) if answer.is_error else None)
        for name, answer in answers.items()
    }
    assert codes == {
        "agent_message": (400, "MESSAGE_TOO_LONG"),
        "warning_message": (400, "MESSAGE_TOO_LONG"),
        "timeout_message": (400, "MESSAGE_TOO_LONG"),
        "within": (200, None),
    }
    assert "warning_message has 6 characters" in answers["warning_message"].text
    recorded = await pool.fetchval(
        "SELECT count(*) FROM conversation_messages WHERE account_id = $1", account.account_id
    )
    assert recorded == 1
