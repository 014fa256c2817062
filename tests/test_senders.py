"""A sender belongs to one account at a time: another account cannot register, send from or
hear replies to it, and it is not given up while a batch of its account sends from it."""

import asyncio
import secrets
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import ActivityEnvironment

from activities.conversations import ConversationActivities
from api.services import batches as batches_service
from metrics import WorkerMetrics
from settings import Settings
from store import batches, numbers, opt_outs
from store.accounts import create_account, create_api_key
from store.db import create_pool, migrate
from tests.support.batches import (
    FINAL,
    recorded_batch,
    recorded_file,
    start,
    start_marked_batch,
    stored_files,
)
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.databases import blocked_behind, own_database
from tests.support.sending import (
    conversation_when,
    inbound_form,
    post_inbound,
    queued_agent_message,
    received_by,
    send,
    send_ok,
    twilio_carrier,
)
from tests.support.stack import Account, WebhookReceiver, api_client, error_code
from workflows.contracts import SendMessageInput
from workflows.retries import MESSAGE_ATTEMPTS
from workflows.statuses import FINAL_BATCH_STATUSES

T = TypeVar("T")

# A conversation message's statuses before its outcome.
SENDING = ("queued", "sending")


@pytest.fixture
async def other(pool: asyncpg.Pool, worker: None) -> Account:
    """A second account, B, with a sender of its own."""
    account_id = await create_account(pool, f"other-{secrets.token_hex(4)}")
    key = await create_api_key(pool, account_id)
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account_id, sender, "sms", None)
    return Account(account_id=account_id, key=key.key, agent_number=sender)


async def register(
    api: httpx.AsyncClient, account: Account, number: str, **fields: object
) -> httpx.Response:
    return await api.post(
        "/v1/sms/numbers", headers=account.headers, json={"number": number, **fields}
    )


async def listed(api: httpx.AsyncClient, account: Account) -> list[str]:
    response = await api.get("/v1/sms/numbers", headers=account.headers)
    return [n["number"] for n in response.json()["data"]["numbers"]]


async def conversations_with(api: httpx.AsyncClient, account: Account, user: str) -> list[dict]:
    response = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )
    return response.json()["data"]["conversations"]


async def test_a_sender_is_registered_by_one_account_at_a_time(
    api: httpx.AsyncClient, account: Account, other: Account
) -> None:
    number = account.agent_number

    taken = await register(api, other, number, mps=None)
    taken_as_digits = await register(api, other, number.removeprefix("+"))
    updated = await register(api, account, number, mps=3)
    listed_while_taken = await listed(api, other)
    deleted = await api.delete(f"/v1/sms/numbers/{number}", headers=account.headers)
    freed = await register(api, other, number)

    assert taken.status_code == taken_as_digits.status_code == 409
    assert taken.json() == {
        "data": None,
        "errors": [
            {"error": "SENDER_TAKEN", "message": f"{number} is registered by another account"}
        ],
    }
    assert error_code(taken_as_digits) == "SENDER_TAKEN"
    assert updated.status_code == 201
    assert (updated.json()["data"]["number"], updated.json()["data"]["mps"]) == (number, 3)
    assert listed_while_taken == [other.agent_number]
    assert deleted.status_code == 200
    assert freed.status_code == 201
    assert await listed(api, other) == [other.agent_number, number]
    assert await listed(api, account) == []


async def test_replies_and_stop_to_a_sender_reach_its_owner_only(
    api: httpx.AsyncClient,
    account: Account,
    other: Account,
    settings: Settings,
    pool: asyncpg.Pool,
    emulator_url: str,
) -> None:
    user = unique_numbers(1)[0]
    await send_ok(api, account, user, agent_message="from A")
    await received_by(emulator_url, user, 1)

    taken = await register(api, other, account.agent_number, mps=None)
    sent_by_other = await send(
        api, other, user, agent_number=account.agent_number, agent_message="from B"
    )
    stop = await post_inbound(
        api, settings, inbound_form(settings, to=account.agent_number, from_=user, body="STOP")
    )

    assert taken.status_code == 409
    assert sent_by_other.status_code == 404
    assert error_code(sent_by_other) == "AGENT_NUMBER_NOT_FOUND"
    assert stop.status_code == 200
    [conversation] = await conversations_with(api, account, user)
    detail = await api.get(
        f"/v1/sms/conversations/{conversation['conversation_id']}", headers=account.headers
    )
    assert [(m["sender"], m["body"]) for m in detail.json()["data"]["messages"]] == [
        ("AGENT", "from A"),
        ("USER", "STOP"),
    ]
    assert await conversations_with(api, other, user) == []
    assert await opt_outs.is_opted_out(pool, account.account_id, user)
    assert not await opt_outs.is_opted_out(pool, other.account_id, user)
    assert [m["body"] for m in await emulator_messages(emulator_url, to=user)] == ["from A"]


