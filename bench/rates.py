"""`make bench-rates`: how exactly a sender's rate limit holds, at 10 and 200 messages/s, for
one batch and for two batches at once on the local stack's two workers.

Rates are measured at the carrier emulator, between the first and last message received;
the error is against the limit (a limit is a ceiling: negative means slower than allowed).
"""

import argparse
import asyncio
import json
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import recipient_numbers
from bench.stack import bench_stack

FINAL = ("completed", "completed_partial", "failed", "cancelled")


async def run_batch(
    http: httpx.AsyncClient, info: dict[str, str], numbers: list[str], marker: str
) -> None:
    headers = {"authorization": info["api_key"]}
    content = ("phone_number\n" + "\n".join(numbers) + "\n").encode()
    attached = await http.post(
        "/v1/files/attach",
        headers=headers,
        data={"file_type": "batches"},
        files={"file": ("rates.csv", content, "text/csv")},
    )
    file_id = attached.json()["data"]["file_id"]
    started = await http.post(
        "/v1/sms/batch",
        headers=headers,
        json={
            "file_id": file_id,
            "global": {"agent_number": info["agent_number"], "agent_message": marker},
        },
    )
    started.raise_for_status()
    while True:
        batch = (await http.get(f"/v1/sms/batch/{file_id}", headers=headers)).json()["data"]
        if batch["status"] in FINAL:
            return
        await asyncio.sleep(0.5)


async def measure(info: dict[str, str], mps: float, seconds: float, batches: int) -> dict[str, Any]:
    per_batch = int(mps * seconds / batches) + 1
    numbers = iter(recipient_numbers(10_000_000))
    marker = f"rates {secrets.token_hex(6)}"
    async with httpx.AsyncClient(base_url=info["api_url"], timeout=60) as http:
        await http.patch(
            f"/v1/sms/numbers/{info['agent_number']}",
            headers={"authorization": info["api_key"]},
            json={"mps": mps},
        )
        lists = [[next(numbers) for _ in range(per_batch)] for _ in range(batches)]
        await asyncio.gather(*(run_batch(http, info, batch, marker) for batch in lists))
        received = (
            await http.get(
                f"{info['emulator_url']}/_emulator/messages", params={"body_contains": marker}
            )
        ).json()
    times = sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in received)
    measured = (len(times) - 1) / (times[-1] - times[0])
    return {
        "limit": mps,
        "batches": batches,
        "messages": len(times),
        "measured": measured,
        "error_percent": (measured - mps) / mps * 100,
    }


async def measure_all(info: dict[str, str], seconds: float) -> list[dict[str, Any]]:
    return [await measure(info, mps, seconds, batches) for mps in (10, 200) for batches in (1, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of each run")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    with bench_stack() as (_, info, _):
        results = asyncio.run(measure_all(info, args.seconds))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"rates-{datetime.now(UTC):%Y-%m-%dT%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        sys.stdout.write(
            f"limit {r['limit']:>5.0f}/s  {r['batches']} batch(es)  {r['messages']:>5} msgs"
            f"  measured {r['measured']:8.2f}/s  error {r['error_percent']:+.2f}%\n"
        )
    sys.stdout.write(f"Written: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
