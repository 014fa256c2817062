"""`make bench-replies`: what a reply costs the API when it answers a row of a large batch.

A reply from a batch recipient opens a conversation with the batch's fields and the row's
own request data (docs/API.md, Conversations of a batch). The local stack sends a batch of
`--n` rows whose file has two `request_data.<field>` columns (every other row's second one
blank), then posts, signed as Twilio signs it, a first reply from the last row's number, the
middle row's and the first row's; for each, the time the inbound webhook took to answer, the
API process's CPU seconds meanwhile, and the request data its conversation got. Also the time
from the batch's POST to its first sending phase (`in_progress`), and the batch's.

Writes bench/results/replies-<date>.json.
"""

import argparse
import asyncio
import functools
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from twilio.request_validator import RequestValidator

from bench.__main__ import recipient_numbers
from bench.stack import measure_on_stack
from deploy.local.processes import ManagedProcess
from settings import INBOUND_PATH, Settings
from workflows.statuses import FINAL_BATCH_STATUSES, BatchStatus

OPENING = (BatchStatus.QUEUED, BatchStatus.VALIDATING, BatchStatus.DISPATCHING)
HEADER = "phone_number,first_name,request_data.account_id,request_data.plan"


def row(index: int, number: str) -> str:
    return f"{number},Name{index},acc_{index},{'gold' if index % 2 else ''}"


def row_data(index: int) -> dict[str, str]:
    """The request data of row `index` (0 the first): a blank cell gives none."""
    return {"account_id": f"acc_{index}", **({"plan": "gold"} if index % 2 else {})}


async def reply(
    http: httpx.AsyncClient, settings: Settings, info: dict[str, str], number: str
) -> httpx.Response:
    """A message from `number` to the batch's sender, as Twilio posts it."""
    form = {
        "AccountSid": settings.twilio_account_sid,
        "Body": "yes",
        "From": number,
        "MessageSid": "SM" + secrets.token_hex(16),
        "To": info["agent_number"],
    }
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    signature = validator.compute_signature(settings.api_url + INBOUND_PATH, form)
    return await http.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": signature})


async def measure(
    rows: int, settings: Settings, info: dict[str, str], processes: list[ManagedProcess]
) -> dict[str, Any]:
    api = psutil.Process(next(p.pid for p in processes if p.name == "api"))
    headers = {"authorization": info["api_key"]}
    numbers = list(recipient_numbers(rows))
    content = "\n".join([HEADER, *(row(i, n) for i, n in enumerate(numbers))]) + "\n"
    async with httpx.AsyncClient(base_url=info["api_url"], timeout=120) as http:
        attached = await http.post(
            "/v1/files/attach",
            headers=headers,
            data={"file_type": "batches"},
            files={"file": ("replies.csv", content.encode(), "text/csv")},
        )
        batch_id = attached.json()["data"]["file_id"]
        body = {"agent_number": info["agent_number"], "agent_message": "Hi {{first_name}}"}
        started = time.perf_counter()
        posted = await http.post(
            "/v1/sms/batch", headers=headers, json={"file_id": batch_id, "global": body}
        )
        posted.raise_for_status()
        sending_after = None
        while True:
            batch = (await http.get(f"/v1/sms/batch/{batch_id}", headers=headers)).json()["data"]
            if sending_after is None and batch["status"] not in OPENING:
                sending_after = time.perf_counter() - started
            if batch["status"] in FINAL_BATCH_STATUSES:
                break
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        replies = []
        for index in (rows - 1, rows // 2, 0):
            cpu = sum(api.cpu_times()[:2])
            posted_at = time.perf_counter()
            answer = await reply(http, settings, info, numbers[index])
            took = time.perf_counter() - posted_at
            cpu = sum(api.cpu_times()[:2]) - cpu
            listed = await http.get(
                "/v1/sms/conversations", headers=headers, params={"user_number": numbers[index]}
            )
            conversations = listed.json()["data"]["conversations"]
            replies.append(
                {
                    "row": index + 1,
                    "status_code": answer.status_code,
                    "seconds": took,
                    "api_cpu_seconds": cpu,
                    "request_data": conversations[0]["request_data"] if conversations else None,
                    "expected": row_data(index),
                }
            )
            # The next reply's conversation starts apart from this one's.
            await asyncio.sleep(1)
    return {
        "date": datetime.now(UTC).isoformat(),
        "rows": rows,
        "status": batch["status"],
        "batch_seconds": seconds,
        "sending_after_seconds": sending_after,
        "replies": replies,
        "api_rss_mb": api.memory_info().rss / 2**20,
        "load_average": os.getloadavg(),
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['rows']:,} rows ({result['status']}) in {result['batch_seconds']:.1f} s,"
        f" sending after {result['sending_after_seconds']:.2f} s",
        "",
        "       row  answered in  API CPU  request data as the row gives it",
    ]
    for each in result["replies"]:
        lines.append(
            f"{each['row']:>10,}  {each['seconds']:>9.3f} s  {each['api_cpu_seconds']:>5.2f} s"
            f"  {each['request_data'] == each['expected']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows of the batch")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    return measure_on_stack("replies", args.out, functools.partial(measure, args.n), report)


if __name__ == "__main__":
    sys.exit(main())
