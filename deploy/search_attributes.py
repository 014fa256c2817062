"""Registers Herald's search attributes on a self-hosted Temporal cluster (the local dev server
gets them at start): `python -m deploy.search_attributes [--address host:7233] [--namespace N]`.

The connection (TLS, API key) comes from the `HERALD_TEMPORAL_*` settings; the flags override
the address and namespace. Temporal Cloud registers them in its UI or with `tcld` instead.
"""

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
    ListSearchAttributesResponse,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from settings import load_settings
from temporal_client import connect_temporal, exit_skipping_teardown
from workflows.contracts import SEARCH_ATTRIBUTES

# How long `register` waits for its namespace to exist: temporalio/auto-setup (compose's
# Temporal) creates `default` only once its server is healthy, when `prepare` may start.
NAMESPACE_WAIT_SECONDS = 60.0
# What the list answers meanwhile: no such namespace yet, or (the dev server, a namespace
# just registered) a call cancelled while its registry catches up.
WAITED_FOR = frozenset({RPCStatusCode.NOT_FOUND, RPCStatusCode.CANCELLED})


class NamespaceMissing(RuntimeError):
    """The namespace did not come to exist while `register` waited for it."""


async def register(
    client: Client, namespace: str, *, wait_seconds: float = NAMESPACE_WAIT_SECONDS
) -> list[str]:
    """Add the attributes the namespace lacks, once it exists (waiting up to `wait_seconds`);
    their names, in order. Running it again adds nothing, so every deployment may run it."""
    listed = await _listed(client, namespace, wait_seconds)
    missing = [name for name in SEARCH_ATTRIBUTES if name not in listed.custom_attributes]
    if missing:
        await client.operator_service.add_search_attributes(add_request(namespace, missing))
    return missing


async def _listed(
    client: Client, namespace: str, wait_seconds: float
) -> ListSearchAttributesResponse:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace)
            )
        except RPCError as error:
            if error.status not in WAITED_FOR:
                raise
            if time.monotonic() >= deadline:
                # Either answer to the end: a loaded dev server answered a namespace that
                # never came with CANCELLED too (CI), as it does one its registry has not
                # caught up with.
                raise NamespaceMissing(
                    f"Temporal namespace {namespace!r} not found after {wait_seconds:.0f} s:"
                    " create it (docs/DEPLOY.md), or set HERALD_TEMPORAL_NAMESPACE to Herald's"
                ) from error
        await asyncio.sleep(1)


def add_request(namespace: str, names: Iterable[str]) -> AddSearchAttributesRequest:
    """The request that adds these of Herald's search attributes, each with its type."""
    return AddSearchAttributesRequest(
        namespace=namespace,
        search_attributes={
            name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{SEARCH_ATTRIBUTES[name].upper()}")
            for name in names
        },
    )


async def run(address: str | None, namespace: str | None) -> list[str]:
    overrides = {
        key: value
        for key, value in (("temporal_address", address), ("temporal_namespace", namespace))
        if value is not None
    }
    # Only the connection's settings matter here: the production check (a database, the
    # carrier's credentials, public URLs) is for the API and the workers.
    settings = load_settings(env="development", **overrides)
    client = await connect_temporal(settings)
    return await register(client, settings.temporal_namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--address", help="the cluster's frontend, host:port")
    parser.add_argument("--namespace")
    args = parser.parse_args()
    added = asyncio.run(run(args.address, args.namespace))
    sys.stdout.write(f"added: {', '.join(added) or 'none (all present)'}\n")
    return 0


if __name__ == "__main__":
    exit_skipping_teardown(main())
