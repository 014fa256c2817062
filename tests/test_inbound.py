"""The carrier's inbound webhook on the real stack: signed replies land in their conversation,
STOP/START change opt-outs, HELP is answered, anything unsigned is refused."""

import secrets
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from twilio.request_validator import RequestValidator

from api.services.stranded_messages import hand_over_stranded
from settings import INBOUND_PATH, Settings
from store import opt_outs
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.sending import (
    SignalAnswerLost,
    conversation,
    conversation_when,
    eventually,
    inbound_form,
    post_inbound,
    received_by,
    send,
    send_ok,
    served_api,
)
from tests.support.stack import Account, WebhookReceiver, api_client, error_code


@pytest.fixture
async def sender(api: httpx.AsyncClient, account: Account) -> str:
    """A sender number of this account alone, so inbound routing has one account to find."""
    number = unique_numbers(1)[0]
    response = await api.post("/v1/sms/numbers", headers=account.headers, json={"number": number})
    assert response.status_code == 201, response.text
    return number


async def conversations_with(api: httpx.AsyncClient, account: Account, user: str) -> list[dict]:
    response = await api.get(
        "/v1/sms/conversations", headers=account.headers, params={"user_number": user}
    )
    return response.json()["data"]["conversations"]


async def webhook_events(webhooks: WebhookReceiver, name: str) -> list[dict]:
    return list(webhooks.received[name])


async def test_an_inbound_reply_lands_in_the_conversation(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    sender: str,
    webhooks: WebhookReceiver,
) -> None:
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)
    data = await send_ok(
        api,
        account,
        user,
        agent_number=sender,
        agent_message="Table for two?",
        webhook=webhooks.url(run),
    )
    form = inbound_form(settings, to=sender, from_=user, body="Yes, at 8")

    response = await post_inbound(api, settings, form)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert "<Response/>" in response.text
    detail = await conversation_when(
        api, account, data["conversation_id"], lambda c: len(c["messages"]) == 2
    )
    reply = detail["messages"][1]
    assert (reply["sender"], reply["body"], reply["status"]) == ("USER", "Yes, at 8", "received")
    assert reply["carrier_sid"] == form["MessageSid"]
    events = await eventually(
        lambda: webhook_events(webhooks, run),
        lambda found: any(e.get("sender") == "USER" for e in found),
    )
    [user_event] = [e for e in events if e.get("sender") == "USER"]
    assert (user_event["body"], user_event["message_id"]) == ("Yes, at 8", reply["message_id"])


async def test_the_carriers_signed_post_over_http_lands_in_the_conversation(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]

    async with served_api(settings) as served, httpx.AsyncClient() as client:
        played = await client.post(
            f"{emulator_url}/_emulator/inbound",
            json={
                "url": served.api_url + INBOUND_PATH,
                "from": user,
                "to": sender,
                "body": "sent from a handset",
            },
        )

    assert played.json()["status"] == 200
    [opened] = await conversations_with(api, account, user)
    detail = await conversation(api, account, opened["conversation_id"])
    [reply] = detail["messages"]
    assert (reply["sender"], reply["body"]) == ("USER", "sent from a handset")
    assert reply["carrier_sid"] == played.json()["message_sid"]


async def test_a_message_from_a_new_user_opens_a_conversation(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str
) -> None:
    user = unique_numbers(1)[0]

    response = await post_inbound(
        api, settings, inbound_form(settings, to=sender, from_=user, body="Hello?")
    )

    assert response.status_code == 200
    [opened] = await conversations_with(api, account, user)
    assert (opened["agent_number"], opened["state"]) == (sender, "active")
    detail = await conversation(api, account, opened["conversation_id"])
    assert [(m["sender"], m["body"]) for m in detail["messages"]] == [("USER", "Hello?")]


async def test_a_message_the_carrier_posts_twice_is_recorded_once(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str
) -> None:
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=sender, from_=user, body="once")

    first = await post_inbound(api, settings, form)
    again = await post_inbound(api, settings, form)

    assert first.status_code == again.status_code == 200
    [opened] = await conversations_with(api, account, user)
    detail = await conversation(api, account, opened["conversation_id"])
    assert [m["body"] for m in detail["messages"]] == ["once"]


