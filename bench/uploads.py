"""Measures the API's memory under concurrent recipient-file uploads.

    make bench-uploads   (or: .venv/bin/python -m bench.uploads [--uploads 20 --megabytes 40])

Starts PostgreSQL (the embedded one, in a temporary directory) and the API as `make run`
does (uvicorn, `api.app:app_from_env`, its own process), makes an account and a key, then
posts `--uploads` files of `--megabytes` MB (10^6 bytes) to `POST /v1/files/attach` all at
once, sampling the API process's resident memory (RSS, psutil) every 20 ms from before the
first upload until the last one is answered. Prints the baseline and the peak, and writes
them to bench/results/uploads-<date>.json.
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil

from deploy.local.postgres import dsn as postgres_dsn
from deploy.local.postgres import postgres_process, postgres_ready
from deploy.local.processes import ManagedProcess, free_port, http_ok
from store.accounts import create_account, create_api_key
from store.db import create_pool, migrate

RESULTS = Path(__file__).parent / "results"
SAMPLE_SECONDS = 0.02
READY_SECONDS = 60


@dataclass(frozen=True)
class UploadMemory:
    uploads: int
    size_bytes: int
    statuses: list[int]
    baseline_mb: float
    peak_mb: float
    seconds: float
    stored_md5_ok: bool


@contextmanager
def api_process(database_url: str, log_dir: Path) -> Iterator[tuple[str, ManagedProcess]]:
    """The API alone, as the local stack runs it; its Temporal client is lazy and unused."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_DATABASE_URL": database_url,
        "HERALD_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "HERALD_LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:app_from_env"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    api = ManagedProcess("api", argv, log_dir / "api.log", env).start()
    url = f"http://127.0.0.1:{port}"
    try:
        api.wait_until(lambda: http_ok(f"{url}/healthz"), READY_SECONDS)
        yield url, api
    finally:
        api.stop()


class RssSampler:
    """The highest RSS of a process, sampled on a thread of its own until stopped."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def _account_key(database_url: str) -> str:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool)
        account_id = await create_account(pool, "bench-uploads")
        return (await create_api_key(pool, account_id)).key
    finally:
        await pool.close()


async def _stored_md5(database_url: str, file_id: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT md5(content) FROM files WHERE id = $1::uuid", file_id)
    finally:
        await conn.close()


def file_content(size: int) -> bytes:
    """A CSV of `size` bytes: a header and phone numbers, as a recipient file is."""
    header = b"phone_number,name\n"
    line = b"+12015550123,Ann\n"
    body = line * ((size - len(header)) // len(line) + 1)
    return (header + body)[:size]


async def upload_all(
    database_url: str, url: str, pid: int, uploads: int, size: int
) -> UploadMemory:
    key = await _account_key(database_url)
    content = file_content(size)
    headers = {"authorization": key}
    timeout = httpx.Timeout(600)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        # One small upload first, so the baseline is of an API that has served one.
        warm = await client.post(
            "/v1/files/attach",
            headers=headers,
            data={"file_type": "batches"},
            files={"file": ("warm.csv", file_content(1000), "text/csv")},
        )
        warm.raise_for_status()
        baseline = psutil.Process(pid).memory_info().rss
        started = asyncio.get_running_loop().time()
        with RssSampler(pid) as sampler:
            replies = await asyncio.gather(
                *(
                    client.post(
                        "/v1/files/attach",
                        headers=headers,
                        data={"file_type": "batches"},
                        files={"file": (f"list-{i}.csv", content, "text/csv")},
                    )
                    for i in range(uploads)
                )
            )
        seconds = asyncio.get_running_loop().time() - started
    stored = [r.json()["data"] for r in replies if r.status_code == 200]
    expected = hashlib.md5(content, usedforsecurity=False).hexdigest()
    # Two of them read back: the bytes stored are the bytes sent.
    checked = [await _stored_md5(database_url, s["file_id"]) for s in stored[:2]]
    md5_ok = bool(stored) and all(s["size_bytes"] == size for s in stored)
    md5_ok = md5_ok and checked == [expected] * len(checked)
    return UploadMemory(
        uploads=uploads,
        size_bytes=size,
        statuses=[r.status_code for r in replies],
        baseline_mb=round(baseline / 1e6, 1),
        peak_mb=round(sampler.peak / 1e6, 1),
        seconds=round(seconds, 1),
        stored_md5_ok=md5_ok,
    )


def measure(database_url: str, log_dir: Path, *, uploads: int, size: int) -> UploadMemory:
    with api_process(database_url, log_dir) as (url, api):
        return asyncio.run(upload_all(database_url, url, api.pid, uploads, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herald-uploads-") as home:
        port = free_port()
        pg = postgres_process(Path(home) / "pg", port, Path(home) / "pg.log", ephemeral=True)
        pg.start()
        try:
            pg.wait_until(lambda: postgres_ready(port), READY_SECONDS)
            result = measure(
                postgres_dsn(port), Path(home), uploads=args.uploads, size=args.megabytes * 10**6
            )
        finally:
            pg.stop()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (RESULTS / f"uploads-{stamp}.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    sys.stdout.write(json.dumps(asdict(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
