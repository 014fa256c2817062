"""What the send path costs per message, the worker's side and PostgreSQL's, without Temporal.

    .venv/bin/python -m bench.send_path [--rows 100000 --rounds 2]

Starts PostgreSQL (the embedded one, durability off, as the local stack runs it) and the
carrier emulator (no status callbacks, as `python -m bench` runs it), writes a batch's ledger
of `--rows` rows, and sends it with `SendingActivities.send_slice` as the worker would, on
uvloop: slices of `slice_size` rows, `chunk_window` x `slices_in_flight` of them at once, each
in Temporal's `ActivityEnvironment`. It reports the CPU per 1,000 messages of this process (the
worker's part), of PostgreSQL's processes and of the emulator's, and the send statements'
calls, time and blocks from pg_stat_statements. CPU, not wall time: the machine's other work
disturbs it far less. To compare two checkouts, run it in each in turn, several times.
"""

import argparse
import asyncio
import gc
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import psutil
import uvloop
from temporalio.testing import ActivityEnvironment

from activities.providers.twilio import TwilioCarrier
from activities.sending import SendingActivities
from bench import ledger_copy
from bench.ledger_copy import AGENT_NUMBER
from bench.uploads import READY_SECONDS, scratch_postgres
from deploy.local.processes import ManagedProcess, free_port, http_ok
from metrics import WorkerMetrics
from settings import Settings
from store.accounts import create_account
from store.db import create_pool, migrate
from worker import GC_YOUNG_THRESHOLD
from workflows.contracts import SendSliceInput

AUTH_TOKEN = "bench-send-path"


@contextmanager
def emulator(log_dir: Path) -> Iterator[tuple[str, ManagedProcess]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "deploy.local.emulator", "--port", str(port)]
    argv += ["--auth-token", AUTH_TOKEN, "--no-status-callbacks"]
    process = ManagedProcess("emulator", argv, log_dir / "emulator.log").start()
    try:
        process.wait_until(lambda: http_ok(f"{url}/_emulator/health"), READY_SECONDS)
        yield url, process
    finally:
        process.stop()


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def new_batch(pool: asyncpg.Pool, account_id: uuid.UUID, rows: int) -> uuid.UUID:
    """A batch of `rows` pending ledger rows to US numbers, and the ledger's statistics."""
    return await ledger_copy.validated_batch(pool, account_id, rows, prefix="+1201")


async def send_batch(
    sending: SendingActivities, settings: Settings, batch_id: uuid.UUID, account_id: uuid.UUID
) -> None:
    """Every slice of the batch, as many at once as the chunks' windows let run."""
    rows = await sending._pool.fetchval(
        "SELECT count(*) FROM messages WHERE batch_id = $1", batch_id
    )
    starts = iter(range(0, rows, settings.slice_size))

    async def runner() -> None:
        for start in starts:
            await ActivityEnvironment().run(
                sending.send_slice,
                SendSliceInput(
                    batch_id=str(batch_id),
                    account_id=str(account_id),
                    agent_number=AGENT_NUMBER,
                    start=start,
                    end=min(start + settings.slice_size, rows),
                ),
            )

    await asyncio.gather(
        *(runner() for _ in range(settings.chunk_window * settings.slices_in_flight))
    )


async def measure(
    database_url: str, carrier_url: str, pids: dict[str, int], rows: int, rounds: int
) -> dict:
    settings = Settings(
        database_url=database_url, twilio_api_url=carrier_url, twilio_auth_token=AUTH_TOKEN
    )
    pool = await create_pool(database_url, max_size=2 * settings.max_concurrent_activities + 4)
    await migrate(pool)
    await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    account_id = await create_account(pool, "bench-send-path")
    carrier = TwilioCarrier(
        account_sid=settings.twilio_account_sid,
        auth_token=AUTH_TOKEN,
        api_url=carrier_url,
        timeout=settings.carrier_timeout_seconds,
        connections=settings.send_concurrency * settings.max_concurrent_activities,
    )
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    runs = []
    try:
        async with httpx.AsyncClient() as http:
            sending = SendingActivities(
                pool=pool, carrier=carrier, http=http, settings=settings, metrics=WorkerMetrics()
            )
            for _ in range(rounds):
                batch_id = await new_batch(pool, account_id, rows)
                await pool.execute("SELECT pg_stat_statements_reset()")
                before = {part: tree_cpu(pid) for part, pid in pids.items()}
                worker = time.process_time()
                started = time.perf_counter()
                await send_batch(sending, settings, batch_id, account_id)
                wall = time.perf_counter() - started
                per_1000 = {"worker": (time.process_time() - worker) / rows * 1000}
                for part, pid in pids.items():
                    per_1000[part] = (tree_cpu(pid) - before[part]) / rows * 1000
                sent = await pool.fetchval(
                    "SELECT count(*) FROM messages WHERE batch_id = $1 AND status = 'sent'",
                    batch_id,
                )
                statements = await pool.fetch(
                    "SELECT calls, total_exec_time, shared_blks_hit + shared_blks_read"
                    " + shared_blks_dirtied AS blocks, left(query, 70) AS query"
                    " FROM pg_stat_statements WHERE query ~* '^ *(update|with|select array)'"
                    " AND query ~ 'messages|receipt' ORDER BY total_exec_time DESC LIMIT 6"
                )
                runs.append(
                    {
                        "rows": rows,
                        "sent": sent,
                        "wall_seconds": round(wall, 2),
                        "cpu_s_per_1000": {k: round(v, 4) for k, v in per_1000.items()},
                        "statements": [
                            {
                                "calls": s["calls"],
                                "ms": round(s["total_exec_time"], 1),
                                "blocks_per_call": round(s["blocks"] / s["calls"]),
                                "query": s["query"],
                            }
                            for s in statements
                        ],
                    }
                )
    finally:
        await carrier.close()
        await pool.close()
    return {"load_average": [round(x, 2) for x in psutil.getloadavg()], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with scratch_postgres("herald-send-path-") as (database_url, home):
        port = int(database_url.rsplit(":", 1)[1].split("/")[0])
        postmaster = next(
            p for p in psutil.process_iter(["name"]) if _listens(p, port) and p.name() == "postgres"
        )
        with emulator(home) as (carrier_url, process):
            pids = {"postgres": postmaster.pid, "emulator": process.pid}
            result = uvloop.run(measure(database_url, carrier_url, pids, args.rows, args.rounds))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr and c.laddr.port == port for c in process.net_connections("tcp"))
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return False


if __name__ == "__main__":
    main()
