"""`make bench`: one local stack, three ways of sending the same messages, compared as ratios.

1. Herald: a batch of N recipients through the API, from `POST /v1/sms/batch` to the final
   status webhook event.
2. Naive: one workflow with one activity per message (bench/naive.py), on the same
   Temporal server, worker settings and emulator.
3. Ceilings: bare asyncio HTTP loops posting the same messages to the same emulator with
   Herald's concurrency, no Temporal, no PostgreSQL: one on aiohttp (the targets' ceiling),
   one on Herald's own HTTP client (bench/ceiling.py).
4. Outcomes (bench/outcomes.py): a dry run of an N-row file, timed; the CSV export of
   Herald's batch, with the API process's peak RSS.
5. Validation: rows/s of validating a 1,000,000-row file against Python's csv module merely
   reading it (bench/validation.py), once the stack is down, in a process of its own.

Absolute figures on a shared 2-core machine are noise; the ratios, measured in one run on
one stack, are the result. Writes bench/results/<date>.json and a PNG of Herald's rate.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiohttp import web
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker

from activities.providers.twilio import TwilioCarrier
from bench.ceiling import post_all
from bench.naive import NaiveActivities, NaiveBatchWorkflow, NaiveInput
from bench.outcomes import attach
from bench.outcomes import measure as measure_outcomes
from bench.outcomes import report_rows as outcomes_report
from bench.stack import bench_stack
from bench.timeline import batch_steps, opening_and_tail, timeline_report, validation_steps
from deploy.local.processes import ManagedProcess, free_port
from settings import Settings
from store.db import create_pool
from store.messages import ledger_footprint
from temporal_client import connect_temporal
from workflows.contracts import batch_workflow_id

AREA_CODES = (201, 212, 213, 305, 312, 404, 415, 503, 617, 702, 718, 917)
SAMPLE_SECONDS = 0.5
# The ceiling's rate is steady after a few seconds; more messages only cost time.
CEILING_MAX = 50_000
# How long after the final event the receipts run waits for its last receipts, at least.
RECEIPTS_PATIENCE = 300.0
BODY = "Herald bench {{first_name}}"
# The sweep's lean ceiling, before and after its sizes: enough for a steady rate (or the
# largest size, if smaller).
SWEEP_CEILING_N = 20_000
# The sweep's first batch, in no row: enough slices to fill the send window (chunk_window x
# slices_in_flight of 1,000 rows), so that every size after it finds the window's carrier
# connections open.
FIRST_BATCH_ROWS = 10_000
# PostgreSQL's statements kept per size of a sweep, and the characters of each kept.
SWEEP_STATEMENTS = 8
STATEMENT_TEXT = 300
REPORTED_SETTINGS = (
    "chunk_size",
    "slice_size",
    "chunk_window",
    "slices_in_flight",
    "send_concurrency",
    "max_concurrent_activities",
    "worker_processes",
)


def recipient_numbers(count: int) -> Iterator[str]:
    """`count` distinct valid US numbers, in a fixed order."""
    for i in range(count):
        area = AREA_CODES[i % len(AREA_CODES)]
        exchange = 200 + (i // len(AREA_CODES)) % 700
        line = i // (len(AREA_CODES) * 700)
        yield f"+1{area}{exchange}{line:04d}"


def recipient_file(count: int) -> bytes:
    lines = ["phone_number,first_name"]
    lines += [f"{number},R{i}" for i, number in enumerate(recipient_numbers(count))]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Sampler:
    """Samples the emulator's received count and the worker's and API's RSS (peaks, and
    each sample's, to tell validation's share from sending's)."""

    emulator_url: str
    processes: dict[str, psutil.Process]
    samples: list[dict[str, float]] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    async def run(self, http: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        while True:
            stats = (await http.get(f"{self.emulator_url}/_emulator/stats")).json()
            sample = {"t": time.perf_counter() - started, "received": stats["received"]}
            for name, process in self.processes.items():
                rss = process.memory_info().rss / 2**20
                self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), rss)
                sample[f"rss_mb_{name}"] = rss
            self.samples.append(sample)
            await asyncio.sleep(SAMPLE_SECONDS)


