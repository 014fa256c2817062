"""The one way Herald connects to Temporal: the dev server, a self-hosted cluster over
(mutual) TLS, or Temporal Cloud with an API key, all from settings."""

import logging
import os
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import NoReturn, TypedDict

from temporalio.client import Client, Interceptor
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import TLSConfig

from settings import Settings


class ConnectOptions(TypedDict):
    namespace: str
    api_key: str | None
    tls: bool | TLSConfig


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def connect_options(settings: Settings) -> ConnectOptions:
    """`Client.connect` keyword arguments besides the address (and `lazy`)."""
    api_key = settings.temporal_api_key
    tls_given = (
        settings.temporal_tls_ca_path,
        settings.temporal_tls_cert_path,
        settings.temporal_tls_key_path,
        settings.temporal_tls_server_name,
    )
    tls: bool | TLSConfig = False
    # Temporal Cloud takes API keys over TLS only.
    if settings.temporal_tls or api_key is not None or any(tls_given):
        tls = TLSConfig(
            server_root_ca_cert=_read(settings.temporal_tls_ca_path),
            domain=settings.temporal_tls_server_name,
            client_cert=_read(settings.temporal_tls_cert_path),
            client_private_key=_read(settings.temporal_tls_key_path),
        )
    return ConnectOptions(
        namespace=settings.temporal_namespace,
        api_key=None if api_key is None else api_key.get_secret_value(),
        tls=tls,
    )


def temporal_runtime(prometheus_address: str | None = None) -> Runtime:
    """An SDK runtime whose core forwards its own log lines to Python's logging (so they
    come out as JSON with the rest), serving the SDK's metrics at `prometheus_address`
    (host:port) when given. Each runtime has its own threads: one a process, or one a
    metrics endpoint."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            ),
            metrics=None if prometheus_address is None else PrometheusConfig(prometheus_address),
        )
    )


_process_runtime = cache(temporal_runtime)


async def connect_temporal(
    settings: Settings,
    *,
    lazy: bool = False,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """`interceptors` (tracing's) apply to the client's calls and to every worker on it."""
    return await Client.connect(
        settings.temporal_target,
        lazy=lazy,
        runtime=runtime or _process_runtime(),
        interceptors=interceptors,
        **connect_options(settings),
    )


def exit_skipping_teardown(code: int) -> NoReturn:
    """End a short-lived command that used a client. The SDK's Rust threads can outlive the
    event loop and abort CPython's finalization (SIGABRT once the work is done, intermittently:
    temporalio/sdk-python#300), so the interpreter's teardown is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
