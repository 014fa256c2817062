"""The local stack's processes, started in order and stopped in reverse: used by `make run`
and by `make bench`.

PostgreSQL and Temporal are started only when HERALD_DATABASE_URL / HERALD_TEMPORAL_ADDRESS
are unset; then the carrier emulator, the workers and the API. Each worker serves its
metrics on ports of its own, listed in `.herald/dev.json` (keys ending in `metrics_url`).
"""

import asyncio
import functools
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from deploy.local.dev_account import ensure_dev_account
from deploy.local.postgres import dsn, postgres_process, postgres_ready
from deploy.local.processes import ManagedProcess, free_port, http_ok, port_free
from deploy.local.temporal import temporal_process, temporal_ready
from settings import Settings, read_dev_file

READY_TIMEOUT = 60.0
# The receipts listener's port when HERALD_RECEIPTS_PORT is unset: the local stack always
# serves the carrier's status callbacks there (Settings.receipts_port).
LOCAL_RECEIPTS_PORT = 8010
# The settings (less their HERALD_ prefix) of the ports the local stack listens on.
PORT_SETTINGS = (
    "API_PORT",
    "RECEIPTS_PORT",
    "POSTGRES_PORT",
    "TEMPORAL_PORT",
    "TEMPORAL_UI_PORT",
    "EMULATOR_PORT",
)


class Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP reached the process that owns the stack."""


class PortsTaken(Exception):
    """Ports the stack would listen on are in use: started anyway, its readiness checks would
    be answered by the other process's services."""


def check_ports(settings: Settings) -> None:
    """Raise PortsTaken, naming each taken port and the setting that moves it, before
    anything starts."""
    wanted = [("API", "HERALD_API_PORT", settings.api_host, settings.api_port)]
    if settings.receipts_port is not None:
        wanted.append(
            ("receipts", "HERALD_RECEIPTS_PORT", settings.api_host, settings.receipts_port)
        )
    if settings.database_url is None:
        wanted.append(("PostgreSQL", "HERALD_POSTGRES_PORT", "127.0.0.1", settings.postgres_port))
    if settings.temporal_address is None:
        wanted.append(("Temporal", "HERALD_TEMPORAL_PORT", "127.0.0.1", settings.temporal_port))
        wanted.append(
            ("Temporal UI", "HERALD_TEMPORAL_UI_PORT", "127.0.0.1", settings.temporal_ui_port)
        )
    if settings.twilio_api_url is None:
        wanted.append(("emulator", "HERALD_EMULATOR_PORT", "127.0.0.1", settings.emulator_port))
    taken = [
        f"  {host}:{port} ({what}) is taken; {variable}=<free port> moves it"
        for what, variable, host, port in wanted
        if not port_free(port, host)
    ]
    if taken:
        raise PortsTaken(
            "Not started: another process (another `make run`?) listens where this stack would.\n"
            + "\n".join(taken)
        )