def rss_over_run(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each process's RSS at the batch's POST (the first sample), what its peak grew from,
    and when it peaked, in seconds after the POST: the validating worker's peak during
    validation, or after it, while it sends."""
    names = [key.removeprefix("rss_mb_") for key in samples[0] if key.startswith("rss_mb_")]
    return {
        "rss_at_post_mb": {name: samples[0][f"rss_mb_{name}"] for name in names},
        "peak_rss_seconds": {
            name: max(samples, key=lambda sample: sample[f"rss_mb_{name}"])["t"] for name in names
        },
    }


async def final_event_receiver() -> tuple[web.AppRunner, str, asyncio.Queue]:
    events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

    async def collect(request: web.Request) -> web.Response:
        await events.put((time.perf_counter(), await request.json()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/events", events


def cpu_seconds(processes: list[ManagedProcess], *, each: bool = False) -> dict[str, float]:
    """CPU time (user + system) each part of the stack has used so far, children included
    (PostgreSQL's backends); with `each`, by process (`worker-0`, `worker-control`, ...)
    rather than by part (`worker`)."""
    used: dict[str, float] = {}
    for managed in processes:
        part = managed.name if each else managed.name.split("-")[0]
        process = psutil.Process(managed.pid)
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                used[part] = used.get(part, 0.0) + times.user + times.system
    return used


async def run_herald(
    n: int,
    settings: Settings,
    info: dict[str, str],
    processes: dict[str, psutil.Process],
    stack: list[ManagedProcess],
) -> dict[str, Any]:
    headers = {"authorization": info["api_key"]}
    runner, webhook, events = await final_event_receiver()
    async with httpx.AsyncClient(base_url=info["api_url"], timeout=600) as http:
        await http.delete(f"{info['emulator_url']}/_emulator/messages")
        file_id = await attach(http, headers, recipient_file(n))
        sampler = Sampler(info["emulator_url"], processes)
        sampling = asyncio.create_task(sampler.run(http))
        cpu_before = cpu_seconds(stack)
        started = time.perf_counter()
        posted_at = time.time()
        response = await http.post(
            "/v1/sms/batch",
            headers=headers,
            json={
                "file_id": file_id,
                "name": f"bench {n}",
                "status_webhook": webhook,
                "global": {"agent_number": info["agent_number"], "agent_message": BODY},
            },
        )
        response.raise_for_status()
        answered_at = time.time()
        sending_started = None
        while True:
            arrived, event = await events.get()
            if sending_started is None and event["status"].startswith("in_progress"):
                sending_started = arrived
            if event["status"] in ("completed", "completed_partial", "failed", "cancelled"):
                break
        sampling.cancel()
        cpu_after = cpu_seconds(stack)
        stats = (await http.get(f"{info['emulator_url']}/_emulator/stats")).json()
    await runner.cleanup()
    first = stats.get("first_received_at")
    client = await connect_temporal(settings)
    steps = await batch_steps(client, file_id, posted_at)
    elapsed = arrived - started
    sent = event.get("messages_successful", 0)
    return {
        "batch_id": file_id,
        "status": event["status"],
        "recipients": n,
        "sent": sent,
        "seconds": elapsed,
        "messages_per_second": sent / elapsed,
        # From the POST to the carrier's first request (the emulator's clock is this one's).
        "first_message_seconds": None if first is None else first - posted_at,
        # The opening's and the tail's steps, at seconds after the POST (bench/timeline.py).
        "timeline": opening_and_tail(
            steps,
            answered_at - posted_at,
            None if first is None else first - posted_at,
            None
            if stats.get("last_received_at") is None
            else stats["last_received_at"] - posted_at,
        ),
        "validation_steps_ms": validation_steps(
            [p.log_path for p in stack if p.name.startswith("worker")], file_id
        ),
        "tail_seconds": (
            None
            if stats.get("last_received_at") is None
            else elapsed - (stats["last_received_at"] - posted_at)
        ),
        "send_phase_seconds": arrived - (sending_started or started),
        "send_phase_messages_per_second": sent / (arrived - (sending_started or started)),
        "peak_rss_mb": sampler.peak_rss_mb,
        "cpu_at_post": cpu_before,
        "cpu_ms_per_1000": {
            part: (cpu_after[part] - cpu_before.get(part, 0.0)) / max(sent, 1) * 1e6
            for part in cpu_after
        },
        "samples": sampler.samples,
    }


async def run_with_receipts(
    n: int,
    settings: Settings,
    info: dict[str, str],
    processes: dict[str, psutil.Process],
    stack: list[ManagedProcess],
    *,
    pipelined: bool = True,
    delivery_delay_ms: float | None = None,
) -> dict[str, Any]:
    """Herald's run again, with the emulator posting every message's status callbacks
    (`sent`, then `delivered`) to the API's receipts listener; done when every receipt is
    applied. Unless `pipelined`, each callback goes alone on its connection, as Twilio's do.
    `delivery_delay_ms`: how long after each send its `delivered` comes (None: the
    emulator's own 50 ms, sooner than the worker writes many sids, so that a fifth to a half
    of the receipts come before their sid, the path that costs most)."""
    config = f"{info['emulator_url']}/_emulator/config"
    pool = await create_pool(settings.dsn, min_size=1, max_size=1)
    async with httpx.AsyncClient(timeout=60) as http:
        wanted: dict[str, Any] = {"status_callbacks": True, "callback_pipelining": pipelined}
        if delivery_delay_ms is not None:
            wanted["delivery_delay_ms"] = delivery_delay_ms
        configured = await http.post(config, json=wanted)
        configured.raise_for_status()
        try:
            await reset_statement_stats(pool)
            herald = await run_herald(n, settings, info, processes, stack)
            ended = time.perf_counter()
            headers = {"authorization": info["api_key"]}
            url = f"{info['api_url']}/v1/sms/batch/{herald['batch_id']}"
            while True:
                counts = (await http.get(url, headers=headers)).json()["data"]["counts"]
                final = sum(counts.get(s, 0) for s in ("delivered", "undelivered", "failed"))
                waited = time.perf_counter() - ended
                if final >= herald["sent"] or waited > max(RECEIPTS_PATIENCE, herald["seconds"]):
                    break
                await asyncio.sleep(0.2)
            # From the POST, as Herald's rate is.
            applied_seconds = herald["seconds"] + time.perf_counter() - ended
            cpu_after = cpu_seconds(stack)
            stats = await callbacks_answered(http, info["emulator_url"], 2 * herald["sent"])
            statements = await statement_stats(pool, SWEEP_STATEMENTS)
        finally:
            await http.post(config, json={"status_callbacks": False})
            await pool.close()
    return {
        **herald,
        "callback_pipelining": pipelined,
        "delivery_delay_ms": configured.json()["delivery_delay_ms"],
        "counts": counts,
        # Status callbacks the emulator posted, by the API's answer ("no answer": none came).
        "callbacks": stats["callbacks"],
        "cpu_seconds_to_applied": {
            part: cpu_after[part] - herald["cpu_at_post"].get(part, 0.0) for part in cpu_after
        },
        "receipts_applied": final,
        # PostgreSQL's top statements over the run (sends and receipts).
        "top_statements": statements,
        "applied_seconds": applied_seconds,
        "applied_messages_per_second": final / applied_seconds,
    }


def compared_with_receipts(
    on_runs: list[dict[str, Any]], off: dict[str, Any], *, pipelined: bool
) -> dict[str, Any] | None:
    """Herald with receipts on (`on_runs`) against off (`off`, herald_means of its runs), run
    in the order off, on, on, off: rates of one batch size on this machine drift and swing by
    a third from run to run, and a drift over the four runs cancels in the means the ratio is
    taken of. None without receipts runs."""
    if not on_runs:
        return None
    each_cpu = [receipts_cpu(off["cpu_ms_per_1000"], on) for on in on_runs]
    return {
        "runs": on_runs,
        "callback_pipelining": pipelined,
        "delivery_delay_ms": on_runs[0]["delivery_delay_ms"],
        "messages_per_second": mean_of(on_runs, "messages_per_second"),
        "applied_messages_per_second": mean_of(on_runs, "applied_messages_per_second"),
        "off_runs": off["runs"],
        "off_messages_per_second": off["messages_per_second"],
        "cpu_ms_per_1000_callbacks": {
            part: sum(cpu[part] for cpu in each_cpu) / len(each_cpu) for part in each_cpu[0]
        },
    }


def herald_means(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Herald's runs of one batch size: each one's rate and status, and their means."""
    return {
        "runs": [r["messages_per_second"] for r in runs],
        "statuses": [r["status"] for r in runs],
        "messages_per_second": mean_of(runs, "messages_per_second"),
        "send_phase_messages_per_second": mean_of(runs, "send_phase_messages_per_second"),
        "cpu_ms_per_1000": {
            part: sum(r["cpu_ms_per_1000"].get(part, 0.0) for r in runs) / len(runs)
            for part in runs[0]["cpu_ms_per_1000"]
        },
    }


def mean_of(runs: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


async def callbacks_answered(
    http: httpx.AsyncClient, emulator_url: str, expected: int
) -> dict[str, Any]:
    """The emulator's stats once it has the answers to `expected` callbacks (a final receipt
    can be applied just before its 204 is back at the emulator), or after 10 s."""
    waited = time.perf_counter()
    while True:
        stats = (await http.get(f"{emulator_url}/_emulator/stats")).json()
        if sum(stats["callbacks"].values()) >= expected or time.perf_counter() - waited > 10:
            return stats
        await asyncio.sleep(0.1)


async def run_naive(n: int, settings: Settings, info: dict[str, str], label: str) -> dict[str, Any]:
    client = await connect_temporal(settings)
    carrier = TwilioCarrier(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        api_url=info["emulator_url"],
        timeout=settings.carrier_timeout_seconds,
    )
    queue = "herald-bench-naive"
    try:
        async with Worker(
            client,
            task_queue=queue,
            workflows=[NaiveBatchWorkflow],
            activities=[NaiveActivities(carrier).naive_send_one],
            max_concurrent_activities=settings.max_concurrent_activities,
        ):
            started = time.perf_counter()
            sent = await client.execute_workflow(
                NaiveBatchWorkflow.run,
                NaiveInput(
                    recipients=list(recipient_numbers(n)),
                    agent_number=info["agent_number"],
                    body="Herald bench naive",
                ),
                id=f"bench-naive-{label}",
                task_queue=queue,
            )
            elapsed = time.perf_counter() - started
    finally:
        await carrier.close()
    return {"sent": sent, "seconds": elapsed, "messages_per_second": sent / elapsed}


async def run_ceiling(
    n: int, settings: Settings, info: dict[str, str], *, lean: bool, herald_form: bool = False
) -> dict[str, Any]:
    """A ceiling run of `n` messages. Its form is To, From and Body; with `herald_form`, also
    the StatusCallback URL of each message, as Herald's worker sends it (the form Herald
    posts, which costs the carrier more to read)."""
    concurrency = settings.chunk_window * settings.slices_in_flight * settings.send_concurrency
    async with httpx.AsyncClient() as http:
        await http.delete(f"{info['emulator_url']}/_emulator/messages")
    sent, elapsed = await post_all(
        url=info["emulator_url"],
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        agent_number=info["agent_number"],
        messages=((to, f"Herald bench R{i}") for i, to in enumerate(recipient_numbers(n))),
        concurrency=concurrency,
        # The URL the workers give the carrier (their settings are the stack's).
        status_callback=settings.status_callback_url if herald_form else None,
        lean=lean,
    )
    return {
        "sent": sent,
        "seconds": elapsed,
        "messages_per_second": sent / elapsed,
        "concurrency": concurrency,
    }


async def history_and_storage(settings: Settings, batch_id: str) -> dict[str, Any]:
    client = await connect_temporal(settings)
    workflow_id = batch_workflow_id(batch_id)
    # The final event comes just before the workflow closes; visibility's history lengths are
    # as of each run's last update, so wait for the close and ask each run itself.
    await client.get_workflow_handle(workflow_id).result()
    runs = [
        await client.get_workflow_handle(execution.id, run_id=execution.run_id).describe()
        async for execution in client.list_workflows(f'WorkflowId STARTS_WITH "{workflow_id}"')
    ]
    largest = max(runs, key=lambda r: r.history_length)
    # What Temporal stores and bills grows with these: every run's history, by event type.
    events: Counter[str] = Counter()
    for run in runs:
        history = await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
        events.update(
            EventType.Name(e.event_type).removeprefix("EVENT_TYPE_").lower() for e in history.events
        )
    pool = await create_pool(settings.dsn, min_size=1, max_size=1)
    try:
        rows, size = await ledger_footprint(pool)
    finally:
        await pool.close()
    return {
        "workflow_runs": len(runs),
        "largest_history_events": largest.history_length,
        "largest_history_workflow": largest.id,
        "ledger_rows": rows,
        "history_events": sum(events.values()),
        "history_events_by_type": dict(events.most_common()),
        "ledger_bytes_per_1000": size / rows * 1000 if rows else 0,
    }


def watched_processes(processes: list[ManagedProcess]) -> dict[str, psutil.Process]:
    """The workers and the API, whose RSS the runs sample."""
    return {
        p.name: psutil.Process(p.pid) for p in processes if p.name.startswith(("worker", "api"))
    }


async def measure(
    args: argparse.Namespace,
    settings: Settings,
    info: dict[str, str],
    processes: list[ManagedProcess],
) -> dict[str, Any]:
    watched = watched_processes(processes)
    # The baselines run before and after Herald and are averaged: this machine's speed
    # drifts over a run, and a ratio should not depend on which came first.
    ceiling_n = min(args.n, CEILING_MAX)
    naive_runs = [await run_naive(args.naive_n, settings, info, "before")]
    ceiling_runs = [await run_ceiling(ceiling_n, settings, info, lean=False)]
    lean_runs = [await run_ceiling(ceiling_n, settings, info, lean=True)]
    lean_form_runs = [await run_ceiling(ceiling_n, settings, info, lean=True, herald_form=True)]
    herald = await run_herald(args.n, settings, info, watched, processes)
    # Before the receipts runs add their batches' rows to the ledger.
    footprint = await history_and_storage(settings, herald["batch_id"])
    on_runs = (
        [
            await run_with_receipts(
                args.n,
                settings,
                info,
                watched,
                processes,
                pipelined=not args.callbacks_one_by_one,
                delivery_delay_ms=args.delivery_delay_ms,
            )
            for _ in range(2)
        ]
        if args.receipts
        else []
    )
    # Herald runs twice too, as the baselines do: its rate swings from run to run as theirs
    # do, and a ratio of one run's would swing with it. With receipts, the runs go off, on,
    # on, off (compared_with_receipts).
    both = herald_means([herald, await run_herald(args.n, settings, info, watched, processes)])
    receipts = compared_with_receipts(on_runs, both, pipelined=not args.callbacks_one_by_one)
    outcomes = await measure_outcomes(
        info,
        watched["api"].pid,
        body=BODY,
        dry_run_file=recipient_file(args.n),
        export_batch=herald["batch_id"],
    )
    lean_form_runs.append(await run_ceiling(ceiling_n, settings, info, lean=True, herald_form=True))
    lean_runs.append(await run_ceiling(ceiling_n, settings, info, lean=True))
    ceiling_runs.append(await run_ceiling(ceiling_n, settings, info, lean=False))
    naive_runs.append(await run_naive(args.naive_n, settings, info, "after"))
    naive, ceiling = averaged(naive_runs), averaged(ceiling_runs)
    lean_ceiling = averaged(lean_runs)
    lean_ceiling_herald_form = averaged(lean_form_runs)
    return {
        "date": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {k: getattr(settings, k) for k in REPORTED_SETTINGS},
        "herald": herald,
        "herald_runs": both,
        "herald_receipts": receipts,
        "naive": naive,
        "ceiling": ceiling,
        "lean_ceiling": lean_ceiling,
        "lean_ceiling_herald_form": lean_ceiling_herald_form,
        "footprint": footprint,
        **outcomes,
        "ratios": {
            "herald_over_naive": both["messages_per_second"] / naive["messages_per_second"],
            "herald_over_ceiling": both["messages_per_second"] / ceiling["messages_per_second"],
            "send_phase_over_ceiling": both["send_phase_messages_per_second"]
            / ceiling["messages_per_second"],
            "herald_over_lean_ceiling": both["messages_per_second"]
            / lean_ceiling["messages_per_second"],
            "herald_over_lean_ceiling_herald_form": both["messages_per_second"]
            / lean_ceiling_herald_form["messages_per_second"],
            **(
                {
                    "receipts_on_over_off": receipts["messages_per_second"]
                    / receipts["off_messages_per_second"],
                    "receipts_applied_over_off": receipts["applied_messages_per_second"]
                    / receipts["off_messages_per_second"],
                }
                if receipts
                else {}
            ),
        },
    }


async def reset_statement_stats(pool: asyncpg.Pool) -> None:
    """Start pg_stat_statements' counts over (`statement_stats` reads them)."""
    await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await pool.execute("SELECT pg_stat_statements_reset()")


async def statement_stats(pool: asyncpg.Pool, top: int) -> list[dict[str, Any]]:
    """PostgreSQL's `top` statements by total execution time since the last reset
    (pg_stat_statements; the local stack preloads it), the triggers' own included."""
    rows = await pool.fetch(
        "SELECT query, calls, total_exec_time, rows, shared_blks_hit + shared_blks_read AS blocks,"
        " total_plan_time, plans, toplevel, jit_generation_time + jit_inlining_time"
        " + jit_optimization_time + jit_emission_time AS jit_time FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " ORDER BY total_exec_time DESC LIMIT $1",
        top,
    )
    return [
        {
            "query": " ".join(r["query"].split())[:STATEMENT_TEXT],
            "calls": r["calls"],
            "total_ms": r["total_exec_time"],
            "mean_ms": r["total_exec_time"] / max(r["calls"], 1),
            "rows": r["rows"],
            "blocks_per_call": r["blocks"] / max(r["calls"], 1),
            "toplevel": r["toplevel"],
            # Compiling the statement's plan (PostgreSQL's JIT), in total_ms.
            "jit_ms": r["jit_time"],
        }
        for r in rows
    ]


async def measure_sweep(
    args: argparse.Namespace,
    settings: Settings,
    info: dict[str, str],
    processes: list[ManagedProcess],
) -> dict[str, Any]:
    """Herald at each size in `args.sweep`, smallest first, on one stack; the naive baseline
    once (at `args.naive_n`), the lean ceiling (bare, and posting Herald's form) before the
    first size and after each: a size's ratio is to the mean of the two runs on either side
    of it, as this machine's speed drifts over a sweep.

    First, a batch that is in no row (FIRST_BATCH_ROWS, or the largest size if smaller): the
    stack's first, whose slices open their connections to the carrier and prepare their
    statements on new pool connections (at 10,000 rows its first message came after
    0.28-0.36 s against 0.15-0.18 s later on). It is reported apart (`first_batch`), so that
    each size's rows are of a running stack's batches, as a user's are."""
    watched = watched_processes(processes)
    pool = await create_pool(settings.dsn, min_size=1, max_size=1)
    try:
        naive = await run_naive(args.naive_n, settings, info, "sweep")
        first_n = min(FIRST_BATCH_ROWS, max(args.sweep))
        first_batch = await run_herald(first_n, settings, info, watched, processes)
        first_batch.pop("samples")
        ceiling_n = min(SWEEP_CEILING_N, max(args.sweep))
        lean_runs = [await run_ceiling(ceiling_n, settings, info, lean=True)]
        lean_form_runs = [await run_ceiling(ceiling_n, settings, info, lean=True, herald_form=True)]
        sizes = []
        for n in [size for size in args.sweep for _ in range(args.repeat)]:
            await reset_statement_stats(pool)
            herald = await run_herald(n, settings, info, watched, processes)
            herald.update(rss_over_run(herald.pop("samples")))
            herald["top_statements"] = await statement_stats(pool, SWEEP_STATEMENTS)
            lean_runs.append(await run_ceiling(ceiling_n, settings, info, lean=True))
            lean_form_runs.append(
                await run_ceiling(ceiling_n, settings, info, lean=True, herald_form=True)
            )
            beside = averaged(lean_runs[-2:])
            herald["lean_ceiling_messages_per_second"] = beside["messages_per_second"]
            herald["over_lean_ceiling"] = (
                herald["messages_per_second"] / beside["messages_per_second"]
            )
            herald["over_lean_ceiling_herald_form"] = (
                herald["messages_per_second"] / averaged(lean_form_runs[-2:])["messages_per_second"]
            )
            herald["over_naive"] = herald["messages_per_second"] / naive["messages_per_second"]
            sizes.append(herald)
    finally:
        await pool.close()
    return {
        "date": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load_average": os.getloadavg(),
        "settings": {k: getattr(settings, k) for k in REPORTED_SETTINGS},
        "naive": naive,
        "lean_ceiling": averaged(lean_runs),
        "lean_ceiling_herald_form": averaged(lean_form_runs),
        "first_batch": first_batch,
        "sizes": sizes,
    }


def sweep_report(result: dict[str, Any]) -> str:
    lean, naive = result["lean_ceiling"], result["naive"]
    parts = sorted({part for size in result["sizes"] for part in size["cpu_ms_per_1000"]})
    header = [
        "size",
        "msg/s",
        "lean beside",
        "x lean",
        "x lean form",
        "x naive",
        "first msg s",
        "tail s",
        *(f"{p} cpu" for p in parts),
    ]
    lines = [header]
    for size in result["sizes"]:
        first = size["first_message_seconds"]
        lines.append(
            [
                f"{size['recipients']:,}",
                f"{size['messages_per_second']:,.0f}",
                f"{size['lean_ceiling_messages_per_second']:,.0f}",
                f"{size['over_lean_ceiling']:.2f}",
                f"{size['over_lean_ceiling_herald_form']:.2f}",
                f"{size['over_naive']:.1f}",
                "-" if first is None else f"{first:.2f}",
                "-" if size.get("tail_seconds") is None else f"{size['tail_seconds']:.2f}",
                *(f"{size['cpu_ms_per_1000'].get(p, 0.0) / 1000:.3f}" for p in parts),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )
    timelines = "\n".join(
        f"{size['recipients']:,} rows, seconds after the POST:\n{timeline_report(size)}"
        for size in result["sizes"]
    )
    return (
        f"{table}\n\n{timelines}\n\nCPU in seconds per 1,000 messages; x lean: to the mean of"
        f" the lean ceiling runs before and after the size (all: {spread(lean['runs'])} msg/s);"
        f" x lean form: the same, the ceiling posting Herald's form"
        f" (all: {spread(result['lean_ceiling_herald_form']['runs'])} msg/s);"
        f" naive {naive['messages_per_second']:,.0f} msg/s ({naive['sent']:,} sent);"
        f" load average {' '.join(f'{x:.2f}' for x in result['load_average'])}"
        f"\n\nThe stack's first batch, in no row: {first_batch_report(result)}"
    )


def first_batch_report(result: dict[str, Any]) -> str:
    first = result["first_batch"]
    at = first["first_message_seconds"]
    return (
        f"{first['recipients']:,} rows, {first['messages_per_second']:,.0f} msg/s"
        f" ({first['messages_per_second'] / result['lean_ceiling']['runs'][0]:.2f}x the lean"
        f" ceiling's first run), first message after {'-' if at is None else f'{at:.2f}'} s"
    )


def sweep_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    sizes = result["sizes"]
    labels = [f"{s['recipients']:,}" for s in sizes]
    figure, axis = pyplot.subplots(figsize=(9, 4))
    axis.bar(labels, [s["messages_per_second"] for s in sizes], label="Herald")
    lean = [s["lean_ceiling_messages_per_second"] for s in sizes]
    axis.plot(labels, lean, "o-.", color="black", label="lean ceiling beside")
    axis.plot(labels, [0.45 * rate for rate in lean], "o--", color="grey", label="0.45x of it")
    axis.axhline(result["naive"]["messages_per_second"], linestyle=":", label="naive")
    axis.set_xlabel("recipients in the batch")
    axis.set_ylabel("messages/s, POST to final event")
    axis.set_title("Herald by batch size")
    # Room above the lean ceiling for the legend.
    axis.set_ylim(0, max(lean) * 1.4)
    axis.legend(loc="upper left", ncols=4)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    samples = result["herald"]["samples"]
    times = [s["t"] for s in samples[1:]]
    rates = [
        (b["received"] - a["received"]) / (b["t"] - a["t"]) for a, b in itertools.pairwise(samples)
    ]
    figure, axis = pyplot.subplots(figsize=(9, 4))
    axis.plot(times, rates, label="Herald")
    axis.axhline(result["ceiling"]["messages_per_second"], linestyle="--", label="ceiling")
    axis.axhline(
        result["lean_ceiling"]["messages_per_second"], linestyle="-.", label="lean ceiling"
    )
    axis.axhline(result["naive"]["messages_per_second"], linestyle=":", label="naive")
    axis.set_xlabel("seconds since POST /v1/sms/batch")
    axis.set_ylabel("messages/s received by the emulator")
    axis.set_title(f"Herald, {result['herald']['recipients']:,} recipients")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def spread(rates: list[float]) -> str:
    return " and ".join(f"{rate:,.0f}" for rate in rates)


def report(result: dict[str, Any]) -> str:
    herald, naive, ceiling = result["herald"], result["naive"], result["ceiling"]
    both = result["herald_runs"]
    lean, lean_form = result["lean_ceiling"], result["lean_ceiling_herald_form"]
    ratios, footprint = result["ratios"], result["footprint"]
    per_million = 1e6 / footprint["ledger_rows"]
    by_type = {k: v * per_million for k, v in footprint["history_events_by_type"].items()}
    rss, settings = herald["peak_rss_mb"], result["settings"]
    validation = result["validation"]
    rows = [
        ("Herald end to end", f"{both['messages_per_second']:,.0f} msg/s",
         f"mean of {spread(both['runs'])} ({', '.join(both['statuses'])}); the first:"
         f" {herald['sent']:,} sent in {herald['seconds']:.1f}s"),
        ("Herald send phase", f"{both['send_phase_messages_per_second']:,.0f} msg/s",
         f"from the first in_progress event; the first run's {herald['send_phase_seconds']:.1f}s"),
        *receipts_report(result),
        ("Naive (1 activity/msg)", f"{naive['messages_per_second']:,.0f} msg/s",
         f"mean of {spread(naive['runs'])}, {naive['sent']:,} sent"),
        ("Ceiling (asyncio loop)", f"{ceiling['messages_per_second']:,.0f} msg/s",
         f"aiohttp; mean of {spread(ceiling['runs'])}, {ceiling['concurrency']} in flight"),
        ("Lean ceiling", f"{lean['messages_per_second']:,.0f} msg/s",
         f"Herald's HTTP client alone; mean of {spread(lean['runs'])}"),
        ("  posting Herald's form", f"{lean_form['messages_per_second']:,.0f} msg/s",
         f"each message with its StatusCallback URL; mean of {spread(lean_form['runs'])}"),
        ("Herald / naive", f"{ratios['herald_over_naive']:.1f}x", "target >= 20x"),
        ("Herald / ceiling", f"{ratios['herald_over_ceiling']:.2f}x", "target >= 0.5x"),
        ("Send phase / ceiling", f"{ratios['send_phase_over_ceiling']:.2f}x", ""),
        ("Herald / lean ceiling", f"{ratios['herald_over_lean_ceiling']:.2f}x", ""),
        ("  posting Herald's form", f"{ratios['herald_over_lean_ceiling_herald_form']:.2f}x",
         "the ceiling's messages as Herald sends them"),
        ("Peak RSS worker / API",
         f"{max(v for k, v in rss.items() if k.startswith('worker')):.0f} MB"
         f" / {rss['api']:.0f} MB",
         f"target: worker < 400 MB; {settings['worker_processes']} workers"),
        ("Largest workflow history", f"{footprint['largest_history_events']:,} events",
         f"{footprint['workflow_runs']} runs; target < 10,000"),
        ("CPU per 1,000 msgs",
         f"{sum(both['cpu_ms_per_1000'].values()) / 1000:.2f} s",
         ", ".join(f"{k} {v / 1000:.2f}" for k, v in both["cpu_ms_per_1000"].items())),
        ("Temporal per 1M msgs",
         f"{footprint['history_events'] * per_million:,.0f} events",
         f"activities {by_type.get('activity_task_scheduled', 0):,.0f},"
         f" workflow tasks {by_type.get('workflow_task_completed', 0):,.0f},"
         f" timers {by_type.get('timer_started', 0):,.0f}"),
        ("Ledger per 1,000 msgs", f"{footprint['ledger_bytes_per_1000'] / 1024:.0f} KiB",
         f"{footprint['ledger_rows']:,} rows"),
        *outcomes_report(result),
        ("Validation", f"{validation['rows_per_second']:,.0f} rows/s",
         f"{validation['rows']:,} rows; row path {validation['row_path_rows_per_second']:,.0f}"
         f" rows/s; peak RSS {validation['peak_rss_mib']:.0f} MiB"),
        ("csv module, reading", f"{validation['csv_rows_per_second']:,.0f} rows/s", ""),
        ("Validation / reading", f"{validation['ratio']:.2f}x", "target >= 1.0x"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b:>16}  {c}" for a, b, c in rows)


def receipts_report(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    receipts, ratios = result.get("herald_receipts"), result["ratios"]
    if not receipts:
        return []
    runs = receipts["runs"]
    callbacks: Counter[str] = Counter()
    for run in runs:
        callbacks.update(run["callbacks"])
    last = runs[-1]
    return [
        ("Herald, receipts on", f"{receipts['messages_per_second']:,.0f} msg/s",
         f"mean of {spread([r['messages_per_second'] for r in runs])}"
         f" ({', '.join(r['status'] for r in runs)}); {ratios['receipts_on_over_off']:.2f}x"
         f" of receipts off (mean of {spread(receipts['off_runs'])},"
         " run before and after), target >= 0.7x; callbacks"
         f" {'pipelined' if receipts['callback_pipelining'] else 'one by one'},"
         f" delivered {receipts['delivery_delay_ms']:,.0f} ms after the send"),
        ("  every receipt applied", f"{receipts['applied_messages_per_second']:,.0f} msg/s",
         " and ".join(f"{r['receipts_applied']:,} of {r['sent']:,}" for r in runs)
         + f" final receipts applied; {ratios['receipts_applied_over_off']:.2f}x of receipts off"),
        ("  status callbacks", f"{callbacks.total():,}",
         "answered " + ", ".join(f"{k}: {v:,}" for k, v in sorted(callbacks.items()))),
        *(
            ("  receipts' statement", f"{s['calls']:,} calls",
             f"{s['rows'] / max(s['calls'], 1):,.1f} rows and {s['mean_ms']:.2f} ms each: "
             + s["query"][:60])
            for s in last.get("top_statements", []) if "receipt" in s["query"]
        ),
        ("  CPU per 1,000 callbacks",
         f"{sum(receipts['cpu_ms_per_1000_callbacks'].values()) / 1000:.2f} s",
         "over receipts off: " + ", ".join(
             f"{k} {v / 1000:.3f}" for k, v in receipts["cpu_ms_per_1000_callbacks"].items())),
    ]  # fmt: skip


def receipts_cpu(off_ms_per_1000: dict[str, float], on: dict[str, Any]) -> dict[str, float]:
    """What the receipts cost each part: its CPU in the receipts run `on`, until every
    receipt was applied, less its CPU per message without them (`off_ms_per_1000`, ms per
    1,000 messages of the same batch), per 1,000 callbacks."""
    callbacks = max(sum(on["callbacks"].values()), 1)
    return {
        part: (used - off_ms_per_1000.get(part, 0.0) * on["sent"] / 1e6) / callbacks * 1e6
        for part, used in on["cpu_seconds_to_applied"].items()
    }


def averaged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        **runs[0],
        "sent": sum(r["sent"] for r in runs),
        "seconds": sum(r["seconds"] for r in runs),
        "messages_per_second": mean_of(runs, "messages_per_second"),
        "runs": [r["messages_per_second"] for r in runs],
    }


def validation_in_own_process(rows: int) -> dict[str, Any]:
    """`bench.validation`'s measure, in a fresh process as the worker validates in its
    own, apart from what the stack's measures leave behind in this one."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.validation", "--rows", str(rows), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def sizes_list(text: str) -> list[int]:
    """`1000,10000,1000` -> [1000, 10000]: distinct, smallest first."""
    return sorted({int(size) for size in text.split(",") if size.strip()})


def main() -> int:
    parser = argparse.ArgumentParser(description="Herald's benchmark")
    parser.add_argument("--n", type=int, default=100_000, help="recipients in Herald's batch")
    parser.add_argument("--naive-n", type=int, default=1000, help="messages for the baseline")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--validation-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--receipts",
        action="store_true",
        help="run Herald's batch again with the emulator's status callbacks on, and compare",
    )
    parser.add_argument(
        "--callbacks-one-by-one",
        action="store_true",
        help="with --receipts: the emulator posts each status callback alone on its connection,"
        " as Twilio does (by default the callbacks due at once are pipelined)",
    )
    parser.add_argument(
        "--delivery-delay-ms",
        type=float,
        help="with --receipts: each message's `delivered` callback this long after its send"
        " (default: the emulator's 50 ms, which a fifth to a half of the receipts beat their"
        " sid's write with; a real carrier's delivery receipts take seconds)",
    )
    parser.add_argument(
        "--sweep",
        type=sizes_list,
        help="comma-separated batch sizes: Herald at each (msg/s, CPU per part, time to first"
        " message, PostgreSQL's top statements) against one naive run and the lean ceiling",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --sweep: run each size this many times in a row (each run its own row)",
    )
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        with bench_stack() as (settings, info, processes):
            result = asyncio.run(measure_sweep(args, settings, info, processes))
        path = args.out / f"sweep-{stamp}"
        path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        sweep_chart(result, path.with_suffix(".png"))
        sys.stdout.write(sweep_report(result) + f"\n\nWritten: {path}.json and .png\n")
        return 0
    with bench_stack() as (settings, info, processes):
        result = asyncio.run(measure(args, settings, info, processes))
    result["validation"] = validation_in_own_process(args.validation_rows)
    result["ratios"]["validation_over_csv_reading"] = result["validation"]["ratio"]
    (args.out / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, args.out / f"{stamp}.png")
    sys.stdout.write(report(result) + f"\n\nWritten: {args.out / stamp}.json and .png\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
