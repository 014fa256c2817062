"""schemathesis over the whole OpenAPI schema, with a valid key, against the real app served by
uvicorn: no 5xx, and every response matches the schema."""

import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from deploy.local.processes import free_port
from settings import Settings
from tests.support.stack import Account

# What the issue asks of every reply. Not `positive_data_acceptance`: a schema-valid request may
# still name nothing of this account (404) or break a rule the schema cannot say (400).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
schema = schemathesis.openapi.from_dict(create_app().openapi())


@pytest.fixture(scope="module")
def live_api(settings: Settings, worker: None) -> Iterator[str]:
    """The app in a uvicorn server on a thread of its own, lifespan included."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
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
    max_examples=20,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_reply_matches_the_schema(
    case: schemathesis.Case, live_api: str, account: Account
) -> None:
    case.call_and_validate(base_url=live_api, headers=account.headers, timeout=10, checks=CHECKS)
