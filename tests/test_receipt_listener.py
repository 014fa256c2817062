"""The receipts listener (api/receipt_listener.py): the carrier's status callbacks on a port
of their own, served by the API process beside the API. Each test's API listens on a real
socket and is posted to over TCP, as the carrier posts: keep-alive, and pipelined requests
answered in order; a receipt is answered 204 only once it is queued."""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from api import receipt_listener
from api.receipt_listener import MAX_HEAD_BYTES
from deploy.local.processes import free_port
from settings import Settings
from store import receipts
from tests.support.delivery import (
    answer_when_its_insert_fails,
    ledger_rows,
    receipt,
    receipts_applied,
    sent_batch,
)
from tests.support.stack import (
    AUTH_TOKEN,
    SUBACCOUNT_SID,
    SUBACCOUNT_TOKEN,
    Account,
    Configure,
    WebhookReceiver,
    api_client,
    error_code,
    set_own,
)

STATUS_PATH = "/v1/webhooks/twilio/status"


@pytest.fixture
async def listener(settings: Settings, worker: None) -> AsyncIterator[Settings]:
    """An API process of the test's own whose settings name a receipts port: it serves the
    listener there while it runs (the settings say where, and what URL the carrier signs)."""
    own = settings.model_copy(update={"receipts_port": free_port()})
    async with api_client(own):
        yield own


def signed(settings: Settings, form: dict[str, str], url: str | None = None) -> dict[str, str]:
    """Headers of `form` posted as the carrier posts it, signed over `url` (the listener's)."""
    url = url or settings.status_callback_url
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, form)}


def listener_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=settings.receipts_url, timeout=30)


