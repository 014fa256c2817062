"""schemathesis over the whole OpenAPI schema, with a valid key, against the real app served by
uvicorn: no 5xx, and every response matches the schema."""

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

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
from tests.support.batches import run_batch
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.stack import Account, WebhookReceiver


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


def test_stateful_sequences_find_no_5xx_and_match_the_schema(
    live_api: str, account: Account
) -> None:
    """The stateful phase: sequences along the links between operations (a batch started,
    then read, paused, retried...), with the same checks."""
    # Without main's campaign and mailing-list links: whether their bundles fill depends on
    # what earlier examples left in the shared account, which Hypothesis reports as an
    # inconsistent (flaky) rule choice. Their operations stay in the other phases.
    base = schema.exclude(path_regex=r"^/(v1/)?(campaigns|lists)").as_state_machine()

    class Sequences(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": live_api, "headers": account.headers, "timeout": 10}

        def validate_response(
            self, response: Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS)

    Sequences.run(
        settings=settings(
            max_examples=30,
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )


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
                async with client.stream("GET", path, headers={name: value.encode()}) as response:
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