async def test_a_captured_post_made_into_another_sid_under_its_signature_is_refused(
    api: httpx.AsyncClient, account: Account, settings: Settings, pool: asyncpg.Pool, sender: str
) -> None:
    """Twilio signs names and values joined: `MessageSid=SM..` and `NumMedia=0` sign as
    `MessageSid=SM..NumMedia0` alone, a new sid for a replay that would apply STOP again."""
    user = unique_numbers(1)[0]
    captured = inbound_form(settings, to=sender, from_=user, body="STOP")
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    signature = validator.compute_signature(settings.api_url + INBOUND_PATH, captured)
    assert (await post_inbound(api, settings, captured, signature=signature)).status_code == 200
    await opt_outs.remove_opt_out(pool, account.account_id, user)
    tampered = {k: v for k, v in captured.items() if k != "NumMedia"}
    tampered["MessageSid"] += "NumMedia0"

    replayed = await post_inbound(api, settings, tampered, signature=signature)

    assert validator.validate(settings.api_url + INBOUND_PATH, tampered, signature)
    assert not await opt_outs.is_opted_out(pool, account.account_id, user)
    assert replayed.status_code == 400
    assert error_code(replayed) == "INVALID_REQUEST"


async def test_a_signed_post_no_column_can_store_is_refused(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str
) -> None:
    # Each was a 500: a `From` too long for the conversations' index, and a NUL in a
    # multipart form, which the input checks (JSON and urlencoded bodies) never read.
    user = unique_numbers(1)[0]
    long_from = inbound_form(settings, to=sender, from_="x" * 4000, body="hi")
    with_nul = inbound_form(settings, to=sender, from_=user, body="a\x00b")
    signature = RequestValidator(settings.twilio_auth_token.get_secret_value()).compute_signature(
        settings.api_url + INBOUND_PATH, with_nul
    )

    too_long = await post_inbound(api, settings, long_from)
    multipart = await api.post(
        INBOUND_PATH,
        data=with_nul,
        files={"f": ("f.txt", b"x")},
        headers={"X-Twilio-Signature": signature},
    )

    assert (too_long.status_code, error_code(too_long)) == (400, "INVALID_REQUEST")
    assert (multipart.status_code, error_code(multipart)) == (400, "INVALID_TEXT")
    assert await conversations_with(api, account, user) == []


async def test_a_whatsapp_reply_is_recorded_on_the_whatsapp_channel(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str
) -> None:
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=f"whatsapp:{sender}", from_=f"whatsapp:{user}", body="hi")

    response = await post_inbound(api, settings, form)

    assert response.status_code == 200
    [opened] = await conversations_with(api, account, user)
    assert (opened["user_number"], opened["channel"]) == (user, "whatsapp")


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "bm90IGEgc2lnbmF0dXJl",
        RequestValidator("another-token").compute_signature("http://x/", {}),
        "other-url",
        "other-token",
    ],
)
async def test_an_unsigned_or_wrongly_signed_post_is_refused(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str, signature: str
) -> None:
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=sender, from_=user, body="forged")
    if signature == "other-url":
        signature = RequestValidator(
            settings.twilio_auth_token.get_secret_value()
        ).compute_signature("http://herald.test" + INBOUND_PATH, form)
    elif signature == "other-token":
        signature = RequestValidator("another-token").compute_signature(
            settings.api_url + INBOUND_PATH, form
        )

    response = await post_inbound(api, settings, form, signature=signature)
    missing = await api.post(INBOUND_PATH, data=form)

    assert response.status_code == missing.status_code == 403
    assert error_code(response) == error_code(missing) == "INVALID_SIGNATURE"
    assert await conversations_with(api, account, user) == []


async def test_a_post_that_cannot_reach_its_conversation_can_be_retried(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    sender: str,
    emulator_url: str,
    temporal: Client,
) -> None:
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=sender, from_=user, body="HELP")
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        failed = await post_inbound(unreachable, settings, form)
    retried = await post_inbound(api, settings, form)

    assert failed.status_code == 503
    assert error_code(failed) == "TEMPORAL_UNAVAILABLE"
    assert retried.status_code == 200
    opened, detail = await help_answered(api, account, settings, emulator_url, user)
    assert [(m["sender"], m["body"]) for m in detail["messages"]] == [
        ("USER", "HELP"),
        ("AGENT", settings.help_reply),
    ]
    # The message and its answer reach the workflow in one signal: no post can hand over the
    # one without the other.
    assert await signals_to(temporal, opened["workflow_id"]) == 1


async def test_a_post_that_could_not_reach_its_conversation_is_handed_over_without_a_repeat(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    sender: str,
    emulator_url: str,
    temporal: Client,
    pool: asyncpg.Pool,
) -> None:
    # A carrier does not post again after a 5xx: the HELP asked for was never answered, and
    # the user's message never reached its conversation.
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=sender, from_=user, body="HELP")
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    async with api_client(down) as unreachable:
        failed = await post_inbound(unreachable, settings, form)
    [stranded] = await conversations_with(api, account, user)

    await hand_over_stranded(pool, temporal, settings, inbound_after=timedelta(0))
    opened, detail = await help_answered(api, account, settings, emulator_url, user)
    await hand_over_stranded(pool, temporal, settings, inbound_after=timedelta(0))

    assert failed.status_code == 503
    assert opened["conversation_id"] == stranded["conversation_id"]
    assert [(m["sender"], m["body"]) for m in detail["messages"]] == [
        ("USER", "HELP"),
        ("AGENT", settings.help_reply),
    ]
    # Handed over once (the second sweep leaves it), the message and its answer in one signal.
    assert await signals_to(temporal, opened["workflow_id"]) == 1