async def test_a_freed_sender_routes_replies_to_its_new_owner(
    api: httpx.AsyncClient, account: Account, other: Account, settings: Settings
) -> None:
    user = unique_numbers(1)[0]
    number = account.agent_number
    await send_ok(api, account, user, agent_message="from A")
    await api.delete(f"/v1/sms/numbers/{number}", headers=account.headers)
    assert (await register(api, other, number)).status_code == 201

    reply = await post_inbound(
        api, settings, inbound_form(settings, to=number, from_=user, body="who is this?")
    )

    assert reply.status_code == 200
    [theirs] = await conversations_with(api, other, user)
    assert theirs["agent_number"] == number
    [mine] = await conversations_with(api, account, user)
    detail = await api.get(
        f"/v1/sms/conversations/{mine['conversation_id']}", headers=account.headers
    )
    assert [m["body"] for m in detail.json()["data"]["messages"]] == ["from A"]


async def test_a_sender_is_not_deleted_while_a_batch_sends_from_it(
    api: httpx.AsyncClient, account: Account, other: Account, webhooks: WebhookReceiver
) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(3), schedule_at=at.isoformat()
    )
    await webhooks.wait_for(marker, "waiting_for_scheduled_messages")
    refused = await api.delete(f"/v1/sms/numbers/{account.agent_number}", headers=account.headers)
    cancelled = await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)
    await webhooks.wait_for(marker, *FINAL)
    deleted = await api.delete(f"/v1/sms/numbers/{account.agent_number}", headers=account.headers)

    assert (refused.status_code, error_code(refused)) == (409, "SENDER_IN_USE")
    assert file_id in refused.json()["errors"][0]["message"]
    assert cancelled.status_code == 200
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"]["deleted"] == account.agent_number
    # Given up, and another account's now: the batch is not sent from it again.
    assert (await register(api, other, account.agent_number)).status_code == 201
    retried = await api.post(
        f"/v1/sms/batch/{file_id}/retry",
        headers=account.headers,
        json={"statuses": ["cancelled"]},
    )
    assert (retried.status_code, error_code(retried)) == (404, "AGENT_NUMBER_NOT_FOUND")


@pytest.mark.parametrize("named", ["row", "list"])
async def test_a_sender_of_a_batchs_rows_is_not_deleted_before_its_rows_are_written(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, named: str
) -> None:
    """A sender the batch's request gives its rows (a Mobivate originator) or a list's
    contacts: in use from the start, not once validation has written rows that name it."""
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account.account_id, sender, "sms", None)
    request = (
        {"senders": {"2": sender}}
        if named == "row"
        else {"lists": [{"id": "customers", "agent_number": sender}]}
    )
    batch_id = await recorded_batch(pool, account, request)

    refused = await api.delete(f"/v1/sms/numbers/{sender}", headers=account.headers)

    assert (refused.status_code, error_code(refused)) == (409, "SENDER_IN_USE")
    assert str(batch_id) in refused.json()["errors"][0]["message"]
    assert sender in await listed(api, account)


async def removed_meanwhile(
    pool: asyncpg.Pool, sender: str, put_back: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """What `put_back` returns when it runs while another transaction removes `sender`, and
    that transaction commits once `put_back` waits for it."""
    async with pool.acquire() as conn:
        removing = conn.transaction()
        await removing.start()
        await conn.execute("DELETE FROM sender_numbers WHERE number = $1", sender)
        putting_back = asyncio.create_task(put_back())
        await blocked_behind(pool, conn)
        await removing.commit()
        return await putting_back


async def test_a_sender_removed_while_a_retry_queues_its_batch_is_gone_for_it(
    account: Account, pool: asyncpg.Pool
) -> None:
    """A retry checks the batch's senders, then queues it: a removal in between either comes
    first (the retry does not queue the batch) or finds it queued (not final: in use)."""
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account.account_id, sender, "sms", None)
    batch_id = await recorded_batch(pool, account, {"senders": {"2": sender}})
    await pool.execute("UPDATE batches SET status = 'completed_partial' WHERE id = $1", batch_id)
    batch = await batches.get_batch(pool, account.account_id, batch_id)
    assert batch is not None

    assert (
        await removed_meanwhile(pool, sender, lambda: batches.queue_for_retry(pool, batch)) is None
    )

    assert (await batches.get_batch(pool, account.account_id, batch_id) or {})["status"] == (
        "completed_partial"
    )


