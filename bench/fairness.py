"""`make bench-fairness`: is Herald fair between batches of different accounts?

1. Small under large: account B runs ten 100-row batches one after another alone (the
   baseline), then account A's batch of N rows sends and meanwhile B runs ten more. Each
   one's time from `POST /v1/sms/batch` to its final event, their p95 (and its ratio to the
   p95 alone), and where the time went, from the batch's Temporal histories: how long its
   activities and workflow tasks waited in the task queue before a worker took them
   (`queue_wait`), and how long its activities ran.
2. Two large: A and B each start a batch of PAIR_N rows at once; each one's rate (messages
   sent a second, from the ledger counts) over the time both were sending, and their ratio.

Absolute times on a shared 2-core machine are noise: compare runs made side by side, and read
the load average written with them. Writes bench/results/fairness-<date>.json.
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.__main__ import cpu_seconds, recipient_file, recipient_numbers
from bench.outcomes import attach
from bench.stack import bench_stack
from deploy.local.processes import ManagedProcess
from settings import Settings
from store import numbers
from store.accounts import create_account, create_api_key
from store.db import create_pool
from temporal_client import connect_temporal
from workflows.contracts import batch_workflow_id

FINAL = ("completed", "completed_partial", "failed", "cancelled")
SMALL_ROWS = 100
SMALL_BATCHES = 10
POLL_SECONDS = 0.05
# Account B's own sender: any number the emulator takes that is not one of Twilio's magic ones.
SENDER_B = "+14155550100"


async def second_account(settings: Settings) -> dict[str, str]:
    """Account B, with its own key and unlimited sender (as the dev account's)."""
    pool = await create_pool(settings.dsn, min_size=1, max_size=1)
    try:
        account_id = await create_account(pool, "fairness bench B")
        await numbers.add_number(pool, account_id, SENDER_B, "sms", None)
        key = await create_api_key(pool, account_id)
    finally:
        await pool.close()
    return {"api_key": key.key, "agent_number": SENDER_B}


def small_file(index: int) -> bytes:
    """100 distinct numbers, different for each small batch."""
    numbers_all = list(recipient_numbers((index + 1) * SMALL_ROWS))[index * SMALL_ROWS :]
    return ("phone_number\n" + "\n".join(numbers_all) + "\n").encode()


async def start(
    http: httpx.AsyncClient, account: dict[str, str], file_id: str, message: str = "fairness"
) -> None:
    answer = await http.post(
        "/v1/sms/batch",
        headers={"authorization": account["api_key"]},
        json={
            "file_id": file_id,
            "global": {"agent_number": account["agent_number"], "agent_message": message},
        },
    )
    answer.raise_for_status()


async def batch(http: httpx.AsyncClient, account: dict[str, str], batch_id: str) -> dict[str, Any]:
    answer = await http.get(
        f"/v1/sms/batch/{batch_id}", headers={"authorization": account["api_key"]}
    )
    answer.raise_for_status()
    return dict(answer.json()["data"])


async def wait_for(
    http: httpx.AsyncClient, account: dict[str, str], batch_id: str, statuses: tuple[str, ...]
) -> dict[str, Any]:
    while True:
        found = await batch(http, account, batch_id)
        if found["status"] in statuses:
            return found
        await asyncio.sleep(POLL_SECONDS)


async def event_times(
    http: httpx.AsyncClient, account: dict[str, str], batch_id: str
) -> list[tuple[str, float]]:
    """Each lifecycle event's status and the Unix time it was recorded."""
    answer = await http.get(
        f"/v1/sms/batch/{batch_id}/logs", headers={"authorization": account["api_key"]}
    )
    answer.raise_for_status()
    return [
        (e["status"], datetime.fromisoformat(e["created_at"]).timestamp())
        for e in answer.json()["data"]["events"]
    ]


async def waits(client: Client, batch_id: str, posted: float) -> dict[str, float]:
    """From the batch's histories (its own runs and its chunks'): seconds its activity and
    workflow tasks waited between scheduled and started, and how long they ran; each
    activity type's running time (`run_<type>`), and when (seconds after `posted`) its
    first one started (`<type>_started`) and its last one ended (`<type>_done`)."""
    marks: dict[str, float] = {}
    totals = {
        "activity_queue_wait": 0.0,
        "workflow_task_queue_wait": 0.0,
        "workflow_task_run": 0.0,
        "activity_run": 0.0,
    }
    workflow_id = batch_workflow_id(batch_id)
    async for execution in client.list_workflows(f'WorkflowId STARTS_WITH "{workflow_id}"'):
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        scheduled: dict[int, float] = {}
        started: dict[int, float] = {}
        types: dict[int, str] = {}
        for event in history.events:
            at = event.event_time.ToDatetime().timestamp()
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[event.event_id] = at
                types[event.event_id] = (
                    event.activity_task_scheduled_event_attributes.activity_type.name
                )
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                scheduled[event.event_id] = at
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attrs = event.activity_task_started_event_attributes
                started[attrs.scheduled_event_id] = at
                totals["activity_queue_wait"] += at - scheduled[attrs.scheduled_event_id]
                first = f"{types[attrs.scheduled_event_id]}_started"
                marks[first] = min(marks.get(first, at), at)
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                done = event.activity_task_completed_event_attributes.scheduled_event_id
                totals["activity_run"] += at - started[done]
                name = f"run_{types[done]}"
                totals[name] = totals.get(name, 0.0) + at - started[done]
                last = f"{types[done]}_done"
                marks[last] = max(marks.get(last, at), at)
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                attrs_wt = event.workflow_task_started_event_attributes
                totals["workflow_task_queue_wait"] += at - scheduled[attrs_wt.scheduled_event_id]
                started[event.event_id] = at
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                attrs_wc = event.workflow_task_completed_event_attributes
                totals["workflow_task_run"] += at - started[attrs_wc.started_event_id]
    return totals | {name: at - posted for name, at in marks.items()}


async def requests_received(emulator_url: str, body: str, posted: float) -> dict[str, float]:
    """Seconds after `posted` the carrier received the first and the last message of `body`."""
    async with httpx.AsyncClient(timeout=60) as emulator:
        answer = await emulator.get(
            f"{emulator_url}/_emulator/messages", params={"body_contains": body}
        )
    answer.raise_for_status()
    times = sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in answer.json())
    if not times:
        return {}
    return {"first_request": times[0] - posted, "last_request": times[-1] - posted}


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def small_under_large(
    settings: Settings,
    a: dict[str, str],
    b: dict[str, str],
    n: int,
    processes: list[ManagedProcess],
) -> dict[str, Any]:
    client = await connect_temporal(settings)
    async with httpx.AsyncClient(base_url=a["api_url"], timeout=120) as http:
        # The baseline: the same small batches with nothing else sending, on the same stack,
        # after one that warms it up (not counted).
        alone = []
        for i in range(SMALL_BATCHES, 2 * SMALL_BATCHES + 1):
            file_id = await attach(http, {"authorization": b["api_key"]}, small_file(i))
            posted = time.time()
            await start(http, b, file_id)
            await wait_for(http, b, file_id, FINAL)
            alone.append((await event_times(http, b, file_id))[-1][1] - posted)
        alone = alone[1:]
        large = await attach(http, {"authorization": a["api_key"]}, recipient_file(n))
        smalls = [
            await attach(http, {"authorization": b["api_key"]}, small_file(i))
            for i in range(SMALL_BATCHES)
        ]
        await start(http, a, large)
        await wait_for(http, a, large, ("in_progress_chunked", "in_progress", *FINAL))
        cpu_before, cpu_from = cpu_seconds(processes, each=True), time.time()
        runs = []
        posts = []
        for file_id in smalls:
            posted = time.time()
            posts.append(posted)
            await start(http, b, file_id, message=f"fairness {file_id}")
            await wait_for(http, b, file_id, FINAL)
            large_now = await batch(http, a, large)
            events = await event_times(http, b, file_id)
            phases = {status: round(at - posted, 3) for status, at in events}
            runs.append(
                {
                    "seconds": events[-1][1] - posted,
                    "phases": phases,
                    "large_still_sending": large_now["status"] not in FINAL,
                    "large_sent_by_then": large_now["counts"].get("sent", 0),
                    **{k: round(v, 3) for k, v in (await waits(client, file_id, posted)).items()},
                }
            )
        cpu_after, cpu_to = cpu_seconds(processes, each=True), time.time()
        await http.post(
            f"/v1/sms/batch/{large}/cancel", headers={"authorization": a["api_key"]}, json={}
        )
        await wait_for(http, a, large, FINAL)
        # When the carrier got each small batch's first and last request (read once the large
        # batch has stopped: the emulator scans every message it holds for each).
        for run, file_id, posted in zip(runs, smalls, posts, strict=True):
            run |= await requests_received(a["emulator_url"], f"fairness {file_id}", posted)
    seconds = [r["seconds"] for r in runs]
    return {
        "large_rows": n,
        "small_rows": SMALL_ROWS,
        "small_seconds": [round(s, 3) for s in seconds],
        "small_p95_seconds": p95(seconds),
        "small_max_seconds": max(seconds),
        "alone_seconds": [round(s, 3) for s in alone],
        "alone_p95_seconds": p95(alone),
        # How much slower the small batches are beside the large one than alone.
        "p95_ratio_to_alone": round(p95(seconds) / p95(alone), 2),
        "all_under_large": all(r["large_still_sending"] for r in runs),
        # Each process's share of a core meanwhile (PostgreSQL with its backends).
        "cpu_cores": {
            name: round((used - cpu_before.get(name, 0.0)) / (cpu_to - cpu_from), 2)
            for name, used in cpu_after.items()
        },
        "runs": runs,
    }