async def help_answered(
    api: httpx.AsyncClient, account: Account, settings: Settings, emulator_url: str, user: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user's conversation, and its detail once its last message is sent: the HELP
    answer, which the user received, once."""
    [answer] = await received_by(emulator_url, user, 1)
    assert answer["body"] == settings.help_reply
    [opened] = await conversations_with(api, account, user)
    detail = await conversation_when(
        api, account, opened["conversation_id"], lambda c: c["messages"][-1]["status"] == "sent"
    )
    return opened, detail


async def signals_to(temporal: Client, workflow_id: str) -> int:
    """How many signals the workflow's history holds."""
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    return sum(e.HasField("workflow_execution_signaled_event_attributes") for e in history.events)


class _Killed(Exception):
    """The API process dying between the commit of an inbound message and its signal."""


async def test_a_post_whose_process_died_before_the_signal_is_signalled_on_the_retry(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    sender: str,
    emulator_url: str,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message and its HELP answer were committed, the signal never sent (no 2xx, so the
    carrier posts again): the retry hands them to the conversation, and a later repeat does
    not hand them over again."""
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=sender, from_=user, body="HELP")

    async def dies(*args: object, **kwargs: object) -> None:
        raise _Killed

    with monkeypatch.context() as patched:
        patched.setattr("api.services.inbound.signal_conversation", dies)
        died = await post_inbound(api, settings, form)
    retried = await post_inbound(api, settings, form)

    assert died.status_code == 500
    assert retried.status_code == 200
    opened, detail = await help_answered(api, account, settings, emulator_url, user)
    assert [(m["sender"], m["kind"]) for m in detail["messages"]] == [
        ("USER", "message"),
        ("AGENT", "help"),
    ]
    repeated = await post_inbound(api, settings, form)
    assert repeated.status_code == 200
    assert await signals_to(temporal, opened["workflow_id"]) == 1
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_a_post_whose_signal_arrived_but_whose_answer_was_lost_is_answered_once(
    account: Account,
    settings: Settings,
    sender: str,
    pool: asyncpg.Pool,
    emulator_url: str,
    temporal: Client,
) -> None:
    """The signal of a HELP reached the workflow, which began sending the answer, but its
    answer was lost (503): the carrier's repeat hands the same two messages over, so the user
    gets one answer and the conversation holds the message once."""
    user = unique_numbers(1)[0]
    form = inbound_form(settings, to=sender, from_=user, body="HELP")
    answer_lost = api_client(
        settings,
        temporal_as=lambda client: SignalAnswerLost(client, pool, lambda s: s.answer_id),
    )
    async with answer_lost as lost:
        failed = await post_inbound(lost, settings, form)
    async with api_client(settings) as api:
        retried = await post_inbound(api, settings, form)
        opened, detail = await help_answered(api, account, settings, emulator_url, user)

    assert failed.status_code == 503
    assert retried.status_code == 200
    assert [(m["sender"], m["kind"]) for m in detail["messages"]] == [
        ("USER", "message"),
        ("AGENT", "help"),
    ]
    assert await signals_to(temporal, opened["workflow_id"]) == 2
    assert len(await emulator_messages(emulator_url, to=user)) == 1


async def test_inbound_to_an_unregistered_number_is_not_found(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    nobody, user = unique_numbers(2)

    response = await post_inbound(
        api, settings, inbound_form(settings, to=nobody, from_=user, body="hello")
    )

    assert response.status_code == 404
    assert error_code(response) == "AGENT_NUMBER_NOT_FOUND"


async def test_stop_opts_out_and_start_opts_back_in(
    api: httpx.AsyncClient, account: Account, settings: Settings, sender: str, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    first = await send_ok(api, account, user, agent_number=sender, agent_message="Deal of the day")
    await received_by(emulator_url, user, 1)

    await post_inbound(api, settings, inbound_form(settings, to=sender, from_=user, body=" Stop "))
    after_stop = await send(api, account, user, agent_number=sender, agent_message="ignored")
    # The carrier has the first message before the worker has its answer: `sent` comes after.
    stopped = await conversation_when(
        api,
        account,
        first["conversation_id"],
        lambda c: len(c["messages"]) == 2 and c["messages"][0]["status"] != "sending",
    )
    await post_inbound(api, settings, inbound_form(settings, to=sender, from_=user, body="start"))
    await send_ok(api, account, user, agent_number=sender, agent_message="Welcome back")

    received = await received_by(emulator_url, user, 2)
    assert [m["body"] for m in received] == ["Deal of the day", "Welcome back"]
    assert after_stop.status_code == 409, after_stop.text
    assert error_code(after_stop) == "RECIPIENT_OPTED_OUT"
    assert [(m["sender"], m["body"], m["status"]) for m in stopped["messages"]] == [
        ("AGENT", "Deal of the day", "sent"),
        ("USER", " Stop ", "received"),
    ]


@pytest.mark.parametrize(
    ("keyword", "opted_out"),
    [
        ("STOP", True),
        ("stopall", True),
        ("  Unsubscribe\n", True),
        ("cancel", True),
        ("End", True),
        ("QUIT", True),
        # Twilio's newer defaults: it blocked that one sender, the account's others sent on.
        ("revoke", True),
        ("OptOut", True),
        ("stop please", False),
        ("START", False),
        ("yes", False),
        ("Unstop", False),
    ],
)
async def test_opt_out_keywords(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    pool: asyncpg.Pool,
    sender: str,
    keyword: str,
    opted_out: bool,
) -> None:
    user = unique_numbers(1)[0]
    if keyword.strip().upper() in ("START", "YES", "UNSTOP"):
        await opt_outs.add_opt_out(pool, account.account_id, user, source="api")

    response = await post_inbound(
        api, settings, inbound_form(settings, to=sender, from_=user, body=keyword)
    )

    assert response.status_code == 200
    assert await opt_outs.is_opted_out(pool, account.account_id, user) is opted_out


@pytest.mark.parametrize("keyword", ["help", "Info"])
async def test_help_is_answered_with_the_help_reply(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    sender: str,
    emulator_url: str,
    keyword: str,
) -> None:
    user = unique_numbers(1)[0]

    await post_inbound(api, settings, inbound_form(settings, to=sender, from_=user, body=keyword))

    [answer] = await received_by(emulator_url, user, 1)
    assert (answer["from"], answer["body"]) == (sender, settings.help_reply)
    [opened] = await conversations_with(api, account, user)
    detail = await conversation_when(
        api, account, opened["conversation_id"], lambda c: c["messages"][-1]["status"] == "sent"
    )
    assert [(m["sender"], m["kind"]) for m in detail["messages"]] == [
        ("USER", "message"),
        ("AGENT", "help"),
    ]
    assert len(await emulator_messages(emulator_url, to=user)) == 1


@pytest.mark.parametrize(("replayed", "later"), [("START", "STOP"), ("STOP", "START")])
async def test_a_replayed_keyword_changes_nothing_after_a_later_one(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    pool: asyncpg.Pool,
    sender: str,
    replayed: str,
    later: str,
) -> None:
    """A correctly signed post of a MessageSid seen before, replayed after the user changed
    their mind, must not change it back."""
    user = unique_numbers(1)[0]
    await opt_outs.add_opt_out(pool, account.account_id, user, source="api")
    if replayed == "STOP":
        await opt_outs.remove_opt_out(pool, account.account_id, user)
    first = inbound_form(settings, to=sender, from_=user, body=replayed)
    await post_inbound(api, settings, first)
    await post_inbound(api, settings, inbound_form(settings, to=sender, from_=user, body=later))

    replay = await post_inbound(api, settings, first)

    assert replay.status_code == 200
    assert await opt_outs.is_opted_out(pool, account.account_id, user) is (later == "STOP")
    [opened] = await conversations_with(api, account, user)
    detail = await conversation(api, account, opened["conversation_id"])
    assert [m["body"] for m in detail["messages"]] == [replayed, later]


async def test_a_retried_post_that_could_not_reach_its_conversation_changes_no_opt_out_again(
    api: httpx.AsyncClient, account: Account, settings: Settings, pool: asyncpg.Pool, sender: str
) -> None:
    """START could not be signalled (503), the user sent STOP, then the carrier retried the
    START: the retry lands in the conversation, but the user stays opted out."""
    user = unique_numbers(1)[0]
    await opt_outs.add_opt_out(pool, account.account_id, user, source="api")
    start = inbound_form(settings, to=sender, from_=user, body="START")
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        failed = await post_inbound(unreachable, settings, start)
    opted_in = not await opt_outs.is_opted_out(pool, account.account_id, user)
    await post_inbound(api, settings, inbound_form(settings, to=sender, from_=user, body="STOP"))
    retried = await post_inbound(api, settings, start)

    assert failed.status_code == 503
    assert opted_in
    assert retried.status_code == 200
    assert await opt_outs.is_opted_out(pool, account.account_id, user)
    [opened] = await conversations_with(api, account, user)
    detail = await conversation(api, account, opened["conversation_id"])
    assert sorted(m["body"] for m in detail["messages"]) == ["START", "STOP"]
