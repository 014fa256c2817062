"""`make bench-throttled`: Herald against a carrier account limited in requests in flight.

Twilio refuses an account's requests beyond its concurrency limit (20429). The emulator does
the same with `max_in_flight`, each request answered after `latency_ms`: at most
limit ÷ latency messages a second can be accepted, whatever the sender does. The local stack
(two workers) sends `--repeat` batches of N rows to it, one after another, after one batch
that lets the workers learn the limit (activities/providers/in_flight.py); each batch's rate
against that capacity, and the requests refused per message sent.

Writes bench/results/throttled-<date>.json.
"""

import argparse
import functools
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import run_herald, watched_processes
from bench.stack import measure_on_stack
from deploy.local.processes import ManagedProcess
from settings import Settings


async def refused(http: httpx.AsyncClient, emulator_url: str) -> int:
    stats = (await http.get(f"{emulator_url}/_emulator/stats")).json()
    return int(stats["refused"].get("20429", 0))


async def measure(
    args: argparse.Namespace,
    settings: Settings,
    info: dict[str, str],
    processes: list[ManagedProcess],
) -> dict[str, Any]:
    emulator = info["emulator_url"]
    async with httpx.AsyncClient() as http:
        config = {"latency_ms": args.latency_ms, "max_in_flight": args.limit}
        (await http.post(f"{emulator}/_emulator/config", json=config)).raise_for_status()
        capacity = args.limit / (args.latency_ms / 1000)
        runs = []
        for index in range(args.repeat + 1):
            # run_herald starts the emulator's counts over: the refusals are the batch's.
            run = await run_herald(args.n, settings, info, watched_processes(processes), processes)
            refusals = await refused(http, emulator)
            runs.append(
                {
                    "first": index == 0,
                    "status": run["status"],
                    "sent": run["sent"],
                    "seconds": run["seconds"],
                    "messages_per_second": run["messages_per_second"],
                    "over_capacity": run["messages_per_second"] / capacity,
                    "refused": refusals,
                    "refused_per_message": refusals / max(run["sent"], 1),
                }
            )
    return {
        "date": datetime.now(UTC).isoformat(),
        "rows": args.n,
        "limit": args.limit,
        "latency_ms": args.latency_ms,
        "capacity_messages_per_second": capacity,
        "load_average": os.getloadavg(),
        "runs": runs,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['rows']:,} rows against a limit of {result['limit']} requests in flight,"
        f" {result['latency_ms']:g} ms each: at most"
        f" {result['capacity_messages_per_second']:,.0f} msg/s",
        "",
        "   run  status     msg/s  x capacity  refused  refused per message",
    ]
    for index, run in enumerate(result["runs"]):
        name = "first" if run["first"] else str(index)
        lines.append(
            f"{name:>6}  {run['status']:<9} {run['messages_per_second']:>6,.0f}"
            f"  {run['over_capacity']:>10.2f}  {run['refused']:>7,}"
            f"  {run['refused_per_message']:>19.3f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="rows of each batch")
    parser.add_argument("--limit", type=int, default=100, help="the account's requests in flight")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="each answer's delay")
    parser.add_argument("--repeat", type=int, default=2, help="batches after the first")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    return measure_on_stack("throttled", args.out, functools.partial(measure, args), report)


if __name__ == "__main__":
    sys.exit(main())