async def two_large(a: dict[str, str], b: dict[str, str], n: int) -> dict[str, Any]:
    accounts = (a, b)
    async with httpx.AsyncClient(base_url=a["api_url"], timeout=120) as http:
        files = [
            await attach(http, {"authorization": x["api_key"]}, recipient_file(n)) for x in accounts
        ]
        await asyncio.gather(*(start(http, x, f) for x, f in zip(accounts, files, strict=True)))
        samples: list[tuple[float, list[int], list[str]]] = []
        while True:
            found = await asyncio.gather(
                *(batch(http, x, f) for x, f in zip(accounts, files, strict=True))
            )
            samples.append(
                (
                    time.time(),
                    [f["counts"].get("sent", 0) for f in found],
                    [f["status"] for f in found],
                )
            )
            if any(f["status"] in FINAL for f in found):
                break
            await asyncio.sleep(0.5)
        for x, f in zip(accounts, files, strict=True):
            await wait_for(http, x, f, FINAL)
    # Both sending: from the first sample where both have sent, to the last before either ended.
    both = [s for s in samples if all(s[1]) and not any(st in FINAL for st in s[2])]
    if len(both) < 2:
        return {"rows_each": n, "error": "the batches did not send at the same time"}
    first, last = both[0], both[-1]
    span = last[0] - first[0]
    rates = [(last[1][i] - first[1][i]) / span for i in range(2)]
    return {
        "rows_each": n,
        "overlap_seconds": round(span, 2),
        "messages_per_second": [round(r, 1) for r in rates],
        "ratio": round(min(rates) / max(rates), 3) if max(rates) else 0.0,
    }


