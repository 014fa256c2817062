"""Silence timers of conversations on the real stack: warning, timeout, resets, and durability
across a worker restart (Temporal keeps the timers, not the worker)."""

import asyncio
import dataclasses
import secrets
import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client

from api.conversation_models import SendRequest, SilenceTimerFields
from settings import Settings
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.conversations import TIMERS, timed_out
from tests.support.delivery import own_worker
from tests.support.sending import (
    conversation,
    conversation_when,
    eventually,
    inbound_form,
    post_inbound,
    received_by,
    send,
    send_ok,
)
from tests.support.stack import Account, Configure, WebhookReceiver, api_client, error_code
from worker import herald_worker
from workflows.contracts import SilenceTimers


def arrival(message: dict[str, Any]) -> float:
    return datetime.fromisoformat(message["received_at"]).timestamp()


async def test_silence_sends_the_warning_then_the_timeout_and_ends_the_conversation(
    api: httpx.AsyncClient, account: Account, emulator_url: str, webhooks: WebhookReceiver
) -> None:
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)

    data = await send_ok(
        api,
        account,
        user,
        agent_message="Your order is ready",
        webhook=webhooks.url(run),
        metadata={"run": run},
        **TIMERS,
    )

    first, warning, timeout = await received_by(emulator_url, user, 3)
    assert [first["body"], warning["body"], timeout["body"]] == [
        "Your order is ready",
        TIMERS["warning_message"],
        TIMERS["timeout_message"],
    ]
    assert 2 <= arrival(warning) - arrival(first) < 4
    assert 4 <= arrival(timeout) - arrival(first) < 8
    detail = await conversation_when(api, account, data["conversation_id"], timed_out)
    assert detail["timed_out_at"] is not None and detail["ended_at"] is not None
    assert [(m["sender"], m["kind"], m["status"]) for m in detail["messages"]] == [
        ("AGENT", "message", "sent"),
        ("AGENT", "warning", "sent"),
        ("AGENT", "timeout", "sent"),
    ]
    events = await webhooks.wait_for(run, "timeout")
    assert [(e["event"], e.get("kind"), e["status"]) for e in events] == [
        ("status", None, "active"),
        ("message", "message", "sent"),
        ("message", "warning", "sent"),
        ("message", "timeout", "sent"),
        ("status", None, "timeout"),
    ]
    assert events[-1]["timed_out_at"] is not None
    assert all(e["metadata"] == {"run": run} for e in events)
    assert all(e["conversation_id"] == data["conversation_id"] for e in events)


async def test_a_conversation_closed_while_its_timeout_is_sent_ends_closed_in_its_events_too(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    carrier: Configure,
    pool: asyncpg.Pool,
) -> None:
    # Its `timeout` event was posted (with no timed_out_at) while the conversation stayed
    # `closed`, and no `closed` event ever came.
    user = unique_numbers(1)[0]
    run = secrets.token_hex(6)
    # Long enough that the steps below fit in one send, on a loaded machine too.
    await carrier(latency_ms=3000)
    data = await send_ok(
        api, account, user, agent_message="Your order is ready", webhook=webhooks.url(run), **TIMERS
    )
    await eventually(
        lambda: pool.fetchval(
            "SELECT status FROM conversation_messages WHERE conversation_id = $1"
            " AND kind = 'timeout'",
            uuid.UUID(data["conversation_id"]),
        ),
        lambda status: status == "sending",
    )

    await send_ok(api, account, user, agent_message="A new matter", new_conversation=True)
    events = await webhooks.wait_for(run, "closed", "timeout")
    detail = await conversation(api, account, data["conversation_id"])

    assert (detail["state"], detail["timed_out_at"]) == ("closed", None)
    assert [(e["event"], e["status"]) for e in events][-2:] == [
        ("message", "sent"),
        ("status", "closed"),
    ]


