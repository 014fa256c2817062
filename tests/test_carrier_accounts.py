"""Per-account carrier credentials (Twilio subaccounts) on the real stack: an account's sends
go through its own subaccount, another's keep the service's, and wrong own credentials fail
only that account's sends: its running batches pause (`carrier_authentication_failed`)."""

import functools
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from twilio.request_validator import RequestValidator

from api import carrier_signature
from settings import INBOUND_PATH, Settings
from store import conversation_messages, numbers, opt_outs, receipts
from store.accounts import create_account, create_api_key
from store.carrier_accounts import KEPT_RETIRED_TOKENS
from tests.support.batches import FINAL, run_batch, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import (
    answer_when_statement_fails,
    ledger_rows,
    receipt,
    rows_on_the_wire,
    sent_batch,
)
from tests.support.sending import eventually, inbound_form, post_inbound, queued_agent_message
from tests.support.stack import (
    AUTH_TOKEN,
    SUBACCOUNT_SID,
    SUBACCOUNT_TOKEN,
    Account,
    Configure,
    WebhookReceiver,
    error_code,
    set_own,
)


async def other_account(pool: asyncpg.Pool) -> Account:
    account_id = await create_account(pool, f"test-{secrets.token_hex(4)}")
    key = await create_api_key(pool, account_id)
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, account_id, sender, "sms", None)
    return Account(account_id=account_id, key=key.key, agent_number=sender)


async def own_subaccount_and_another(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, carrier: Configure
) -> Account:
    """`account` sending through its own subaccount (which the emulator knows); and another
    account, on the service's credentials."""
    await carrier(accounts={SUBACCOUNT_SID: SUBACCOUNT_TOKEN})
    assert (await set_own(api, account, SUBACCOUNT_TOKEN)).status_code == 200
    return await other_account(pool)


async def test_the_token_is_never_returned_only_masked(
    api: httpx.AsyncClient, account: Account
) -> None:
    assert error_code(await api.get("/v1/carrier-account", headers=account.headers)) == (
        "CARRIER_ACCOUNT_NOT_SET"
    )
    put = await set_own(api, account, SUBACCOUNT_TOKEN)
    got = await api.get("/v1/carrier-account", headers=account.headers)
    for response in (put, got):
        assert response.status_code == 200, response.text
        assert SUBACCOUNT_TOKEN not in response.text
        assert response.json()["data"] == {
            "account_sid": SUBACCOUNT_SID,
            "auth_token": "********" + SUBACCOUNT_TOKEN[-4:],
        }
    bad = await api.put(
        "/v1/carrier-account",
        headers=account.headers,
        json={"account_sid": "not-a-sid", "auth_token": "x"},
    )
    assert bad.status_code == 400
    assert (await api.delete("/v1/carrier-account", headers=account.headers)).status_code == 204
    assert (await api.get("/v1/carrier-account", headers=account.headers)).status_code == 404


async def test_a_token_basic_auth_cannot_carry_is_refused_and_never_echoed(
    api: httpx.AsyncClient, account: Account
) -> None:
    # Stored, such a token failed the account's first sender registration with a 500.
    tokens = ("t€st-token", "two words")
    replies = [await set_own(api, account, token) for token in tokens]
    got = await api.get("/v1/carrier-account", headers=account.headers)

    assert [(r.status_code, error_code(r)) for r in replies] == [(400, "INVALID_REQUEST")] * 2
    assert not any(token in r.text for r, token in zip(replies, tokens, strict=True))
    assert got.status_code == 404


async def test_an_accounts_sends_go_through_its_subaccount_and_others_keep_the_default(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
    settings: Settings,
) -> None:
    other = await own_subaccount_and_another(api, account, pool, carrier)

    own_numbers, other_numbers = unique_numbers(5), unique_numbers(5)
    own_file, own_events = await run_batch(api, account, webhooks, own_numbers)
    _, other_events = await run_batch(api, other, webhooks, other_numbers)

    assert own_events[-1]["status"] == other_events[-1]["status"] == "completed"
    carried = {m["to"]: m for m in await emulator_messages(emulator_url)}
    assert {carried[n]["account_sid"] for n in own_numbers} == {SUBACCOUNT_SID}
    assert {carried[n]["account_sid"] for n in other_numbers} == {settings.twilio_account_sid}
    # Callbacks signed with the subaccount's token carry no ledger key (receipts.keyed_url).
    assert {carried[n]["status_callback"] for n in own_numbers} == {settings.status_callback_url}
    assert all(
        carried[n]["status_callback"].startswith(f"{settings.status_callback_url}?m=")
        for n in other_numbers
    )
    # A receipt Twilio signs with the subaccount's token is accepted.
    row = (await ledger_rows(api, account, own_file))[0]
    form = {
        "AccountSid": SUBACCOUNT_SID,
        "MessageSid": row["carrier_sid"],
        "MessageStatus": "delivered",
    }
    posted = await signed_receipt(api, settings, form, SUBACCOUNT_TOKEN)
    assert posted.status_code == 204, posted.text
    rows = await eventually(
        lambda: ledger_rows(api, account, own_file),
        lambda rows: any(r["status"] == "delivered" for r in rows),
    )
    assert [r["carrier_sid"] for r in rows if r["status"] == "delivered"] == [row["carrier_sid"]]


