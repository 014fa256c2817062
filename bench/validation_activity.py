"""Measures the validation activity itself: its process's peak memory and CPU over a file.

    make bench-validation-activity   (or: .venv/bin/python -m bench.validation_activity
    [--rows 1000000 --runs 3])

`bench.validation` times validation alone, with no COPY; `python -m bench --sweep 1000000`
measures the validating worker in a whole stack, four minutes a run, its peak among all else
the worker does. This runs `ValidationActivities.validate_recipients` as the worker runs it
(in `ActivityEnvironment`, which lets it heartbeat), against a scratch PostgreSQL (the
embedded one, durability off), on `bench.validation`'s file of `--rows` rows stored as a
batch's file, `--runs` times in one process prepared as the worker is
(`worker.prepare_process`): the first run starts from a fresh process, the next from what
the ones before left. Each run's RSS is sampled every 20 ms (`bench.uploads.RssSampler`;
anonymous and mapped from files apart: polars' and Temporal's libraries are about 55 MiB of
the latter), with the process's CPU time (every thread's) and its time. Results in
bench/results/validation-activity-<date>.json.
"""

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from temporalio.testing import ActivityEnvironment

from activities.providers.twilio import TwilioCarrier
from activities.validation import ValidationActivities
from bench.uploads import RssSampler, scratch_postgres
from bench.validation import TEMPLATE, write_file
from logs import configure_logging
from metrics import WorkerMetrics
from settings import Settings
from store import batches, files, messages, numbers
from store.accounts import create_account
from store.db import create_pool, migrate
from worker import prepare_process
from workflows.contracts import ValidateInput

RESULTS = Path(__file__).parent / "results"
SENDER = "+15005550006"


def resident_mib(reading: Any) -> dict[str, float]:
    """A psutil memory reading in MiB: whole, shared (memory mapped from files, on Linux)
    and the rest (anonymous: what the process allocated)."""
    return {
        "rss": reading.rss / 2**20,
        "anon": (reading.rss - reading.shared) / 2**20,
        "file": reading.shared / 2**20,
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def stored_batch(pool: asyncpg.Pool, account_id: uuid.UUID, content: bytes) -> uuid.UUID:
    """A batch of the file, recorded as the API records one (its id is its file's)."""
    file = await files.insert_bytes(
        pool, account_id, filename="recipients.csv", content_type="text/csv", content=content
    )
    batch_id: uuid.UUID = file["id"]
    request = {"global": {"agent_message": TEMPLATE}, "agent_number": SENDER}
    request["file_id"] = str(batch_id)
    recorded = await batches.create_batch(
        pool,
        batch_id=batch_id,
        account_id=account_id,
        workflow_id=f"bench-{batch_id}",
        name=None,
        agent_number=SENDER,
        request=request,
        request_hash=str(batch_id),
    )
    assert recorded is not None, "the sender was not the account's"
    return batch_id


async def measure(rows: int, runs: int, seed: int) -> dict[str, Any]:
    prepare_process(validates=True)
    with scratch_postgres("herald-validation-activity-") as (dsn, home):
        pool = await create_pool(dsn, max_size=8)
        try:
            await migrate(pool)
            account_id = await create_account(pool, "bench")
            await numbers.add_number(pool, account_id, SENDER, "sms", None)
            path = home / "recipients.csv"
            write_file(path, rows, random.Random(seed))
            content = path.read_bytes()
            settings = Settings()
            # The resources every activity class takes; validation sends and posts nothing.
            carrier = TwilioCarrier(
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token.get_secret_value(),
                api_url=settings.carrier_url,
                timeout=settings.carrier_timeout_seconds,
                connections=1,
            )
            http = httpx.AsyncClient()
            activities = ValidationActivities(
                pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
            )
            measured = []
            for _ in range(runs):
                batch_id = await stored_batch(pool, account_id, content)
                cpu, start = cpu_seconds(), time.perf_counter()
                with RssSampler(os.getpid()) as sampler:
                    before = resident_mib(sampler.at_peak)
                    result = await ActivityEnvironment().run(
                        activities.validate_recipients, ValidateInput(batch_id=str(batch_id))
                    )
                measured.append(
                    {
                        "seconds": time.perf_counter() - start,
                        "cpu_seconds": cpu_seconds() - cpu,
                        "recipients": result.recipients,
                        "rejected": result.rejected,
                        "before_mib": before,
                        "peak_mib": resident_mib(sampler.at_peak),
                    }
                )
                # The next run's COPY into an empty ledger, as this one's was.
                async with pool.acquire() as conn:
                    await messages.clear_ledger(conn, batch_id)
            await http.aclose()
            await carrier.close()
        finally:
            await pool.close()
    return {
        "date": datetime.now(UTC).isoformat(),
        "rows": rows,
        "file_mib": len(content) / 2**20,
        "runs": measured,
    }


def describe(result: dict[str, Any]) -> list[str]:
    lines = [f"Validation activity, {result['rows']:,} rows ({result['file_mib']:.1f} MiB):"]
    for index, run in enumerate(result["runs"], 1):
        before, peak = run["before_mib"], run["peak_mib"]
        lines.append(
            f"  run {index}: {run['seconds']:.2f} s, CPU {run['cpu_seconds']:.2f} s;"
            f" RSS {before['rss']:.0f} -> peak {peak['rss']:.0f} MiB"
            f" (anonymous {before['anon']:.0f} -> {peak['anon']:.0f}, files {peak['file']:.0f})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_logging("WARNING")
    result = asyncio.run(measure(args.rows, args.runs, args.seed))
    sys.stdout.write("\n".join(describe(result)) + "\n")
    args.out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    path = args.out / f"validation-activity-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"Written: {path}\n")


if __name__ == "__main__":
    main()