async def measure(
    settings: Settings,
    info: dict[str, str],
    processes: list[ManagedProcess],
    n: int,
    pair_n: int,
) -> dict[str, Any]:
    a = dict(info)
    b = {**await second_account(settings), "api_url": info["api_url"]}
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    result["small_under_large"] = await small_under_large(settings, a, b, n, processes)
    result["two_large"] = await two_large(a, b, pair_n)
    result["load_after"] = os.getloadavg()
    return result


LAYOUTS = {"together": "false", "apart": "true"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows of the large batch")
    parser.add_argument("--pair-n", type=int, default=50_000, help="rows of each of two large")
    parser.add_argument(
        "--layouts",
        default="together,apart",
        help="worker layouts to compare, each on a stack of its own: `together` (every worker"
        " serves the workflows and the sends, as before) and `apart` (a control worker apart)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for layout in args.layouts.split(","):
        os.environ["HERALD_CONTROL_WORKER"] = LAYOUTS[layout]
        with bench_stack() as (settings, info, processes):
            results[layout] = asyncio.run(measure(settings, info, processes, args.n, args.pair_n))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fairness-{datetime.now(UTC):%Y-%m-%dT%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for layout, result in results.items():
        small = result["small_under_large"]
        pair = result["two_large"]
        sys.stdout.write(
            f"{layout}: {SMALL_BATCHES} {SMALL_ROWS}-row batches under a"
            f" {small['large_rows']}-row batch: {small['small_seconds']} s,"
            f" p95 {small['small_p95_seconds']:.2f} s (alone {small['alone_p95_seconds']:.2f} s,"
            f" ratio {small['p95_ratio_to_alone']}; all while it sent:"
            f" {small['all_under_large']}); two {pair['rows_each']}-row batches:"
            f" {pair.get('messages_per_second')} msg/s, ratio {pair.get('ratio')};"
            f" load {result['load_before']} -> {result['load_after']}\n"
        )
    sys.stdout.write(f"Written: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
