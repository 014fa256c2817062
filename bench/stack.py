"""A throwaway local stack for a benchmark: free ports, a temporary home, removed after."""

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.local.processes import ManagedProcess, free_port
from deploy.local.stack import PORT_SETTINGS, launch, running, stop_on_signals
from settings import Settings


@contextmanager
def bench_stack() -> Iterator[tuple[Settings, dict[str, str], list[ManagedProcess]]]:
    """The whole local stack, as `make run` starts it, on ports nothing else uses."""
    home = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    for name in PORT_SETTINGS:
        os.environ[f"HERALD_{name}"] = str(free_port())
    for name in ("DATABASE_URL", "TEMPORAL_ADDRESS", "TWILIO_API_URL"):
        os.environ.pop(f"HERALD_{name}", None)
    os.environ["HERALD_HOME"] = str(home)
    os.environ.setdefault("HERALD_LOG_LEVEL", "WARNING")
    # The baselines ask for no receipts; Herald's sends are compared without them too.
    os.environ.setdefault("HERALD_EMULATOR_STATUS_CALLBACKS", "false")
    settings = Settings()
    stop_on_signals()
    processes: list[ManagedProcess] = []
    try:
        with running(processes):
            yield settings, launch(settings, processes), processes
    finally:
        shutil.rmtree(home, ignore_errors=True)


StackMeasure = Callable[
    [Settings, dict[str, str], list[ManagedProcess]], Coroutine[Any, Any, dict[str, Any]]
]


def measure_on_stack(
    name: str, out: Path, measure: StackMeasure, report: Callable[[dict[str, Any]], str]
) -> int:
    """Run `measure` on a stack of its own (`bench_stack`), write its result to
    `out`/<name>-<date>.json and print its `report`."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with bench_stack() as (settings, info, processes):
        result = asyncio.run(measure(settings, info, processes))
    path = out / f"{name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(report(result) + f"\n\nWritten: {path}\n")
    return 0
