"""`python -m deploy.healthcheck`, the containers' probe: a real worker and a real API process."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deploy.local.processes import ManagedProcess, free_port, http_ok
from settings import Settings
from tests.support.sending import eventually
from tests.support.stack import api_client
from tests.support.workers import worker_process


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run(
        [sys.executable, "-m", "deploy.healthcheck", *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def touching_worker(settings: Settings, health: Path, log_path: Path) -> ManagedProcess:
    """A worker process that touches `health`."""
    worker = worker_process(settings, log_path)
    assert worker.env is not None
    worker.env["HERALD_HEALTH_FILE"] = str(health)
    return worker


async def test_a_worker_is_healthy_while_its_event_loop_runs(
    settings: Settings, tmp_path: Path
) -> None:
    health = tmp_path / "worker.alive"
    worker = touching_worker(settings, health, tmp_path / "worker.log")
    env = {"HERALD_HEALTH_FILE": str(health)}
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_until, health.exists, 60)
        running = probe(env, "--stale-after", "2")
        os.killpg(worker.pid, signal.SIGSTOP)
        await asyncio.sleep(3)
        frozen = probe(env, "--stale-after", "2")
        os.killpg(worker.pid, signal.SIGCONT)
        # Healthy again by its next touch of the file, at most one interval after the thaw.
        thawed = await eventually(
            lambda: asyncio.to_thread(probe, env, "--stale-after", "2"),
            lambda answer: answer.returncode == 0,
            seconds=10,
        )
    finally:
        worker.stop()

    assert running.returncode == 0, running.stderr
    assert frozen.returncode == 1 and "worker silent for" in frozen.stderr
    assert thawed.returncode == 0, thawed.stderr


async def test_a_file_a_worker_left_passes_for_no_later_worker(
    settings: Settings, tmp_path: Path
) -> None:
    """Kubernetes' emptyDir outlives a container: a restarted worker container passed its
    startup probe on the file the one before had touched seconds earlier."""
    health = tmp_path / "worker.alive"
    env = {"HERALD_HEALTH_FILE": str(health)}
    before = touching_worker(settings, health, tmp_path / "before.log").start()
    try:
        await asyncio.to_thread(before.wait_until, health.exists, 60)
    finally:
        before.stop()
    left = probe(env)
    age = time.time() - health.stat().st_mtime
    after = touching_worker(settings, health, tmp_path / "after.log").start()
    try:
        started = await eventually(
            lambda: asyncio.to_thread(probe, env),
            lambda answer: answer.returncode == 0,
            seconds=60,
        )
    finally:
        after.stop()

    assert age < 30
    assert left.returncode == 1 and "written by a worker no longer running" in left.stderr
    assert started.returncode == 0, started.stderr


async def test_the_api_is_healthy_while_it_answers(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "HERALD_DATABASE_URL": settings.dsn,
        "HERALD_TEMPORAL_ADDRESS": settings.temporal_target,
        "HERALD_API_PORT": str(port),
    }
    api = ManagedProcess(
        "api",
        [sys.executable, "-m", "uvicorn", "--factory", "api.app:app_from_env", "--port", str(port)],
        tmp_path / "api.log",
        {**os.environ, **env},
    ).start()
    try:
        await asyncio.to_thread(
            api.wait_until, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60
        )
        serving = probe(env)
    finally:
        api.stop()
    stopped = probe(env)

    assert serving.returncode == 0, serving.stderr
    assert stopped.returncode == 1 and f"127.0.0.1:{port}/healthz" in stopped.stderr


async def test_an_api_that_reaches_postgresql_but_not_temporal_stays_ready(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    # Out of its Service while Temporal was away, every API pod refused the carrier's status
    # callbacks too, which need PostgreSQL alone and which a carrier does not post again.
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})

    async with api_client(down) as unreachable:
        degraded = await unreachable.get("/readyz")
    ready = await api.get("/readyz")

    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["checks"]["postgres"] == "ok"
    assert degraded.json()["checks"]["temporal"].startswith("down: ")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "checks": {"postgres": "ok", "temporal": "ok"}},
    )