async def test_a_reply_stops_the_silence_clock_until_the_agent_writes_again(
    api: httpx.AsyncClient, account: Account, settings: Settings, emulator_url: str
) -> None:
    """The timers measure the user's silence after an agent message (Bland's `time_out`): a
    user who answered gets no warning and no timeout while the agent has not written again;
    the agent's next message starts the clock."""
    user = unique_numbers(1)[0]
    data = await send_ok(api, account, user, agent_message="Shall I book it?", **TIMERS)
    await received_by(emulator_url, user, 1)

    reply = await post_inbound(
        api, settings, inbound_form(settings, to=account.agent_number, from_=user, body="Yes")
    )
    # Past both timers, counted from the agent's message or from the reply.
    await asyncio.sleep(TIMERS["time_out"] + 1.5)
    quiet = await emulator_messages(emulator_url, to=user)
    waiting = await conversation(api, account, data["conversation_id"])
    await send_ok(api, account, user, agent_message="Booked.")

    assert reply.status_code == 200, reply.text
    assert [m["body"] for m in quiet] == ["Shall I book it?"]
    assert waiting["state"] == "active"
    _, booked, warning, timeout = await received_by(emulator_url, user, 4)
    assert arrival(warning) - arrival(booked) >= TIMERS["warning_time"]
    assert arrival(timeout) - arrival(booked) >= TIMERS["time_out"]
    detail = await conversation_when(api, account, data["conversation_id"], timed_out)
    assert [(m["sender"], m["kind"]) for m in detail["messages"]] == [
        ("AGENT", "message"),
        ("USER", "message"),
        ("AGENT", "message"),
        ("AGENT", "warning"),
        ("AGENT", "timeout"),
    ]