async def test_a_subaccount_signs_inbound_only_for_its_own_accounts_senders(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool, settings: Settings
) -> None:
    assert (await set_own(api, account, SUBACCOUNT_TOKEN)).status_code == 200
    other = await other_account(pool)
    validator = RequestValidator(SUBACCOUNT_TOKEN)

    async def post_as_subaccount(to: str) -> httpx.Response:
        form = inbound_form(settings, to=to, from_=unique_numbers(1)[0], body="hello")
        form["AccountSid"] = SUBACCOUNT_SID
        signature = validator.compute_signature(settings.api_url + INBOUND_PATH, form)
        return await post_inbound(api, settings, form, signature=signature)

    assert (await post_as_subaccount(account.agent_number)).status_code == 200
    # Another tenant's number: as unknown as an unregistered one.
    assert (await post_as_subaccount(other.agent_number)).status_code == 404
    forged = inbound_form(settings, to=account.agent_number, from_="+15005550123", body="hi")
    forged["AccountSid"] = SUBACCOUNT_SID
    wrong = RequestValidator("not-the-token").compute_signature(
        settings.api_url + INBOUND_PATH, forged
    )
    assert (await post_inbound(api, settings, forged, signature=wrong)).status_code == 403


async def test_wrong_own_credentials_pause_every_running_batch_of_that_account_once(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    await carrier(accounts={SUBACCOUNT_SID: SUBACCOUNT_TOKEN})
    assert (await set_own(api, account, "a-wrong-token")).status_code == 200
    other = await other_account(pool)
    # A batch of the account that is running (waiting for its schedule) meanwhile.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting_file, waiting = await start_marked_batch(
        api, account, webhooks, unique_numbers(3), schedule_at=later
    )
    await webhooks.wait_for(waiting, "waiting_for_scheduled_messages")

    own_numbers, other_numbers = unique_numbers(5), unique_numbers(5)
    own_file, own = await start_marked_batch(api, account, webhooks, own_numbers)
    other_file, other_events = await run_batch(api, other, webhooks, other_numbers)

    for marker in (own, waiting):
        events = await webhooks.wait_for(marker, "paused")
        [paused] = [e for e in events if e["status"] == "paused"]
        assert (paused["code"], paused["error_codes"]) == (
            "carrier_authentication_failed",
            {"20003": 1},
        )
    # Nothing failed one by one: the rows wait, `pending`, for the account to be fixed.
    assert {r["status"] for r in await ledger_rows(api, account, own_file)} == {"pending"}
    assert other_events[-1]["status"] == "completed"
    assert {r["status"] for r in await ledger_rows(api, other, other_file)} == {"sent"}
    received = {m["to"] for m in await emulator_messages(emulator_url)}
    assert not received & set(own_numbers)

    assert (await set_own(api, account, SUBACCOUNT_TOKEN)).status_code == 200
    resumed = await api.post(f"/v1/sms/batch/{own_file}/resume", headers=account.headers)
    assert resumed.status_code == 200, resumed.text
    events = await webhooks.wait_for(own, *FINAL)
    assert events[-1]["status"] == "completed"
    assert sum(e["status"] == "paused" for e in events) == 1
    assert {r["status"] for r in await ledger_rows(api, account, own_file)} == {"sent"}
    cancel = await api.post(f"/v1/sms/batch/{waiting_file}/cancel", headers=account.headers)
    assert cancel.status_code == 200, cancel.text
    events = await webhooks.wait_for(waiting, *FINAL)
    assert sum(e["status"] == "paused" for e in events) == 1


async def test_senders_are_checked_against_the_accounts_own_subaccount(
    api: httpx.AsyncClient, account: Account, carrier: Configure
) -> None:
    await carrier(accounts={SUBACCOUNT_SID: SUBACCOUNT_TOKEN})

    async def register(number: str) -> httpx.Response:
        return await api.post("/v1/sms/numbers", headers=account.headers, json={"number": number})

    assert (await set_own(api, account, SUBACCOUNT_TOKEN)).status_code == 200
    assert (await register(unique_numbers(1)[0])).status_code == 201
    assert error_code(await register("+15005550001")) == "SENDER_NOT_OWNED"
    assert (await set_own(api, account, "a-wrong-token")).status_code == 200
    assert error_code(await register(unique_numbers(1)[0])) == "CARRIER_UNAVAILABLE"


