"""Status webhooks: Standard Webhooks signatures (checked with the `standardwebhooks` package),
secret rotation, retries with backoff, in-order delivery, 410 Gone, no redirects."""

import asyncio
import itertools
import json
import secrets
from collections import Counter
from datetime import datetime

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook
from temporalio.client import Client, WorkflowExecutionStatus

from settings import Settings
from store import events
from tests.support.batches import FINAL, phases, recorded_batch, start_marked_batch
from tests.support.builders import unique_numbers
from tests.support.delivery import own_worker
from tests.support.sending import (
    conversation,
    eventually,
    next_conversation_while_refused,
    received_by,
    send_ok,
)
from tests.support.stack import Account, WebhookReceiver, api_client, rotate
from workflows.contracts import batch_workflow_id


def event_seq(webhook_id: str) -> int:
    return int(webhook_id.rsplit("_", 1)[1])


async def deliveries(api: httpx.AsyncClient, account: Account, batch_id: str) -> list[dict]:
    response = await api.get(f"/v1/sms/batch/{batch_id}/deliveries", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["deliveries"]


async def test_every_post_verifies_with_the_accounts_secret(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    secret = await rotate(api, account)
    run = secrets.token_hex(6)
    batch_id, _ = await start_marked_batch(api, account, webhooks, unique_numbers(2), marker=run)
    await webhooks.wait_for(run, *FINAL)

    posts = webhooks.posts[run]
    for post in posts:
        verified = Webhook(secret).verify(post.body, post.headers)
        assert verified["batch_id"] == batch_id
        assert (
            post.headers["webhook-id"] == f"evt_{batch_id}_{event_seq(post.headers['webhook-id'])}"
        )
    # In order, each once, from the first; a progress event between two phases (recorded when
    # a chunk ends a second or more after the last) has its seq but is not posted.
    seqs = [event_seq(p.headers["webhook-id"]) for p in posts]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    # One post a phase: no progress event is posted.
    events = [json.loads(p.body) for p in posts]
    assert [event["status"] for event in events] == phases(events)

    forged = posts[0].headers | {"webhook-signature": "v1,AAAA"}
    other = Webhook(await rotate(api, account))
    for headers, verifier in ((forged, Webhook(secret)), (posts[0].headers, other)):
        try:
            verifier.verify(posts[0].body, headers)
        except Exception as error:  # the package raises its own WebhookVerificationError
            assert type(error).__name__ == "WebhookVerificationError"
        else:
            raise AssertionError("a wrong signature verified")


async def test_during_a_rotation_both_secrets_verify(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    old = await rotate(api, account)
    new = await rotate(api, account)
    state = (await api.get("/v1/webhooks/secret", headers=account.headers)).json()["data"]
    assert "secret" not in state and old not in str(state) and new not in str(state)
    assert state["previous_valid_until"] is not None

    run = secrets.token_hex(6)
    await start_marked_batch(api, account, webhooks, unique_numbers(2), marker=run)
    await webhooks.wait_for(run, *FINAL)

    post = webhooks.posts[run][0]
    assert len(post.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(post.body, post.headers)["status"] == "validating"


async def test_failed_posts_are_retried_in_order_with_a_stable_id(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    run = secrets.token_hex(6)
    # The first event: a 500, a redirect (not followed, not a success), a 503, then 204.
    webhooks.answers[run] = [500, 302, 503]
    batch_id, _ = await start_marked_batch(api, account, webhooks, unique_numbers(2), marker=run)
    await webhooks.wait_for(run, *FINAL)

    posts = webhooks.posts[run]
    ids = [p.headers["webhook-id"] for p in posts]
    assert ids[:4] == [f"evt_{batch_id}_1"] * 4
    seqs = [event_seq(i) for i in ids]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) - 3
    assert not webhooks.posts["redirected"]

    first = [d for d in await deliveries(api, account, batch_id) if d["event_seq"] == 1]
    assert [(d["attempt"], d["status_code"]) for d in first] == [
        (1, 500),
        (2, 302),
        (3, 503),
        (4, 204),
    ]
    assert all(d["next_retry_at"] for d in first[:3]) and first[3]["next_retry_at"] is None
    gaps = [
        (seconds(b["attempted_at"]) - seconds(a["attempted_at"]))
        for a, b in itertools.pairwise(first)
    ]
    # The test schedule is 0.2 s, 0.5 s, 1 s, each spread by at most 20 %.
    assert gaps[0] >= 0.15 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps


def seconds(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def test_a_failing_receiver_never_holds_the_batch_back(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    run = secrets.token_hex(6)
    webhooks.answers[run] = [500] * 100
    # One retry, 3 s on (a durable timer; the 2-row batch ends well before, on a loaded
    # machine too): the first event takes its whole schedule before the next one goes (each
    # of which then gets one post).
    async with (
        own_worker(temporal, settings, webhook_retry_schedule_seconds=[3.0]) as own,
        api_client(own) as api,
    ):
        batch_id, _ = await start_marked_batch(
            api, account, webhooks, unique_numbers(2), marker=run
        )
        await webhooks.wait_for(run, *FINAL)
        detail = (await api.get(f"/v1/sms/batch/{batch_id}", headers=account.headers)).json()
        attempts = await deliveries(api, account, batch_id)

    assert detail["data"]["status"] == "completed"
    assert {d["attempt"] for d in attempts} == {1, 2}
    # The batch ended while the events before its final one were still being tried: before
    # the last attempt at the one just before the final, which waited for all the others.
    before_final = sorted({d["event_seq"] for d in attempts})[-2]
    last_before = max(
        seconds(d["attempted_at"]) for d in attempts if d["event_seq"] == before_final
    )
    assert seconds(detail["data"]["finished_at"]) < last_before


async def test_after_an_event_is_given_up_on_each_next_one_gets_one_post_until_one_is_delivered(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    # Each event had its whole schedule, one after another: with the default one (about 15 h)
    # a receiver that was down kept the batch's run open some 15 h for each of its events.
    run = secrets.token_hex(6)
    # The first event fails its schedule (a post and two retries); the second fails its one
    # post; the third is delivered; the fourth fails its schedule again.
    webhooks.answers[run] = [500] * 4 + [204] + [500] * 3
    schedule = {"webhook_retry_schedule_seconds": [0.1, 0.1], "webhook_retry_jitter": 0.0}
    async with (
        own_worker(temporal, settings, **schedule) as own,
        api_client(own) as api,
    ):
        batch_id, _ = await start_marked_batch(
            api, account, webhooks, unique_numbers(2), marker=run
        )
        await temporal.get_workflow_handle(batch_workflow_id(batch_id)).result()
        attempts = await deliveries(api, account, batch_id)

    by_event = Counter(d["event_seq"] for d in attempts)
    assert [by_event[seq] for seq in sorted(by_event)] == [3, 1, 1, 3]


async def test_a_give_up_is_remembered_past_an_event_that_is_never_posted(
    pool: asyncpg.Pool, account: Account
) -> None:
    # A progress event (posted only when asked for) recorded after an event was given up on
    # is settled at once, unposted: it hid the give-up, and the next event had a whole
    # schedule again, the batch's run held open some 15 h more for each.
    batch_id = await recorded_batch(pool, account)

    async def append(seq: int, status: str, *, posted: bool) -> None:
        await events.append_event(
            pool,
            batch_id=batch_id,
            account_id=account.account_id,
            seq=seq,
            run_id="run",
            status=status,
            payload={"status": status},
            posted=posted,
        )

    async def attempt(seq: int, number: int, status_code: int) -> None:
        await events.record_delivery(
            pool,
            batch_id=batch_id,
            account_id=account.account_id,
            event_seq=seq,
            url="https://hooks.example/x",
            attempt=number,
            status_code=status_code,
            error=None if status_code == 204 else f"HTTP {status_code}",
            duration_ms=5,
            next_retry_at=None,
        )

    await append(1, "in_progress", posted=True)
    await attempt(1, 3, 500)
    given_up = await events.receiver_failing(pool, batch_id)
    await append(2, "in_progress", posted=False)
    past_progress = await events.receiver_failing(pool, batch_id)
    await append(3, "completed", posted=True)
    await attempt(3, 1, 204)
    delivered = await events.receiver_failing(pool, batch_id)

    assert (given_up, past_progress, delivered) == (True, True, False)


async def test_a_retry_waits_for_the_receivers_retry_after(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    # A 503 (or 429) with `Retry-After: 3` was retried on the schedule alone, 0.1 s here.
    run = secrets.token_hex(6)
    webhooks.answers[run] = [503]
    webhooks.retry_after[run] = "3"
    async with (
        own_worker(temporal, settings, webhook_retry_schedule_seconds=[0.1]) as own,
        api_client(own) as api,
    ):
        batch_id, _ = await start_marked_batch(
            api, account, webhooks, unique_numbers(1), marker=run
        )
        await webhooks.wait_for(run, *FINAL)
        attempts = await deliveries(api, account, batch_id)

    first, second = [d for d in attempts if d["event_seq"] == 1]
    assert (first["status_code"], second["status_code"]) == (503, 204)
    assert seconds(second["attempted_at"]) - seconds(first["attempted_at"]) >= 2.9


async def test_a_pause_that_comes_after_the_final_event_changes_nothing(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, temporal: Client
) -> None:
    run = secrets.token_hex(6)
    webhooks.answers[run] = [500] * 100
    batch_id, _ = await start_marked_batch(api, account, webhooks, unique_numbers(2), marker=run)
    await eventually(
        lambda: api.get(f"/v1/sms/batch/{batch_id}", headers=account.headers),
        lambda r: r.json()["data"]["status"] in FINAL,
    )
    handle = temporal.get_workflow_handle(batch_workflow_id(batch_id))
    # Still open, posting its events: as the `temporal` CLI would, past the API's check.
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    await handle.signal("pause")
    await asyncio.sleep(1)  # a paused event is recorded within milliseconds

    logs = (await api.get(f"/v1/sms/batch/{batch_id}/logs", headers=account.headers)).json()
    await handle.terminate()
    assert [e["status"] for e in logs["data"]["events"]][-1] == "completed"
    detail = (await api.get(f"/v1/sms/batch/{batch_id}", headers=account.headers)).json()
    assert detail["data"]["status"] == "completed"


async def test_410_gone_turns_the_batchs_webhook_off(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    run = secrets.token_hex(6)
    webhooks.answers[run] = [410]
    batch_id, _ = await start_marked_batch(api, account, webhooks, unique_numbers(2), marker=run)
    await eventually(
        lambda: api.get(f"/v1/sms/batch/{batch_id}/logs", headers=account.headers),
        lambda r: any(e["status"] in FINAL for e in r.json()["data"]["events"]),
    )
    await asyncio.sleep(1.5)  # longer than the retry schedule's first steps

    assert len(webhooks.posts[run]) == 1
    recorded = await deliveries(api, account, batch_id)
    assert [(d["event_seq"], d["status_code"], d["next_retry_at"]) for d in recorded] == [
        (1, 410, None)
    ]


@pytest.mark.parametrize("source", ["send", "sender"])
async def test_conversation_events_are_signed_and_retried_like_batch_events(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, source: str
) -> None:
    """A single send's own webhook, or its sender number's: a 500 is retried with the same
    `webhook-id`, and every post verifies with the account's secret."""
    secret = await rotate(api, account)
    run = secrets.token_hex(6)
    sender, user = unique_numbers(2)
    registered = await api.post(
        "/v1/sms/numbers",
        headers=account.headers,
        json={"number": sender, "mps": None, "webhook": webhooks.url(run)},
    )
    webhooks.answers[run] = [500]
    own = {"webhook": webhooks.url(run)} if source == "send" else {}
    sent = await send_ok(api, account, user, agent_number=sender, agent_message="hi", **own)
    await webhooks.wait_for(run, "sent")

    posts = webhooks.posts[run]
    assert registered.status_code == 201, registered.text
    assert [p.answered for p in posts[:2]] == [500, 204]
    assert posts[0].headers["webhook-id"] == posts[1].headers["webhook-id"]
    assert posts[0].body != b"" and len({p.headers["webhook-id"] for p in posts}) == 2
    verified = [Webhook(secret).verify(p.body, p.headers) for p in posts]
    assert [(e["event"], e["status"]) for e in verified] == [
        ("status", "active"),
        ("status", "active"),
        ("message", "sent"),
    ]
    assert {e["conversation_id"] for e in verified} == {sent["conversation_id"]}


async def test_after_a_conversation_event_is_given_up_on_each_next_one_gets_one_post(
    temporal: Client, settings: Settings, account: Account, webhooks: WebhookReceiver
) -> None:
    # As a batch's (test_after_an_event_is_given_up_on_each_...): each event had its whole
    # schedule in turn, about 15 h each by default, the pair's run kept open meanwhile.
    run = secrets.token_hex(6)
    user = unique_numbers(1)[0]
    # `active` fails its schedule (a post and two retries), the first message's event its
    # one post; the second's is delivered; the third's fails its schedule again.
    webhooks.answers[run] = [500] * 4 + [204] + [500] * 3
    schedule = {"webhook_retry_schedule_seconds": [0.1, 0.1], "webhook_retry_jitter": 0.0}
    async with (
        own_worker(temporal, settings, **schedule) as own,
        api_client(own) as api,
    ):
        for n in range(3):
            await send_ok(api, account, user, agent_message=f"m{n}", webhook=webhooks.url(run))
        await eventually(lambda: asyncio.sleep(0, webhooks.posts[run]), lambda p: len(p) >= 8)
        await asyncio.sleep(2)
        ids = [post.headers["webhook-id"] for post in webhooks.posts[run]]

    assert [ids.count(i) for i in dict.fromkeys(ids)] == [3, 1, 1, 3]


async def test_a_failing_conversation_webhook_holds_back_neither_the_next_conversation_nor_order(
    temporal: Client,
    settings: Settings,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
) -> None:
    run = secrets.token_hex(6)
    user = unique_numbers(1)[0]
    # The webhook refuses every post until the test lets it answer; the worker's retry
    # schedule (100 retries a second apart) outlasts the test meanwhile.
    webhooks.answers[run] = [500] * 10_000
    async with (
        own_worker(
            temporal,
            settings,
            webhook_retry_schedule_seconds=[1.0] * 100,
            webhook_retry_jitter=0.0,
        ) as own,
        api_client(own) as api,
    ):
        # The first conversation's first event is refused, and retried meanwhile.
        first, second = await next_conversation_while_refused(api, account, webhooks, run, user)
        # The pair's next conversation goes on at once: its message is sent, and the first
        # conversation is closed, while every post to the webhook is still refused.
        assert [m["body"] for m in await received_by(emulator_url, user, 2)] == ["one", "two"]
        closed = await conversation(api, account, first["conversation_id"])
        assert closed["state"] == "closed"
        assert {p.answered for p in webhooks.posts[run]} == {500}

        webhooks.answers[run].clear()
        ids = await eventually(
            lambda: asyncio.sleep(
                0, [post.headers["webhook-id"] for post in webhooks.delivered(run)]
            ),
            lambda found: len(found) >= 5,
        )

    one, two = first["conversation_id"], second["conversation_id"]
    assert ids == [
        f"conv_{one}_active",
        f"conv_{one}_{first['message_id']}",
        f"conv_{one}_closed",
        f"conv_{two}_active",
        f"conv_{two}_{second['message_id']}",
    ]
