"""schemathesis over the whole OpenAPI schema, with a valid key, against the real app served by
uvicorn: no 5xx, and every response matches the schema."""

import threading
import time
from collections.abc import Iterator
from typing import Any

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
from tests.support.stack import Account


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
