"""Short links (`shortenUrls`, `shorten_urls`) on the real stack: the carrier gets a short link
in place of each URL, one per message and URL; following it redirects and counts the click,
which shows on the message, in the CSV export and as a signed `click` event."""

import asyncio
import csv
import io
import re
import secrets
from datetime import datetime

import httpx
from standardwebhooks import Webhook

from activities.recipients.links import (
    CODE_CHARS,
    CODES_AT_ONCE,
    Codes,
    ShortLink,
    is_code,
    shorten,
)
from settings import Settings
from tests.support.batches import FINAL, run_batch, start_marked_batch, wait_for_status
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.stack import Account, WebhookReceiver, api_client, rotate

USER_AGENT = "Mozilla/5.0 (Linux; Android 14) TestPhone/1.0"


def short_link(settings: Settings) -> re.Pattern[str]:
    return re.compile(re.escape(settings.api_url) + r"/s/([A-Za-z0-9_-]+)")


async def ledger(api: httpx.AsyncClient, account: Account, batch_id: str) -> list[dict]:
    response = await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["messages"]


async def test_a_mobivate_batch_sends_short_links_whose_clicks_are_counted_and_posted(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    emulator_url: str,
    webhooks: WebhookReceiver,
) -> None:
    secret = await rotate(api, account)
    run = secrets.token_hex(6)
    numbers = unique_numbers(2)
    body = {
        "recipients": [
            {"recipient": numbers[0].removeprefix("+"), "reference": "r1", "meta": {"ID": "7"}},
            {"recipient": numbers[1].removeprefix("+"), "reference": "r2", "meta": {"ID": "8"}},
        ],
        "text": "Offer {{ID}}: https://example.com/offer?id={{ID}}. Or http://example.org/x",
        "originator": account.agent_number,
        "shortenUrls": True,
        "statusWebhook": webhooks.url(run),
    }

    response = await api.post(
        "/send/batch", headers={"Authorization": f"Bearer {account.key}"}, json=body
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["record"]["id"]
    assert (await wait_for_status(api, account, batch_id, *FINAL))["status"] == "completed"
    received = [m for n in numbers for m in await emulator_messages(emulator_url, to=n)]
    assert len(received) == 2
    codes = []
    for message, id_ in zip(received, ("7", "8"), strict=True):
        assert "example." not in message["body"]
        found = short_link(settings).findall(message["body"])
        assert len(found) == 2 and all(len(code) == CODE_CHARS for code in found)
        base = settings.api_url + "/s/"
        assert message["body"] == (f"Offer {id_}: {base}{found[0]}. Or {base}{found[1]}")
        codes += found
    assert len(set(codes)) == 4

    # The batch's own events are all delivered; the first click event posted is refused once.
    await webhooks.wait_for(run, *FINAL)
    webhooks.answers[run] = [500]
    peeked = [await api.head(f"/s/{code}", headers={"user-agent": "preview"}) for code in codes]
    first = await api.get(f"/s/{codes[0]}", headers={"user-agent": USER_AGENT})
    again = await api.get(f"/s/{codes[0]}", headers={"user-agent": "another"})
    other = await api.get(f"/s/{codes[1]}", headers={"user-agent": "another"})

    # A link preview's HEAD is answered as a GET, and counts no click.
    assert [(p.status_code, p.headers["location"]) for p in peeked] == [
        (302, "https://example.com/offer?id=7"),
        (302, "http://example.org/x"),
        (302, "https://example.com/offer?id=8"),
        (302, "http://example.org/x"),
    ]
    assert first.status_code == again.status_code == other.status_code == 302
    assert first.headers["location"] == again.headers["location"]
    assert first.headers["location"] == "https://example.com/offer?id=7"
    assert other.headers["location"] == "http://example.org/x"
    assert first.headers["cache-control"] == "no-store"
    rows = await ledger(api, account, batch_id)
    assert [(r["reference"], r["clicks"]) for r in rows] == [("r1", 3), ("r2", 0)]
    assert rows[0]["first_clicked_at"] is not None and rows[1]["first_clicked_at"] is None
    assert rows[0]["body"] == received[0]["body"]

    export = await api.get(
        f"/v1/sms/batch/{batch_id}/messages", headers=account.headers, params={"format": "csv"}
    )
    assert export.status_code == 200, export.text
    table = list(csv.DictReader(io.StringIO(export.text.removeprefix("\ufeff"))))
    assert [(r["reference"], r["clicks"]) for r in table] == [("r1", "3"), ("r2", "0")]
    exported = datetime.fromisoformat(table[0]["first_clicked_at"])
    assert exported == datetime.fromisoformat(rows[0]["first_clicked_at"])
    assert table[1]["first_clicked_at"] == ""

    # One event per link, on its first click: two links of the first message were clicked,
    # and the refused post was tried again with the same id.
    events = await webhooks.wait_for(run, "click", times=3)
    clicks = [(e, p) for e, p in zip(events, webhooks.posts[run], strict=True)]
    clicks = [(e, p) for e, p in clicks if e["status"] == "click"]
    assert [p.answered for _, p in clicks] == [500, 204, 204]
    ids = [p.headers["webhook-id"] for _, p in clicks]
    assert ids[0] in ids[1:] and sorted(set(ids)) == sorted(f"click_{c}" for c in codes[:2])
    assert sorted(e["url"] for e, p in clicks if p.answered == 204) == [
        "http://example.org/x",
        "https://example.com/offer?id=7",
    ]
    for event, post in clicks:
        assert Webhook(secret).verify(post.body, post.headers) == event
        assert event["batch_id"] == batch_id
        assert event["workflow_id"] == f"sms-batch-{batch_id}"
        assert (event["seq"], event["to_number"], event["reference"]) == (0, numbers[0], "r1")
    by_url = {event["url"]: event for event, _ in clicks}
    assert by_url["https://example.com/offer?id=7"]["user_agent"] == USER_AGENT
    assert by_url["http://example.org/x"]["user_agent"] == "another"


async def test_a_mailing_lists_contacts_get_short_links_of_their_own_urls(
    api: httpx.AsyncClient, account: Account, settings: Settings, emulator_url: str
) -> None:
    numbers = unique_numbers(2)
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "links"})
    assert created.status_code == 201, created.text
    list_id = created.json()["data"]["id"]
    contacts = [
        {"phone_number": number, "PAGE": f"https://example.com/p/{index}"}
        for index, number in enumerate(numbers)
    ]
    added = await api.post(
        f"/v1/lists/{list_id}/contacts", headers=account.headers, json={"contacts": contacts}
    )
    assert added.status_code == 200, added.text

    response = await api.post(
        "/send/batch",
        headers={"Authorization": f"Bearer {account.key}"},
        json={
            "recipients": [{"recipient": list_id, "meta": {"type": "mailinglist"}}],
            "text": "Your page: {{PAGE}}",
            "originator": account.agent_number,
            "shortenUrls": True,
        },
    )

    assert response.status_code == 200, response.text
    batch_id = response.json()["record"]["id"]
    assert (await wait_for_status(api, account, batch_id, *FINAL))["status"] == "completed"
    for index, number in enumerate(numbers):
        [sent] = await emulator_messages(emulator_url, to=number)
        found = short_link(settings).fullmatch(sent["body"].removeprefix("Your page: "))
        assert found is not None, sent["body"]
        followed = await api.get(f"/s/{found[1]}")
        assert followed.headers["location"] == f"https://example.com/p/{index}"