async def test_a_sender_removed_while_an_unstarted_batch_is_requeued_is_gone_for_it(
    account: Account, pool: asyncpg.Pool
) -> None:
    """A batch whose workflow never started is put back to `queued` by its request's repeat,
    after the batch's insert found its senders: a removal in between either comes first (the
    batch stays failed) or finds it queued (in use)."""
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account.account_id, sender, "sms", None)
    batch_id = await recorded_batch(pool, account, {"senders": {"2": sender}})
    await batches.set_unstarted(pool, batch_id, code=batches.NOT_STARTED, reason="stopped")
    batch = await batches.get_batch(pool, account.account_id, batch_id)
    assert batch is not None

    requeued = await removed_meanwhile(
        pool, sender, lambda: batches.requeue_unstarted(pool, batch, code=batches.NOT_STARTED)
    )
    assert requeued is False

    assert (await batches.get_batch(pool, account.account_id, batch_id) or {})["status"] == (
        "failed"
    )


async def test_a_sender_removed_while_an_inline_batch_is_recorded_leaves_no_file(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed by another request after the checks, before the batch's insert: 404, and the
    inline rows stored for it are gone too."""
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account.account_id, sender, "sms", None)
    real = batches_service._inline_file

    async def stored_then_removed(*args: Any, **kwargs: Any) -> uuid.UUID:
        stored = await real(*args, **kwargs)
        await pool.execute("DELETE FROM sender_numbers WHERE number = $1", sender)
        return stored

    monkeypatch.setattr(batches_service, "_inline_file", stored_then_removed)
    files_before = await stored_files(pool, account)

    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": [{"phone_number": unique_numbers(1)[0]}],
            "global": {"agent_number": sender, "agent_message": "hi"},
        },
    )

    assert (response.status_code, error_code(response)) == (404, "AGENT_NUMBER_NOT_FOUND")
    assert await stored_files(pool, account) == files_before


async def test_a_sender_removed_while_a_batch_is_recorded_is_in_use_or_gone_for_it(
    account: Account, pool: asyncpg.Pool
) -> None:
    """The batch's insert and the sender's removal at once: whichever commits first, the
    other sees it (a batch sending from a number the account no longer holds is neither)."""
    recorded_first, removed_first = unique_numbers(2)
    for sender in (recorded_first, removed_first):
        await numbers.add_number(pool, account.account_id, sender, "sms", None)

    async with pool.acquire() as conn:
        recording = conn.transaction()
        await recording.start()
        batch_id = await recorded_batch(conn, account, {"senders": {"2": recorded_first}})
        removal = asyncio.create_task(
            numbers.delete_number(
                pool, account.account_id, recorded_first, final=list(FINAL_BATCH_STATUSES)
            )
        )
        await blocked_behind(pool, conn)
        await recording.commit()
        assert (await removal).busy == [batch_id]

        removing = conn.transaction()
        await removing.start()
        await conn.execute("DELETE FROM sender_numbers WHERE number = $1", removed_first)
        file_id = await recorded_file(pool, account)
        recorded = asyncio.create_task(
            batches.create_batch(
                pool,
                batch_id=file_id,
                account_id=account.account_id,
                workflow_id=f"recorded-{file_id}",
                name=None,
                agent_number=account.agent_number,
                request={"senders": {"2": removed_first}},
                request_hash="",
            )
        )
        await blocked_behind(pool, conn)
        await removing.commit()
        assert await recorded is None


async def test_a_queued_message_is_not_sent_from_a_sender_given_up_and_taken_since(
    settings: Settings, pool: asyncpg.Pool, account: Account, other: Account, emulator_url: str
) -> None:
    """A send's message queued behind others of its pair (a conversation sends one at a
    time) when its account gives the sender up and another registers it: `failed`
    `sender_not_held`, not sent from the number now the other account's."""
    user = unique_numbers(1)[0]
    body = f"queued {secrets.token_hex(6)}"
    message_id = await queued_agent_message(pool, account, user, body)
    await pool.execute("DELETE FROM sender_numbers WHERE number = $1", account.agent_number)
    await numbers.add_number(pool, other.account_id, account.agent_number, "sms", None)
    carrier = twilio_carrier(settings)
    try:
        async with httpx.AsyncClient() as http:
            sender = ConversationActivities(
                pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
            )
            result = await ActivityEnvironment().run(
                sender.send_conversation_message,
                SendMessageInput(message_id=str(message_id), attempts=MESSAGE_ATTEMPTS),
            )
    finally:
        await carrier.close()

    assert (result.status, result.error_code) == ("failed", "sender_not_held")
    assert await emulator_messages(emulator_url, body_contains=body) == []