async def signed_receipt(
    api: httpx.AsyncClient,
    settings: Settings,
    form: dict[str, str],
    token: str,
    *,
    multipart: bool = False,
) -> httpx.Response:
    """A status callback of `form`, signed with `token`: urlencoded, as the carrier posts it
    (api/receipt_lane.py answers it), or multipart (the API's route)."""
    url = settings.status_callback_url
    headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}
    path = httpx.URL(url).path
    if multipart:
        return await api.post(path, files={k: (None, v) for k, v in form.items()}, headers=headers)
    return await api.post(path, data=form, headers=headers)


async def test_a_key_signed_with_an_accounts_own_token_moves_no_row_by_it(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    webhooks: WebhookReceiver,
    carrier: Configure,
    settings: Settings,
) -> None:
    other = await own_subaccount_and_another(api, account, pool, carrier)
    file_id, [seq] = await rows_on_the_wire(api, other, webhooks, pool, 1)
    # A callback the subaccount signs, keyed with another account's row on the wire.
    sid = "SM" + secrets.token_hex(16)
    form = {"AccountSid": SUBACCOUNT_SID, "MessageSid": sid, "MessageStatus": "delivered"}
    key = receipts.MessageKey(uuid.UUID(file_id), seq, 1)
    query = receipts.keyed_url("", key).removeprefix("?")
    url = f"{settings.status_callback_url}?{query}"
    signature = RequestValidator(SUBACCOUNT_TOKEN).compute_signature(url, form)
    path = f"{httpx.URL(url).path}?{query}"

    posted = await api.post(path, data=form, headers={"X-Twilio-Signature": signature})
    row = await pool.fetchrow(
        "SELECT status, carrier_sid FROM messages WHERE batch_id = $1", uuid.UUID(file_id)
    )
    waiting = await pool.fetchval(
        "SELECT (SELECT count(*) FROM receipt_queue WHERE carrier_sid = $1)"
        " + (SELECT count(*) FROM carrier_receipts WHERE carrier_sid = $1)",
        sid,
    )
    await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=other.headers)

    # Taken by its sid, as a receipt of the subaccount's own messages is: it waits for it.
    assert posted.status_code == 204, posted.text
    assert tuple(row) == ("sending", None)
    assert waiting == 1


async def test_a_receipt_an_account_signs_for_another_accounts_message_is_refused(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    webhooks: WebhookReceiver,
    carrier: Configure,
    settings: Settings,
) -> None:
    other = await own_subaccount_and_another(api, account, pool, carrier)
    # Another account's batch message, and its conversation message, each holding its sid.
    file_id, [row] = await sent_batch(api, other, webhooks, 1)
    message_id = await queued_agent_message(pool, other, unique_numbers(1)[0], "hello")
    assert await conversation_messages.claim_message(pool, message_id)
    conversation_sid = "SM" + secrets.token_hex(16)
    await conversation_messages.record_outcome(
        pool, message_id, status="sent", carrier_sid=conversation_sid
    )

    async def post(form: dict[str, str], token: str, *, multipart: bool) -> httpx.Response:
        return await signed_receipt(api, settings, form, token, multipart=multipart)

    forged = [
        {**receipt(sid, "failed", "30003"), "AccountSid": SUBACCOUNT_SID}
        for sid in (row["carrier_sid"], conversation_sid)
    ]
    answers = [
        await post(form, SUBACCOUNT_TOKEN, multipart=multipart)
        for form in forged
        for multipart in (False, True)
    ]
    statuses = (
        (await ledger_rows(api, other, file_id))[0]["status"],
        (await conversation_messages.message_status(pool, message_id))[0],
    )
    queued = await pool.fetchval(
        "SELECT count(*) FROM receipt_queue WHERE carrier_sid = ANY($1::text[])",
        [row["carrier_sid"], conversation_sid],
    )
    # The carrier's own receipts, signed with the service's token, are still the first.
    for sid in (row["carrier_sid"], conversation_sid):
        assert (
            await post(receipt(sid, "delivered"), AUTH_TOKEN, multipart=False)
        ).status_code == 204

    assert [(a.status_code, error_code(a)) for a in answers] == [(403, "SIGNER_NOT_OWNER")] * 4
    assert statuses == ("sent", "sent") and queued == 0
    await eventually(
        lambda: ledger_rows(api, other, file_id), lambda rows: rows[0]["status"] == "delivered"
    )
    await eventually(
        lambda: conversation_messages.message_status(pool, message_id),
        lambda status: status[:2] == ("delivered", None),
    )