async def test_a_first_click_while_temporal_is_down_is_posted_on_a_later_click(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    emulator_url: str,
    webhooks: WebhookReceiver,
) -> None:
    [number] = unique_numbers(1)
    file_id, marker = await start_marked_batch(
        api, account, webhooks, [number], message="Read https://example.com/a", shorten_urls=True
    )
    await webhooks.wait_for(marker, *FINAL)
    [sent] = await emulator_messages(emulator_url, to=number)
    found = short_link(settings).fullmatch(sent["body"].removeprefix("Read "))
    assert found is not None, sent["body"]
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        first = await unreachable.get(f"/s/{found[1]}", headers={"user-agent": USER_AGENT})
    second = await api.get(f"/s/{found[1]}", headers={"user-agent": "later"})
    [event] = [e for e in await webhooks.wait_for(marker, "click") if e["status"] == "click"]
    third = await api.get(f"/s/{found[1]}")
    await asyncio.sleep(1)

    assert first.status_code == second.status_code == third.status_code == 302
    # The first click's event, once: a click after it started the event starts nothing.
    assert [e for e in webhooks.received[marker] if e["status"] == "click"] == [event]
    assert (event["batch_id"], event["url"]) == (file_id, "https://example.com/a")
    assert event["user_agent"] == USER_AGENT
    assert [r["clicks"] for r in await ledger(api, account, file_id)] == [3]