def raw_request(settings: Settings, form: dict[str, str], signature: str | None = None) -> bytes:
    body = httpx.QueryParams(form).__str__().encode()
    signature = signature or signed(settings, form)["X-Twilio-Signature"]
    return (
        f"POST {STATUS_PATH} HTTP/1.1\r\nHost: herald.test\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """`count` HTTP answers read off one connection, in order: (status, body)."""
    answers = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        lengths = [line.split(":")[1] for line in lines if line.lower().startswith("content-")]
        length = next((int(v) for v in lengths if v.strip().isdigit()), 0)
        answers.append((int(lines[0].split()[1]), await reader.readexactly(length)))
    return answers


async def test_the_status_callback_url_is_the_listeners_and_receipts_sent_there_are_applied(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    listener: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 200)
    sids = [r["carrier_sid"] for r in rows]
    in_flight = asyncio.Semaphore(50)

    async def post(client: httpx.AsyncClient, form: dict[str, str]) -> int:
        async with in_flight:
            response = await client.post(STATUS_PATH, data=form, headers=signed(listener, form))
            return response.status_code

    async with listener_client(listener) as client:
        forms = [receipt(sid, s) for sid in sids for s in ("sent", "delivered")]
        replies = await asyncio.gather(*(post(client, form) for form in forms))
        # Only once every `delivered` is answered: fifty callbacks at a time in flight do not
        # keep their order (one on a new connection may reach the listener after later ones).
        later = [receipt(sid, "undelivered", "30003") for sid in sids[::2]]
        replies += await asyncio.gather(*(post(client, form) for form in later))
    await receipts_applied(pool, sids)

    assert listener.status_callback_url == (
        f"http://{listener.api_host}:{listener.receipts_port}{STATUS_PATH}"
    )
    assert set(replies) == {204}
    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"]) for r in after] == [("delivered", None)] * 200


async def test_pipelined_callbacks_are_answered_in_order_each_final_one_once_queued(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    listener: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 3)
    sids = [r["carrier_sid"] for r in rows]
    # A `sent` is answered at once, a final one after its INSERT, a forged one at once: the
    # answers still come in the order of the requests.
    requests = [
        raw_request(listener, receipt(sids[0], "sent")),
        raw_request(listener, receipt(sids[0], "delivered")),
        raw_request(listener, receipt(sids[1], "failed", "30008"), signature="Zm9yZ2Vk"),
        raw_request(listener, receipt(sids[1], "sent")),
        raw_request(listener, receipt(sids[2], "undelivered", "30003")),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.receipts_port)
    try:
        writer.write(b"".join(requests))
        answers = await read_answers(reader, len(requests))
        # The connection is kept alive: another request on it is answered.
        writer.write(raw_request(listener, receipt(sids[1], "delivered")))
        answers += await read_answers(reader, 1)
    finally:
        writer.close()
    await receipts_applied(pool, sids)

    assert [status for status, _ in answers] == [204, 204, 403, 204, 204, 204]
    assert b"INVALID_SIGNATURE" in answers[2][1]
    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"]) for r in after] == [
        ("delivered", None),
        ("delivered", None),
        ("undelivered", "30003"),
    ]


async def test_keyed_callbacks_are_checked_over_their_own_url_and_applied_by_their_key(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    listener: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 3)
    sids = [r["carrier_sid"] for r in rows]

    def url(seq: int) -> str:
        key = receipts.MessageKey(uuid.UUID(file_id), seq, 1)
        return receipts.keyed_url(listener.status_callback_url, key)

    async def post(form: dict[str, str], called: str, signed_over: str) -> httpx.Response:
        target = httpx.URL(called)
        path = f"{target.path}?{target.query.decode()}" if target.query else target.path
        return await client.post(path, data=form, headers=signed(listener, form, signed_over))

    async with listener_client(listener) as client:
        keyed = await post(receipt(sids[0], "delivered"), url(rows[0]["seq"]), url(rows[0]["seq"]))
        # A key changed after it was signed: refused, as a changed body is.
        moved = await post(
            receipt(sids[1], "undelivered", "30003"), url(rows[2]["seq"]), url(rows[1]["seq"])
        )
        # Any other query is checked over the URL with it, and the receipt found by its sid.
        other = f"{listener.status_callback_url}?source=sms"
        unkeyed = await post(receipt(sids[1], "undelivered", "30003"), other, other)
    await receipts_applied(pool, sids)

    assert [r.status_code for r in (keyed, unkeyed)] == [204, 204]
    assert (moved.status_code, error_code(moved)) == (403, "INVALID_SIGNATURE")
    after = await ledger_rows(api, account, file_id)
    assert [(r["status"], r["error_code"]) for r in after] == [
        ("delivered", None),
        ("undelivered", "30003"),
        ("sent", None),
    ]


async def test_a_receipt_signed_with_an_accounts_own_token_moves_only_that_accounts_messages(
    api: httpx.AsyncClient,
    account: Account,
    other_account: Account,
    webhooks: WebhookReceiver,
    listener: Settings,
    carrier: Configure,
    pool: asyncpg.Pool,
) -> None:
    # `other_account` sends through its own subaccount; `account` on the service's credentials.
    await carrier(accounts={SUBACCOUNT_SID: SUBACCOUNT_TOKEN})
    assert (await set_own(api, other_account, SUBACCOUNT_TOKEN)).status_code == 200
    file_id, [row] = await sent_batch(api, account, webhooks, 1)
    own_file, [own] = await sent_batch(api, other_account, webhooks, 1)
    validator = RequestValidator(SUBACCOUNT_TOKEN)

    async def post_as_subaccount(sid: str) -> httpx.Response:
        form = {**receipt(sid, "failed", "30003"), "AccountSid": SUBACCOUNT_SID}
        signature = validator.compute_signature(listener.status_callback_url, form)
        return await client.post(STATUS_PATH, data=form, headers={"X-Twilio-Signature": signature})

    async with listener_client(listener) as client:
        forged = await post_as_subaccount(row["carrier_sid"])
        owned = await post_as_subaccount(own["carrier_sid"])
    await receipts_applied(pool, [own["carrier_sid"]])

    assert (forged.status_code, error_code(forged)) == (403, "SIGNER_NOT_OWNER")
    assert owned.status_code == 204
    assert [r["status"] for r in await ledger_rows(api, account, file_id)] == ["sent"]
    assert [r["status"] for r in await ledger_rows(api, other_account, own_file)] == ["failed"]


async def test_what_is_not_a_signed_status_callback_is_refused_in_the_envelope(
    listener: Settings, settings: Settings
) -> None:
    form = receipt("SM" + "1" * 32, "delivered")
    async with listener_client(listener) as client:
        # Signed over the API's URL, not the one the carrier was given.
        api_signed = await client.post(
            STATUS_PATH, data=form, headers=signed(listener, form, settings.status_callback_url)
        )
        unsigned = await client.post(STATUS_PATH, data=form)
        elsewhere = await client.post("/v1/sms/batch", data=form, headers=signed(listener, form))
        fetched = await client.get(STATUS_PATH)
        as_json = await client.post(STATUS_PATH, json=form, headers=signed(listener, form))
        too_large = await client.post(
            STATUS_PATH,
            data={**form, "Body": "x" * listener.max_body_bytes},
            headers=signed(listener, form),
        )
        no_sid = {k: v for k, v in form.items() if k not in ("MessageSid", "SmsSid")}
        without_sid = await client.post(STATUS_PATH, data=no_sid, headers=signed(listener, no_sid))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.receipts_port)
    try:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        malformed = await read_answers(reader, 1)
        closed = await reader.read()
    finally:
        writer.close()

    assert [(r.status_code, error_code(r)) for r in (api_signed, unsigned)] == [
        (403, "INVALID_SIGNATURE")
    ] * 2
    assert (elsewhere.status_code, error_code(elsewhere)) == (404, "NOT_FOUND")
    assert (fetched.status_code, error_code(fetched)) == (405, "METHOD_NOT_ALLOWED")
    assert (as_json.status_code, error_code(as_json)) == (400, "INVALID_REQUEST")
    assert (too_large.status_code, error_code(too_large)) == (413, "PAYLOAD_TOO_LARGE")
    assert (without_sid.status_code, error_code(without_sid)) == (400, "INVALID_REQUEST")
    assert malformed[0][0] == 400 and b"INVALID_REQUEST" in malformed[0][1]
    assert closed == b""


async def test_a_pipelined_burst_larger_than_the_head_limit_is_answered_whole(
    listener: Settings,
) -> None:
    """Many requests read at once, the last one's head cut by the read: only that head counts
    toward the limit, not the requests before it."""
    requests = [
        raw_request(listener, receipt("SM" + secrets.token_hex(16), "sent")) for _ in range(61)
    ]
    burst = b"".join(requests)
    assert len(burst) > MAX_HEAD_BYTES
    cut = len(burst) - len(requests[-1]) + 40
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.receipts_port)
    try:
        writer.write(burst[:cut])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(burst[cut:])
        answers = await asyncio.wait_for(read_answers(reader, len(requests)), timeout=30)
    finally:
        writer.close()

    assert [status for status, _ in answers] == [204] * len(requests)


async def test_a_request_whose_head_outgrows_the_limit_is_refused_not_held(
    listener: Settings,
) -> None:
    """A target that never ends is not kept growing in the API's memory: 400, closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.receipts_port)
    try:
        # Two reads: the one the request begins in, then one of its head alone.
        writer.write(f"POST {STATUS_PATH}?".encode() + b"a" * 1024)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"a" * (MAX_HEAD_BYTES + 1024))
        await writer.drain()
        answers = await asyncio.wait_for(read_answers(reader, 1), timeout=10)
        closed = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()

    assert answers[0][0] == 400 and b"INVALID_REQUEST" in answers[0][1]
    assert closed == b""