async def warned_soon(
    api: httpx.AsyncClient, account: Account, user: str, emulator_url: str
) -> None:
    """A conversation with `user` opened by a message from the account's sender, received,
    whose silence timer sends a warning 5 s later (the test's API calls come first, on a
    loaded machine too)."""
    await send_ok(
        api,
        account,
        user,
        agent_message="from A",
        warning_time=5,
        warning_message="still there?",
        time_out=30,
    )
    await received_by(emulator_url, user, 1)


async def the_warning(api: httpx.AsyncClient, account: Account, user: str) -> dict[str, Any]:
    """The warning of the conversation `warned_soon` opened, once it has its outcome."""
    [conversation] = await conversations_with(api, account, user)
    detail = await conversation_when(
        api,
        account,
        conversation["conversation_id"],
        lambda c: len(c["messages"]) == 2 and c["messages"][1]["status"] not in SENDING,
    )
    warning: dict[str, Any] = detail["messages"][1]
    return warning


async def test_a_conversations_timer_does_not_send_from_a_sender_given_up_since(
    api: httpx.AsyncClient, account: Account, other: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    number = account.agent_number
    await warned_soon(api, account, user, emulator_url)
    await api.delete(f"/v1/sms/numbers/{number}", headers=account.headers)
    assert (await register(api, other, number)).status_code == 201

    warning = await the_warning(api, account, user)
    assert (warning["kind"], warning["status"], warning["error_code"]) == (
        "warning",
        "failed",
        "sender_not_held",
    )
    assert [m["body"] for m in await emulator_messages(emulator_url, to=user)] == ["from A"]


async def test_the_migration_keeps_the_earliest_of_several_registrations(
    pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    """A database from before one-owner senders, where three accounts registered one number:
    the first keeps it, the others' registrations move to sender_numbers_displaced. The
    database is one of its own, migrated up to 040 and given the rows 040 must settle."""
    async with (
        own_database(pool, postgres_dsn, "migration") as url,
        await create_pool(url, min_size=1) as old,
    ):
        await migrate(old, before="040")
        shared, own = unique_numbers(2)
        accounts = [await create_account(old, f"before-{i}") for i in range(3)]
        # The schema before 040 took these; today's store refuses them, so SQL builds them.
        await old.executemany(
            "INSERT INTO sender_numbers (account_id, number, mps, created_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            [(a, shared, 5.0, i) for i, a in enumerate(accounts)] + [(accounts[1], own, None, 0)],
        )
        first = accounts[0]

        applied = await migrate(old)

        assert applied[0].startswith("040")
        assert await numbers.owner_of_number(old, shared, channel="sms") == first
        assert await numbers.owner_of_number(old, own, channel="sms") == accounts[1]
        displaced = await old.fetch("SELECT account_id, number, mps FROM sender_numbers_displaced")
        assert sorted((r["account_id"], r["number"], r["mps"]) for r in displaced) == sorted(
            (account_id, shared, 5.0) for account_id in accounts[1:]
        )
        assert await numbers.add_number(old, accounts[2], shared, "sms", None) is None


async def test_with_carrier_checks_only_a_number_the_carrier_account_owns_is_registered(
    account: Account, settings: Settings
) -> None:
    """The emulator's account owns every number but Twilio's test "not owned" ones, and
    answers IncomingPhoneNumbers as Twilio does, through the official client."""
    checking = settings.model_copy(update={"verify_sender_ownership": True})
    wrong_token = checking.model_copy(update={"twilio_auth_token": SecretStr("not-the-token")})
    owned, foreign = unique_numbers(1)[0], "+15005550007"

    async with api_client(checking) as api:
        registered = await register(api, account, owned)
        refused = await register(api, account, foreign)
        whatsapp = await register(api, account, unique_numbers(1)[0], channel="whatsapp")
    async with api_client(wrong_token) as api:
        unanswered = await register(api, account, unique_numbers(1)[0])

    assert registered.status_code == 201, registered.text
    assert refused.status_code == 400
    assert error_code(refused) == "SENDER_NOT_OWNED"
    assert whatsapp.status_code == 201, whatsapp.text
    assert unanswered.status_code == 503
    assert error_code(unanswered) == "CARRIER_UNAVAILABLE"
    async with api_client(checking) as api:
        assert foreign not in await listed(api, account)


async def test_a_sender_registered_for_whatsapp_sends_no_sms(
    api: httpx.AsyncClient, account: Account
) -> None:
    """A WhatsApp sender's registration is not checked against the carrier's numbers: it sends
    WhatsApp, but an SMS batch from it, a list's or a single send's, is refused up front
    (404 `AGENT_NUMBER_NOT_FOUND`: "not configured for SMS"), not failed row by row."""
    sender = unique_numbers(1)[0]
    registered = await register(api, account, sender, channel="whatsapp")
    recipients = unique_numbers(2)
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [[recipients[0]]]))
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "whatsapp"})
    list_id = created.json()["data"]["id"]
    added = await api.post(
        f"/v1/lists/{list_id}/contacts",
        headers=account.headers,
        json={"contacts": [{"phone_number": recipients[1]}]},
    )
    message = {"agent_message": "Hi"}

    sms = await start(api, account, file_id, **{"global": {"agent_number": sender, **message}})
    from_list = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "lists": [{"id": list_id, "agent_number": sender}],
            "global": {"agent_number": account.agent_number, **message},
        },
    )
    single = await send(api, account, recipients[0], agent_number=sender, agent_message="Hi")
    whatsapp = await start(
        api,
        account,
        file_id,
        **{"global": {"agent_number": sender, "channel": "whatsapp", **message}},
    )

    assert registered.status_code == 201, registered.text
    assert added.status_code == 200, added.text
    for refused in (sms, from_list, single):
        assert (refused.status_code, error_code(refused)) == (404, "AGENT_NUMBER_NOT_FOUND")
        assert "not configured for SMS" in refused.text, refused.text
    assert whatsapp.status_code == 200, whatsapp.text