# Ctrl-C, a process manager's stop, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The local API's graceful-shutdown timeout: an open event stream (a dashboard following a
# batch) is closed after it, well before ManagedProcess.stop would kill the API.
API_GRACEFUL_SHUTDOWN_SECONDS = 3


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _raise_stop(signum: int, _frame: object) -> None:
    # Pressed again, Ctrl-C would cut the stop of the children short: it is ignored from now.
    _ignore_stop_signals()
    raise Stop(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Turn the first of SIGINT, SIGTERM and SIGHUP into `Stop`, so `running` stops every
    child on the way out; those after it are ignored."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)


@contextmanager
def running(processes: list[ManagedProcess]) -> Iterator[list[ManagedProcess]]:
    """Stop every process of `processes` on the way out, in reverse order, each whatever
    happens stopping the others; stop signals are ignored from then on."""
    try:
        yield processes
    finally:
        _ignore_stop_signals()
        with ExitStack() as stops:
            for process in processes:
                stops.callback(process.stop)


def launch(settings: Settings, processes: list[ManagedProcess]) -> dict[str, str]:
    """Start everything, appending each child to `processes` as soon as it exists."""
    if settings.receipts_port is None:
        settings = settings.model_copy(update={"receipts_port": LOCAL_RECEIPTS_PORT})
    check_ports(settings)
    home = settings.home.resolve()
    logs = home / "logs"
    env = dict(os.environ)
    # The API serves the receipts listener; the workers give its URL to the carrier.
    env["HERALD_RECEIPTS_PORT"] = str(settings.receipts_port)
    # Everything of the local stack, webhook receivers included, is on this machine; a
    # production environment refuses this (see settings.Settings).
    if settings.env == "development":
        env.setdefault("HERALD_ALLOW_LOOPBACK_WEBHOOKS", "true")
    if settings.database_url is None:
        pg = postgres_process(home / "postgres", settings.postgres_port, logs / "postgres.log")
        processes.append(pg.start())
        pg.wait_until(lambda: postgres_ready(settings.postgres_port), READY_TIMEOUT)
        env["HERALD_DATABASE_URL"] = dsn(settings.postgres_port)
    if settings.temporal_address is None:
        temporal = temporal_process(
            port=settings.temporal_port,
            ui_port=settings.temporal_ui_port,
            db_file=home / "temporal.sqlite",
            log_path=logs / "temporal.log",
        )
        processes.append(temporal.start())
        temporal.wait_until(lambda: temporal_ready(settings.temporal_port), READY_TIMEOUT)
        env["HERALD_TEMPORAL_ADDRESS"] = settings.temporal_target
    # The settings' DSN: the embedded server's, or the given URL with HERALD_DATABASE_PASSWORD.
    database_url = settings.dsn
    if settings.twilio_api_url is None:
        emulator = ManagedProcess(
            "emulator",
            [
                sys.executable,
                "-m",
                "deploy.local.emulator",
                "--port",
                str(settings.emulator_port),
                "--auth-token",
                settings.twilio_auth_token.get_secret_value(),
                *([] if settings.emulator_status_callbacks else ["--no-status-callbacks"]),
            ],
            logs / "emulator.log",
        )
        processes.append(emulator.start())
        emulator.wait_until(
            lambda: http_ok(f"{settings.carrier_url}/_emulator/health"), READY_TIMEOUT
        )
        env["HERALD_TWILIO_API_URL"] = settings.carrier_url
    dev_file = home / "dev.json"
    known = known_dev_file(dev_file)
    dev = asyncio.run(ensure_dev_account(database_url, known))
    metrics_urls: dict[str, str] = {}
    workers: list[tuple[ManagedProcess, str]] = []
    # Workers serving both task queues; or send workers and one control worker apart
    # (`control_worker`; docs/WORKFLOWS.md, Fairness between batches).
    roles = {f"worker-{index}": "all" for index in range(settings.worker_processes)}
    if settings.control_worker:
        roles = {**dict.fromkeys(roles, "send"), "worker-control": "control"}
    for name, role in roles.items():
        index = name.removeprefix("worker-")
        # Each worker its own ports, free now: the URLs are in dev.json.
        herald_port, sdk_port = free_port(), free_port()
        worker_env = {
            **env,
            "HERALD_WORKER_ROLE": role,
            "HERALD_WORKER_METRICS_PORT": str(herald_port),
            "HERALD_TEMPORAL_METRICS_PORT": str(sdk_port),
        }
        worker = ManagedProcess(
            name, [sys.executable, "-m", "worker"], logs / f"{name}.log", worker_env
        )
        processes.append(worker.start())
        base = f"http://{settings.metrics_host}"
        workers.append((worker, f"{base}:{herald_port}/healthz"))
        metrics_urls[f"worker_{index}_metrics_url"] = f"{base}:{herald_port}/metrics"
        metrics_urls[f"worker_{index}_temporal_metrics_url"] = f"{base}:{sdk_port}/metrics"
    api = ManagedProcess(
        "api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.app:app_from_env",
            "--host",
            settings.api_host,
            "--port",
            str(settings.api_port),
            # The C parser and loop (uvicorn's defaults when installed, named so that a
            # missing one fails the start), and no access line per request: the carrier
            # posts two or three receipts per message sent.
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            str(API_GRACEFUL_SHUTDOWN_SECONDS),
        ],
        logs / "api.log",
        env,
    )
    processes.append(api.start())
    api.wait_until(lambda: http_ok(f"{settings.api_url}/readyz"), READY_TIMEOUT)
    for worker, health_url in workers:
        worker.wait_until(functools.partial(http_ok, health_url), READY_TIMEOUT)
    info = {
        **dev,
        "api_url": settings.api_url,
        "receipts_url": settings.status_callback_url,
        "docs_url": f"{settings.api_url}/docs",
        "dashboard_url": f"{settings.api_url}/ui",
        "temporal_ui_url": settings.temporal_ui_base,
        "emulator_url": settings.carrier_url,
        "api_metrics_url": f"{settings.api_url}/metrics",
        **metrics_urls,
        "logs": str(logs),
    }
    write_dev_file(dev_file, info)
    return info


def known_dev_file(dev_file: Path) -> dict[str, Any]:
    """The last start's `dev.json`; empty when missing or unreadable, saying so."""
    try:
        return read_dev_file(dev_file)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"{dev_file} is unreadable ({error}); a new development key is made.\n")
        return {}


def write_dev_file(dev_file: Path, info: dict[str, str]) -> None:
    """Written whole or not at all (a temporary file renamed over it), readable by its owner
    alone: it holds an API key of every permission."""
    descriptor, temporary = tempfile.mkstemp(prefix=".dev-", suffix=".json", dir=dev_file.parent)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(info, indent=2) + "\n")
        os.replace(temporary, dev_file)
    except BaseException:
        os.unlink(temporary)
        raise