async def test_timers_persist_until_another_send_replaces_them(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    user = unique_numbers(1)[0]
    # A warning late enough that the second send comes before it, on a loaded machine too.
    timers = {**TIMERS, "warning_time": 5, "time_out": 7}
    await send_ok(api, account, user, agent_message="first", **timers)
    [first] = await received_by(emulator_url, user, 1)
    await asyncio.sleep(1)

    data = await send_ok(api, account, user, agent_message="second")

    _, second, warning, timeout = await received_by(emulator_url, user, 4)
    assert [second["body"], warning["body"], timeout["body"]] == [
        "second",
        TIMERS["warning_message"],
        TIMERS["timeout_message"],
    ]
    assert arrival(warning) - arrival(second) >= 5
    assert arrival(warning) - arrival(first) >= 6
    assert arrival(timeout) - arrival(second) >= 7
    detail = await conversation_when(api, account, data["conversation_id"], timed_out)
    assert (detail["warning_time"], detail["time_out"]) == (5, 7)


async def test_a_send_that_sets_only_the_warning_keeps_the_conversations_timeout(
    api: httpx.AsyncClient, account: Account, emulator_url: str
) -> None:
    # Bland's fields override one by one: `time_out` persists until a send replaces it.
    user = unique_numbers(1)[0]
    # The kept warning far enough from the new one that no loaded machine mixes them up.
    timers = {**TIMERS, "warning_time": 4, "time_out": 6}
    await send_ok(api, account, user, agent_message="first", **timers)
    data = await send_ok(
        api, account, user, agent_message="second", warning_time=1, warning_message="Still here?"
    )

    _, second, warning, timeout = await received_by(emulator_url, user, 4)
    assert [warning["body"], timeout["body"]] == ["Still here?", TIMERS["timeout_message"]]
    assert 1 <= arrival(warning) - arrival(second) < 4
    assert arrival(timeout) - arrival(second) >= 6
    detail = await conversation_when(api, account, data["conversation_id"], timed_out)
    assert {name: detail[name] for name in TIMERS} == {
        **timers,
        "warning_time": 1,
        "warning_message": "Still here?",
    }


async def test_timer_fields_are_checked_with_those_the_conversation_keeps(
    api: httpx.AsyncClient, account: Account
) -> None:
    user = unique_numbers(1)[0]
    timers = {"warning_time": 300, "warning_message": "w", "time_out": 600}
    data = await send_ok(api, account, user, agent_message="first", **timers)

    # Under the kept warning: refused, and the conversation is as it was.
    shorter = await send(api, account, user, agent_message="second", time_out=200)
    # Its time is the conversation's: taken.
    await send_ok(api, account, user, agent_message="third", timeout_message="Bye")
    # A warning time with no message, here or kept: refused.
    fresh = unique_numbers(1)[0]
    bare = await send(api, account, fresh, agent_message="first", warning_time=5)

    assert (shorter.status_code, error_code(shorter)) == (400, "INVALID_TIMEOUT_CONFIG")
    assert (bare.status_code, error_code(bare)) == (400, "INVALID_TIMEOUT_CONFIG")
    detail = await conversation(api, account, data["conversation_id"])
    assert {name: detail[name] for name in TIMERS} == {**timers, "timeout_message": "Bye"}
    assert [m["body"] for m in detail["messages"]] == ["first", "third"]


async def test_the_timers_fire_after_a_worker_restart(
    settings: Settings, temporal: Client, account: Account, emulator_url: str
) -> None:
    own_queue = settings.model_copy(update={"task_queue": f"herald-restart-{secrets.token_hex(4)}"})
    user = unique_numbers(1)[0]
    # A warning late enough that the first worker has stopped by then, on a loaded machine too.
    timers = {**TIMERS, "warning_time": 4, "time_out": 6}
    async with api_client(own_queue) as api:
        async with herald_worker(temporal, own_queue) as first_worker, first_worker:
            data = await send_ok(api, account, user, agent_message="See you soon", **timers)
            await received_by(emulator_url, user, 1)
        stopped_at = time.time()
        # Both timers come due while no worker runs.
        await asyncio.sleep(7)
        assert len(await emulator_messages(emulator_url, to=user)) == 1

        async with herald_worker(temporal, own_queue) as second_worker, second_worker:
            _, warning, timeout = await received_by(emulator_url, user, 3)
            detail = await conversation_when(api, account, data["conversation_id"], timed_out)

    assert [warning["body"], timeout["body"]] == [
        TIMERS["warning_message"],
        TIMERS["timeout_message"],
    ]
    assert arrival(warning) >= stopped_at + 7
    assert [m["kind"] for m in detail["messages"]] == ["message", "warning", "timeout"]


def test_the_api_carries_every_timer_setting_and_no_other() -> None:
    names = [field.name for field in dataclasses.fields(SilenceTimers)]
    assert list(SilenceTimerFields.model_fields) == names
    body = SendRequest.model_validate({"user_number": "+1", "agent_number": "+2", **TIMERS})
    assert body.silence_timers() == SilenceTimers(**TIMERS)


async def test_a_reply_while_its_agent_message_is_reconciled_stops_the_clock(
    temporal: Client,
    settings: Settings,
    account: Account,
    emulator_url: str,
    carrier: Configure,
) -> None:
    """The carrier took the agent's message but answered past the timeout: the send is
    reconciled (a wait, then the carrier's list) before it is recorded `sent`. The user's
    reply, which came meanwhile, answers that message: no warning, no timeout. The clock
    started when the message was recorded, after the reply, which was taken for one to an
    earlier message, and the user who had answered got both."""
    user = unique_numbers(1)[0]
    await carrier(latency_ms=1500)
    async with (
        own_worker(
            temporal, settings, carrier_timeout_seconds=1.0, reconcile_margin_seconds=2.0
        ) as own,
        api_client(own) as api,
    ):
        data = await send_ok(api, account, user, agent_message="Shall I book it?", **TIMERS)
        # The carrier has it (its answer lost); the send is still being reconciled.
        await received_by(emulator_url, user, 1)
        reply = await post_inbound(
            api, own, inbound_form(own, to=account.agent_number, from_=user, body="Yes")
        )
        await carrier(latency_ms=0)
        await conversation_when(
            api,
            account,
            data["conversation_id"],
            lambda c: [m["status"] for m in c["messages"]][:1] == ["sent"],
        )
        # Past both timers, counted from the agent's message or from its record.
        await asyncio.sleep(TIMERS["time_out"] + 3)
        detail = await conversation(api, account, data["conversation_id"])

    assert reply.status_code == 200, reply.text
    assert [m["body"] for m in await emulator_messages(emulator_url, to=user)] == [
        "Shall I book it?"
    ]
    assert detail["state"] == "active"
    assert [(m["sender"], m["kind"]) for m in detail["messages"]] == [
        ("AGENT", "message"),
        ("USER", "message"),
    ]