async def test_a_sender_registered_for_whatsapp_hears_no_sms_and_answers_none(
    api: httpx.AsyncClient, account: Account, settings: Settings, emulator_url: str
) -> None:
    """An SMS to a number registered for WhatsApp is no one's (404): its conversation could
    only answer it by SMS (a timer's, HELP's message). WhatsApp to it is heard. A number
    registered again for WhatsApp while an SMS conversation's timer runs sends that timer's
    message no more."""
    sender, user, talker = unique_numbers(3)
    assert (await register(api, account, sender, channel="whatsapp")).status_code == 201
    sms = await post_inbound(
        api, settings, inbound_form(settings, to=sender, from_=user, body="HELP")
    )
    whatsapp = await post_inbound(
        api,
        settings,
        inbound_form(settings, to=f"whatsapp:{sender}", from_=f"whatsapp:{user}", body="hi"),
    )
    await warned_soon(api, account, talker, emulator_url)
    again = await register(api, account, account.agent_number, channel="whatsapp")
    warning = await the_warning(api, account, talker)

    assert sms.status_code == 404, sms.text
    assert error_code(sms) == "AGENT_NUMBER_NOT_FOUND"
    assert whatsapp.status_code == 200, whatsapp.text
    assert again.status_code == 201, again.text
    assert (warning["kind"], warning["status"], warning["error_code"]) == (
        "warning",
        "failed",
        "sender_not_held",
    )
    assert [m["body"] for m in await emulator_messages(emulator_url, to=talker)] == ["from A"]


async def test_a_stop_by_sms_to_a_sender_registered_for_whatsapp_still_opts_the_user_out(
    api: httpx.AsyncClient, account: Account, settings: Settings, pool: asyncpg.Pool
) -> None:
    """The SMS is still no one's (404), but its STOP is the user's word to the account that
    holds the number, for every sender of it (it was dropped with the 404, and the account's
    SMS senders went on messaging the user); a START by the same way opts back in."""
    sender, user = unique_numbers(2)
    assert (await register(api, account, sender, channel="whatsapp")).status_code == 201

    async def sms(body: str) -> httpx.Response:
        form = inbound_form(settings, to=sender, from_=user, body=body)
        return await post_inbound(api, settings, form)

    stop = await sms("stop")
    out = await opt_outs.is_opted_out(pool, account.account_id, user)
    start = await sms("START")
    back = await opt_outs.is_opted_out(pool, account.account_id, user)

    assert [(r.status_code, error_code(r)) for r in (stop, start)] == [
        (404, "AGENT_NUMBER_NOT_FOUND")
    ] * 2
    assert (out, back) == (True, False)


def test_sender_checks_are_on_unless_the_carrier_credentials_are_the_emulators() -> None:
    assert not Settings().checks_sender_ownership
    assert Settings(twilio_auth_token="a-real-token").checks_sender_ownership
    assert not Settings(
        twilio_auth_token="a-real-token", verify_sender_ownership=False
    ).checks_sender_ownership
    assert Settings(verify_sender_ownership=True).checks_sender_ownership
