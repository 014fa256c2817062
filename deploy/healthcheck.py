"""The container health probe of both roles: `python -m deploy.healthcheck`.

A worker need not serve HTTP (its metrics port, which answers `/healthz` too, is optional), so
while its event loop runs it touches `HERALD_HEALTH_FILE` every few seconds; a stale file
means a stuck or dead worker. Where that file does not exist the
process is the API, and its `/healthz` must answer.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

from settings import Settings, load_settings

TOUCH_EVERY_SECONDS = 5.0


async def touch_while_running(path: Path) -> None:
    """Touch `path` until cancelled; the worker runs it beside its `Worker`."""
    while True:
        await asyncio.to_thread(path.touch)
        await asyncio.sleep(TOUCH_EVERY_SECONDS)


def problem(settings: Settings, stale_after: float) -> str | None:
    """Why the process is unhealthy, or None."""
    path = settings.health_file
    if path is not None and path.exists():
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