async def test_a_receipt_whose_insert_fails_is_answered_503_by_the_listener_and_taken_again(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    listener: Settings,
    pool: asyncpg.Pool,
) -> None:
    file_id, rows = await sent_batch(api, account, webhooks, 1)
    form = receipt(rows[0]["carrier_sid"], "delivered")
    async with listener_client(listener) as client:
        failed = await answer_when_its_insert_fails(
            pool, lambda: client.post(STATUS_PATH, data=form, headers=signed(listener, form))
        )
        again = await client.post(STATUS_PATH, data=form, headers=signed(listener, form))
    await receipts_applied(pool, [rows[0]["carrier_sid"]])

    # Never a 2xx for a receipt that was not stored: the carrier posts it again.
    assert (failed.status_code, error_code(failed)) == (503, "RECEIPT_NOT_QUEUED")
    assert again.status_code == 204
    after = await ledger_rows(api, account, file_id)
    assert [r["status"] for r in after] == ["delivered"]


async def test_the_listeners_answers_are_counted_and_timed_in_metrics_under_the_route(
    settings: Settings, worker: None
) -> None:
    own = settings.model_copy(update={"receipts_port": free_port()})
    forms = [receipt(f"SM{n:032x}", "sent") for n in range(3)]
    async with api_client(own) as api, listener_client(own) as client:
        answers = [
            await client.post(STATUS_PATH, data=form, headers=signed(own, form)) for form in forms
        ]
        answers += [await client.post(STATUS_PATH, data=form) for form in forms[:2]]
        scraped = (await api.get("/metrics")).text

    route = {"method": "POST", "route": STATUS_PATH}
    seen = {
        (sample.name, sample.labels.get("status") or sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if route.items() <= sample.labels.items()
    }
    assert [a.status_code for a in answers] == [204, 204, 204, 403, 403]
    assert seen[("herald_api_requests_total", "204")] == 3
    assert seen[("herald_api_requests_total", "403")] == 2
    # Each answer timed once, well within the last bucket.
    assert seen[("herald_api_request_seconds_count", None)] == 5
    assert seen[("herald_api_request_seconds_bucket", "30.0")] == 5
    assert 0 < seen[("herald_api_request_seconds_sum", None)] < 5 * 30


async def test_a_connection_idle_or_slow_to_send_its_request_is_closed(
    settings: Settings, worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection holds a descriptor of the API's process: one that sends nothing, or
    its request a byte now and then, is closed once past its time (here half a second)."""
    monkeypatch.setattr(receipt_listener, "IDLE_SECONDS", 0.5)
    monkeypatch.setattr(receipt_listener, "REQUEST_SECONDS", 0.5)
    monkeypatch.setattr(receipt_listener, "SWEEP_SECONDS", 0.1)
    own = settings.model_copy(update={"receipts_port": free_port()})
    async with api_client(own):
        idle = await asyncio.open_connection("127.0.0.1", own.receipts_port)
        slow = await asyncio.open_connection("127.0.0.1", own.receipts_port)
        slow[1].write(f"POST {STATUS_PATH} HTTP/1.1\r\nHost: herald.test\r\n".encode())
        async with asyncio.timeout(10):
            ended = [await reader.read() for reader, _ in (idle, slow)]
        for _, writer in (idle, slow):
            writer.close()

    assert ended == [b"", b""]
