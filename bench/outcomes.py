"""`make bench`'s measures of what comes before and after a send: a dry run's answer time, and
the ledger's CSV export with the API process's peak memory.

    make bench-outcomes   (or: .venv/bin/python -m bench.outcomes [--n 100000 --export-n N])

`make bench` runs both on its stack: the dry run on an N-row file, the export of the batch it
sent. Alone, this module starts the local stack and exports a batch of `--export-n` rows that
is validated but scheduled a day ahead, so its ledger is whole without sending a message
(then cancelled); it writes bench/results/outcomes-<date>.json.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.stack import bench_stack
from bench.uploads import RssSampler

RESULTS = Path(__file__).parent / "results"
DRY_RUNS = 3
MIB = 2**20


async def attach(http: httpx.AsyncClient, headers: dict[str, str], content: bytes) -> str:
    attached = await http.post(
        "/v1/files/attach",
        headers=headers,
        data={"file_type": "batches"},
        files={"file": ("bench.csv", content, "text/csv")},
    )
    attached.raise_for_status()
    return str(attached.json()["data"]["file_id"])


async def measure_dry_run(
    http: httpx.AsyncClient, headers: dict[str, str], request: dict[str, Any], api_pid: int
) -> dict[str, Any]:
    """`DRY_RUNS` dry runs of the `request` (a batch request of a stored file), each timed
    from the request to the whole answer; the API's peak RSS over them."""
    seconds = []
    with RssSampler(api_pid) as sampler:
        for _ in range(DRY_RUNS):
            started = time.perf_counter()
            answer = await http.post("/v1/sms/batch", headers=headers, json=request)
            answer.raise_for_status()
            seconds.append(time.perf_counter() - started)
    found = answer.json()["data"]
    return {
        "rows": found["rows_total"],
        "to_send": found["to_send"],
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "estimated_cost": found["estimated_cost"]["total"],
        "api_peak_rss_mb": sampler.peak / MIB,
    }


async def measure_export(
    http: httpx.AsyncClient, headers: dict[str, str], batch_id: str, api_pid: int
) -> dict[str, Any]:
    """`GET /v1/sms/batch/{id}/messages?format=csv` read to its end as it streams; the
    API's RSS before and its peak during."""
    baseline = RssSampler(api_pid).peak
    lines = size = 0
    started = time.perf_counter()
    with RssSampler(api_pid) as sampler:
        async with http.stream(
            "GET", f"/v1/sms/batch/{batch_id}/messages", headers=headers, params={"format": "csv"}
        ) as reply:
            reply.raise_for_status()
            async for chunk in reply.aiter_bytes():
                lines += chunk.count(b"\n")
                size += len(chunk)
    seconds = time.perf_counter() - started
    return {
        "rows": lines - 1,
        "bytes": size,
        "seconds": seconds,
        "rows_per_second": (lines - 1) / seconds,
        "api_baseline_rss_mb": baseline / MIB,
        "api_peak_rss_mb": sampler.peak / MIB,
    }


async def scheduled_batch(
    http: httpx.AsyncClient, headers: dict[str, str], agent_number: str, content: bytes
) -> str:
    """A batch of `content` validated, its ledger written, but scheduled a day ahead: it
    sends nothing. Its id, once it waits."""
    file_id = await attach(http, headers, content)
    started = await http.post(
        "/v1/sms/batch",
        headers=headers,
        json={
            "file_id": file_id,
            "global": {"agent_number": agent_number, "agent_message": "Herald bench export"},
            "schedule_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
    )
    started.raise_for_status()
    while True:
        batch = (await http.get(f"/v1/sms/batch/{file_id}", headers=headers)).json()["data"]
        if batch["status"] == "waiting_for_scheduled_messages":
            return file_id
        if batch["status"] == "failed":
            raise RuntimeError(f"the export's batch failed: {batch['reason']}")
        await asyncio.sleep(0.5)


def report_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """`make bench`'s report lines of these measures."""
    dry, export = result["dry_run"], result["export"]
    return [
        ("Dry run", f"{dry['median_seconds']:.2f} s",
         f"{dry['rows']:,} rows, median of {', '.join(f'{s:.2f}' for s in dry['seconds'])};"
         f" target < 3 s; API peak {dry['api_peak_rss_mb']:.0f} MB"),
        ("CSV export", f"{export['rows_per_second']:,.0f} rows/s",
         f"{export['rows']:,} rows, {export['bytes'] / 1e6:.0f} MB in {export['seconds']:.1f}s"),
        ("CSV export API RSS", f"{export['api_peak_rss_mb']:.0f} MB",
         f"peak (before: {export['api_baseline_rss_mb']:.0f} MB); target < 150 MB"),
    ]  # fmt: skip


async def measure(
    info: dict[str, str],
    api_pid: int,
    *,
    body: str,
    dry_run_file: bytes,
    export_batch: str | None = None,
    export_file: bytes = b"",
) -> dict[str, Any]:
    """Dry runs of `dry_run_file`, then the export of `export_batch` (a batch of this
    stack's account), or of a scheduled batch of `export_file`, cancelled after."""
    headers = {"authorization": info["api_key"]}
    async with httpx.AsyncClient(base_url=info["api_url"], timeout=600) as http:
        request = {
            "file_id": await attach(http, headers, dry_run_file),
            "dry_run": True,
            "global": {"agent_number": info["agent_number"], "agent_message": body},
        }
        dry_run = await measure_dry_run(http, headers, request, api_pid)
        if export_batch is not None:
            export = await measure_export(http, headers, export_batch, api_pid)
        else:
            batch_id = await scheduled_batch(http, headers, info["agent_number"], export_file)
            try:
                export = await measure_export(http, headers, batch_id, api_pid)
            finally:
                await http.post(f"/v1/sms/batch/{batch_id}/cancel", headers=headers)
    return {"dry_run": dry_run, "export": export}


def main() -> int:
    parser = argparse.ArgumentParser(description="Herald's dry run and export measures")
    parser.add_argument("--n", type=int, default=100_000, help="rows of the dry run's file")
    parser.add_argument("--export-n", type=int, default=100_000, help="rows exported")
    args = parser.parse_args()
    from bench.__main__ import BODY, recipient_file

    with bench_stack() as (_, info, processes):
        [api] = [p for p in processes if p.name == "api"]
        result = asyncio.run(
            measure(
                info,
                api.pid,
                body=BODY,
                dry_run_file=recipient_file(args.n),
                export_file=recipient_file(args.export_n),
            )
        )
    result["date"] = datetime.now(UTC).isoformat()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (RESULTS / f"outcomes-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = report_rows(result)
    width = max(len(r[0]) for r in rows)
    report = "\n".join(f"{a.ljust(width)}  {b:>16}  {c}" for a, b, c in rows)
    sys.stdout.write(report + f"\n\nWritten: {RESULTS}/outcomes-{stamp}.json\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