async def test_receipts_signed_with_a_replaced_or_removed_token_are_taken_for_a_while(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    webhooks: WebhookReceiver,
    carrier: Configure,
    settings: Settings,
) -> None:
    # Messages sent through the subaccount, then its token replaced, then the credentials
    # removed: their receipts, which Twilio signs with the token they were sent with, were
    # refused (403), and the rows stayed `sent` for good.
    await own_subaccount_and_another(api, account, pool, carrier)
    file_id, rows = await sent_batch(api, account, webhooks, 3)

    async def post(sid: str, token: str) -> httpx.Response:
        form = {**receipt(sid, "delivered"), "AccountSid": SUBACCOUNT_SID}
        return await signed_receipt(api, settings, form, token)

    assert (await set_own(api, account, "replacing-token-" + "8" * 16)).status_code == 200
    replaced = await post(rows[0]["carrier_sid"], SUBACCOUNT_TOKEN)
    removed_answer = await api.delete("/v1/carrier-account", headers=account.headers)
    removed = await post(rows[1]["carrier_sid"], "replacing-token-" + "8" * 16)
    user = unique_numbers(1)[0]
    inbound = inbound_form(settings, to=account.agent_number, from_=user, body="STOP")
    inbound["AccountSid"] = SUBACCOUNT_SID
    retired_signs = RequestValidator(SUBACCOUNT_TOKEN).compute_signature(
        settings.api_url + INBOUND_PATH, inbound
    )
    # A token given up speaks for no inbound message: only its messages' receipts.
    inbound_answer = await post_inbound(api, settings, inbound, signature=retired_signs)
    await pool.execute(
        "UPDATE retired_carrier_accounts SET retired_at = now() - $2::interval"
        " WHERE account_id = $1",
        account.account_id,
        KEPT_RETIRED_TOKENS + timedelta(minutes=1),
    )
    too_late = await post(rows[2]["carrier_sid"], SUBACCOUNT_TOKEN)

    assert removed_answer.status_code == 204, removed_answer.text
    assert (replaced.status_code, removed.status_code) == (204, 204), replaced.text
    # 403; or 404 where another test's account holds the subaccount (it signs for its own).
    assert inbound_answer.status_code in (403, 404), inbound_answer.text
    assert not await opt_outs.is_opted_out(pool, account.account_id, user)
    # INVALID_SIGNATURE; or SIGNER_NOT_OWNER where another test's account holds the subaccount.
    assert too_late.status_code == 403, too_late.text
    await eventually(
        lambda: ledger_rows(api, account, file_id),
        lambda found: [r["status"] for r in found] == ["delivered", "delivered", "sent"],
    )


async def test_a_receipt_whose_subaccount_tokens_cannot_be_read_is_answered_503(
    api: httpx.AsyncClient,
    account: Account,
    pool: asyncpg.Pool,
    carrier: Configure,
    settings: Settings,
) -> None:
    """Signed with a subaccount's token, a receipt's signature is checked against the tokens
    the accounts stored: a database failure there escaped the receipt lane (a bare 500,
    counted nowhere) and the route (500 `INTERNAL_ERROR`), where a receipt not stored is
    503 `RECEIPT_NOT_QUEUED`, so that the carrier posts it again."""
    await own_subaccount_and_another(api, account, pool, carrier)
    form = {**receipt("SM" + secrets.token_hex(16), "delivered"), "AccountSid": SUBACCOUNT_SID}
    answers = [
        await answer_when_statement_fails(
            pool,
            functools.partial(
                signed_receipt, api, settings, form, SUBACCOUNT_TOKEN, multipart=multipart
            ),
            table="carrier_accounts",
            statement="SELECT account_id, auth_token FROM carrier_accounts%",
        )
        for multipart in (False, True)
    ]

    assert [(a.status_code, error_code(a)) for a in answers] == [(503, "RECEIPT_NOT_QUEUED")] * 2


async def test_a_callback_naming_no_account_sid_form_reads_no_signing_tokens(
    api: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an `AccountSid` of a SID's form (AC and 32 hex digits) has its subaccount's tokens
    read: a flood of unsigned posts naming anything else reads no database."""
    looked_up: list[str] = []
    real = carrier_signature.signing_tokens

    async def counted(pool: asyncpg.Pool, account_sid: str, **kwargs: bool) -> object:
        looked_up.append(account_sid)
        return await real(pool, account_sid, **kwargs)

    monkeypatch.setattr(carrier_signature, "signing_tokens", counted)
    answers = []
    for account_sid in ("AC" + "x" * 32, "junk", "AC" + "5" * 31, "AC" + "0" * 32):
        form = {"AccountSid": account_sid, "MessageSid": "SM" + "1" * 32, "MessageStatus": "sent"}
        answers.append(await signed_receipt(api, settings, form, "not-the-token"))

    assert [a.status_code for a in answers] == [403] * 4
    assert {error_code(a) for a in answers} == {"INVALID_SIGNATURE"}
    assert looked_up == ["AC" + "0" * 32]
