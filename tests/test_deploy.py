"""`deploy/`: registering Herald's search attributes on a cluster that has none yet; the
image's `prepare` role."""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from deploy import search_attributes
from deploy.local.processes import ManagedProcess, free_port
from deploy.local.temporal import TEMPORAL_BIN, temporal_ready
from settings import Settings
from workflows.contracts import SEARCH_ATTRIBUTES

ENTRYPOINT = Path(__file__).resolve().parent.parent / "deploy" / "entrypoint.sh"


@pytest.fixture
def bare_temporal(tmp_path: Path) -> Iterator[str]:
    """A dev server started without Herald's search attributes, like a fresh cluster."""
    port = free_port()
    server = ManagedProcess(
        "bare-temporal",
        [str(TEMPORAL_BIN), "server", "start-dev", "--headless", "--port", str(port)],
        tmp_path / "temporal.log",
    ).start()
    try:
        server.wait_until(lambda: temporal_ready(port), 60)
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def register(address: str) -> subprocess.CompletedProcess[str]:
    # As README runs it from the image (HERALD_ENV=production), with no other setting.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run(
        [sys.executable, "-m", "deploy.search_attributes", "--address", address],
        env=env | {"HERALD_ENV": "production"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_search_attributes_are_registered_on_a_fresh_cluster_once(bare_temporal: str) -> None:
    run = register(bare_temporal)
    again = register(bare_temporal)
    listed = subprocess.run(
        [str(TEMPORAL_BIN), "operator", "search-attribute", "list", "--address", bare_temporal],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert again.returncode == 0 and "none (all present)" in again.stdout, again.stderr
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert any(name in line and kind in line for line in listed.stdout.splitlines()), name


async def test_search_attributes_wait_for_a_namespace_created_after_the_server_is_up(
    temporal: Client,
) -> None:
    """compose's Temporal (temporalio/auto-setup) creates its `default` namespace only once the
    server is healthy, when `prepare` starts: it listed the attributes of no namespace, and
    failed (Namespace default is not found)."""
    namespace = f"herald-later-{uuid.uuid4().hex[:8]}"

    async def create_later() -> None:
        await asyncio.sleep(2)
        await temporal.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
            )
        )

    added, _ = await asyncio.gather(search_attributes.register(temporal, namespace), create_later())

    assert added == list(SEARCH_ATTRIBUTES)


async def test_search_attributes_give_up_on_a_namespace_that_never_comes(temporal: Client) -> None:
    with pytest.raises(
        search_attributes.NamespaceMissing, match="'herald-never' not found after 2 s: create it"
    ):
        await search_attributes.register(temporal, "herald-never", wait_seconds=2)


async def test_a_namespace_that_answers_cancelled_to_the_end_is_missing_too() -> None:
    """A loaded dev server answered the list of a namespace that never came with CANCELLED,
    as it answers one its registry has not caught up with: the wait ended in that raw
    error (`operation was canceled`), not the one that says what to do."""

    class Cancelling:
        async def list_search_attributes(self, request: object) -> NoReturn:
            raise RPCError("operation was canceled", RPCStatusCode.CANCELLED, b"")

    client = SimpleNamespace(operator_service=Cancelling())

    with pytest.raises(search_attributes.NamespaceMissing, match="'herald-never' not found"):
        await search_attributes.register(client, "herald-never", wait_seconds=0)  # type: ignore[arg-type]


def test_the_image_entrypoint_prepares_a_release(settings: Settings, bare_temporal: str) -> None:
    """`prepare`, as the image's entrypoint runs it: migrations, then search attributes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
        "HERALD_DATABASE_URL": settings.dsn,
        "HERALD_TEMPORAL_ADDRESS": bare_temporal,
    }
    run = subprocess.run(
        ["sh", str(ENTRYPOINT), "prepare"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert "migrations applied: " in run.stdout
    assert f"search attributes added: {', '.join(SEARCH_ATTRIBUTES)}" in run.stdout
