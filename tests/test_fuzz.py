"""schemathesis over the whole OpenAPI schema, with a valid key, against the real app served by
uvicorn: no 5xx, and every response matches the schema."""

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Response
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from deploy.local.processes import free_port
from settings import Settings
from store.db import create_pool
from tests.support.batches import run_batch
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.pages import every_item
from tests.support.stack import Account, WebhookReceiver, new_account


@schemathesis.check
def not_rate_limited(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    """A 429 is a request the fuzzer wasted: the run's limits are raised so that none is."""
    if response.status_code == 429:
        raise AssertionError(f"rate limited: {response.text[:200]}")


# What the issue asks of every reply. Not `positive_data_acceptance`: a schema-valid request may
# still name nothing of this account (404) or break a rule the schema cannot say (400).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    not_rate_limited,
]
schema = schemathesis.openapi.from_dict(create_app().openapi())


@pytest.fixture(scope="module")
def live_api(settings: Settings, worker: None) -> Iterator[str]:
    """The app in a uvicorn server on a thread of its own, lifespan included."""
    port = free_port()
    # Limits far above what the fuzzer sends, the Postman dialect's per-campaign one too, so
    # that every operation is exercised rather than answered 429.
    unlimited = settings.model_copy(
        update={
            "rate_limit_per_second": 100_000,
            "rate_limit_burst": 100_000,
            "campaign_rate_limit_per_second": 100_000,
        }
    )
    config = uvicorn.Config(create_app(unlimited), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_reply_matches_the_schema(
    case: schemathesis.Case, live_api: str, account: Account
) -> None:
    case.call_and_validate(base_url=live_api, headers=account.headers, timeout=10, checks=CHECKS)


SEQUENCES = settings(
    max_examples=30,
    stateful_step_count=6,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


async def _sequence_account(settings: Settings) -> Account:
    pool = await create_pool(settings.dsn, min_size=1, max_size=1)
    try:
        return await new_account(pool)
    finally:
        await pool.close()


async def _free_unique_names(live_api: str, account: Account) -> None:
    """Delete the account's mailing lists and sender numbers: their ids and numbers are
    unique across accounts, so a later sequence that gives the same ones finds them free."""
    async with httpx.AsyncClient(base_url=live_api, timeout=10) as client:
        for path, items, key in (
            ("/v1/lists", "lists", "id"),
            ("/v1/sms/numbers", "numbers", "number"),
        ):
            for item in await every_item(client, account, path, items):
                deleted = await client.delete(
                    f"{path}/{quote(item[key], safe='')}", headers=account.headers
                )
                assert deleted.status_code == 200, deleted.text


def test_stateful_sequences_find_no_5xx_and_match_the_schema(
    live_api: str, settings: Settings
) -> None:
    """The stateful phase: sequences along the links between operations (a batch started,
    then read, paused, retried...; a campaign or mailing list created, then read, changed,
    deleted), with the same checks.

    Each sequence runs in an account of its own and frees, at its end, the names unique across
    accounts (mailing-list ids, sender numbers) it took: every sequence starts from the same
    state. Hypothesis replays a sequence's choices and expects the same rules to be possible;
    with one account shared by all sequences, what earlier ones left (a list id or a sender
    number taken, a campaign's sender gone) decided whether a campaign's or list's link could
    be followed, and Hypothesis raised FlakyStrategyDefinition (issue 21)."""
    base = schema.as_state_machine()
    answered: Counter[tuple[str, int]] = Counter()

    class Sequences(base):  # type: ignore[misc, valid-type]
        account: Account

        def setup(self) -> None:
            self.account = asyncio.run(_sequence_account(settings))

        def teardown(self) -> None:
            asyncio.run(_free_unique_names(live_api, self.account))

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": live_api, "headers": self.account.headers, "timeout": 10}

        def before_call(self, case: schemathesis.Case) -> None:
            # A campaign's sender must be one of the account's: a generated one never is, and
            # no campaign would be made for the links after it to follow.
            if case.operation.label == "POST /v1/campaigns" and isinstance(case.body, dict):
                case.body["sender"] = self.account.agent_number

        def after_call(self, response: Response, case: schemathesis.Case) -> None:
            answered[(case.operation.label, response.status_code)] += 1

        def validate_response(
            self, response: Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS)

    Sequences.run(settings=SEQUENCES)

    # The sequences made campaigns and mailing lists and followed their links to the item
    # made (read, changed or deleted it: which of them, the server's answers along each
    # sequence decide, and they vary with what the session's other tests left).
    assert {("POST /v1/campaigns", 201), ("POST /v1/lists", 201)} <= set(answered)
    reached = {label.split(" ", 1)[1] for label, _ in answered}
    assert {"/v1/campaigns/{campaign_id}", "/v1/lists/{list_id}"} <= reached
    assert not [answer for answer in answered if answer[1] >= 500]


# `Last-Event-ID` values around and beyond what the events' `seq` column holds (issue 21: the
# fuzzer's `167753589166675` broke the stream mid-response), and values that are no integer.

LAST_EVENT_IDS = [
    "167753589166675",
    str(2**31),
    str(2**63),
    str(10**30),
    "1e20",
    "-1",
    "-167753589166675",
    "abc",
    "",
    "1.5",
    "0x10",
    "+5",
    "1_000",
    "\u0663",
    "0",
    "1",
    "3",
    str(2**31 - 1),
]


def _events(text: str) -> list[dict[str, Any]]:
    """The server-sent events of a whole stream; each block must be well formed."""
    found: list[dict[str, Any]] = []
    if not text:
        return found
    assert text.endswith("\n\n"), text[-200:]
    for block in text[:-2].split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) <= {"event", "id", "data"} and fields["event"] in (
            "status",
            "progress",
        ), block
        found.append({**fields, "data": json.loads(fields["data"])})
    return found


async def test_the_event_stream_through_uvicorn_is_a_clean_400_or_a_whole_stream(
    api: httpx.AsyncClient, live_api: str, account: Account, webhooks: WebhookReceiver
) -> None:
    """Each `Last-Event-ID` (under each casing of the header) is answered, through a real
    server's chunked framing, read whole by h11 (which refuses a broken chunk or a body cut
    short), with either the 400 envelope or a well-formed stream of the events after it."""
    rows = [[n] for n in unique_numbers(2)]
    batch, _ = await run_batch(api, account, webhooks, csv_bytes(["phone_number"], rows))
    logs = await api.get(f"/v1/sms/batch/{batch}/logs", headers=account.headers)
    final = logs.json()["data"]["events"][-1]["seq"]
    path = f"{live_api}/v1/sms/batch/{batch}/events"

    replies = {}
    async with httpx.AsyncClient(headers=account.headers, timeout=30) as client:
        for name in ("last-event-id", "Last-Event-ID", "LAST-EVENT-ID"):
            for value in LAST_EVENT_IDS:
                async with client.stream(
                    "GET", path, headers={name.encode(): value.encode()}
                ) as response:
                    body = (await response.aread()).decode()
                replies[(name, value)] = (response, body)

    for (name, value), (response, body) in replies.items():
        if response.status_code == 400:
            assert response.headers["content-type"] == "application/json", (name, value)
            reply = json.loads(body)
            assert reply["data"] is None and reply["errors"][0]["error"] == "INVALID_REQUEST"
            continue
        assert response.status_code == 200, (name, value, body)
        assert response.headers["content-type"].startswith("text/event-stream")
        streamed = _events(body)
        assert [int(e["id"]) for e in streamed if e["event"] == "status"] == list(
            range(int(value) + 1, final + 1)
        ), (name, value)
    accepted = {value for (_, value), (r, _) in replies.items() if r.status_code == 200}
    assert {"0", "1", "3", str(2**31 - 1)} <= accepted
    assert not accepted & {"167753589166675", str(2**31), "-1", "abc", ""}
