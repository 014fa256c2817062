"""The container health probe of both roles: `python -m deploy.healthcheck`.

A worker need not serve HTTP (its metrics port, which answers `/healthz` too, is optional), so
while its event loop runs it touches `HERALD_HEALTH_FILE` every few seconds; a stale file
means a stuck or dead worker. The file names the process that wrote it, which must still run:
Kubernetes' emptyDir outlives a container, and a restarted one passed its probe on the fresh
file of the one before, its own worker not started. Where that file does not exist the
process is the API, and its `/healthz` must answer.
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

from settings import Settings, load_settings

TOUCH_EVERY_SECONDS = 5.0


def started(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot, which tells it from any later
    process of its pid; None if no process has it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    # stat's 22nd field, the 20th after the process's name.
    return stat.rpartition(")")[2].split()[19]


async def touch_while_running(path: Path) -> None:
    """Name this process in `path` (its pid and start time), then touch it until cancelled;
    the worker runs it beside its `Worker`."""
    pid = os.getpid()
    await asyncio.to_thread(path.write_text, f"{pid} {started(pid)}")
    while True:
        await asyncio.sleep(TOUCH_EVERY_SECONDS)
        await asyncio.to_thread(path.touch)


def problem(settings: Settings, stale_after: float) -> str | None:
    """Why the process is unhealthy, or None."""
    path = settings.health_file
    if path is not None and path.exists():
        pid, _, start = path.read_text().partition(" ")
        if not pid.isdigit() or started(int(pid)) != start:
            return f"{path} was written by a worker no longer running"
        age = time.time() - path.stat().st_mtime
        return f"worker silent for {age:.0f}s" if age > stale_after else None
    url = f"http://127.0.0.1:{settings.api_port}/healthz"
    try:
        status = httpx.get(url, timeout=3).status_code
    except httpx.HTTPError as error:
        return f"{url}: {type(error).__name__}"
    return None if status == 200 else f"{url}: {status}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stale-after", type=float, default=6 * TOUCH_EVERY_SECONDS)
    args = parser.parse_args()
    # A probe checks liveness: the production check is for the process it probes.
    found = problem(load_settings(env="development"), args.stale_after)
    if found is not None:
        sys.stderr.write(f"unhealthy: {found}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