async def test_an_unknown_code_is_a_plain_404_page(api: httpx.AsyncClient) -> None:
    # A code, or a path under /s/ that no route takes (no code, more than one segment).
    for code in ("A" * CODE_CHARS, "short", "not a code at all", "", "abc/x"):
        response = await api.get(f"/s/{code}")
        head = await api.head(f"/s/{code}")

        assert response.status_code == head.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert head.headers["content-type"] == response.headers["content-type"]
        assert "Link not found" in response.text


async def test_herald_batches_shorten_too_and_count_segments_on_the_short_text(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    emulator_url: str,
    webhooks: WebhookReceiver,
) -> None:
    # 200 characters of URL: two segments as written, one once shortened.
    url = "https://example.com/" + "a" * 180
    message = f"Read {url}"
    numbers = unique_numbers(3)
    request = {
        "recipients": [{"phone_number": n} for n in numbers],
        "global": {"agent_number": account.agent_number, "agent_message": message},
        "shorten_urls": True,
    }

    dry = await api.post("/v1/sms/batch", headers=account.headers, json=request | {"dry_run": True})
    file_id, _ = await run_batch(
        api, account, webhooks, numbers, message=message, shorten_urls=True
    )

    assert dry.status_code == 200, dry.text
    assert dry.json()["data"]["segments_total"] == 3
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    assert batch["segments_total"] == 3
    bodies = [m["body"] for n in numbers for m in await emulator_messages(emulator_url, to=n)]
    codes = [short_link(settings).fullmatch(body.removeprefix("Read ")) for body in bodies]
    assert all(codes) and len({c[1] for c in codes if c}) == 3
    assert [r["segments"] for r in await ledger(api, account, file_id)] == [1, 1, 1]
    followed = await api.get(f"/s/{codes[0][1] if codes[0] else ''}")
    assert followed.headers["location"] == url


def test_each_url_gets_its_own_code_and_the_sentence_keeps_its_punctuation() -> None:
    made = iter(["c1", "c2", "c3"])

    text, links = shorten(
        "See (https://a.example/p?q=1), https://a.example/p?q=1! and https://w.example/A_(b).",
        "https://h.example/",
        lambda: next(made),
    )

    assert (
        text == "See (https://h.example/s/c1), https://h.example/s/c2! and https://h.example/s/c3."
    )
    assert links == [
        ShortLink("c1", "https://a.example/p?q=1"),
        ShortLink("c2", "https://a.example/p?q=1"),
        ShortLink("c3", "https://w.example/A_(b)"),
    ]
    assert shorten("no links here: ftp://x and http://", "https://h.example", Codes()) == (
        "no links here: ftp://x and http://",
        [],
    )


def test_codes_are_random_url_safe_and_of_one_length() -> None:
    codes = Codes()

    made = [codes() for _ in range(3 * CODES_AT_ONCE)]

    assert len(set(made)) == len(made)
    assert all(is_code(code) and len(code) == CODE_CHARS for code in made)
