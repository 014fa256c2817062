"""What a carrier status callback costs the API's receipts listener and the emulator.

    .venv/bin/python -m bench.callbacks [--messages 10000] [--rate 4000] [--rounds 5]
                                        [--against REF]

Starts PostgreSQL (the embedded one, in a temporary directory) and two processes: the
receipts listener (api/receipt_listener.py) with the API's pool, intake and metrics, and the
emulator's `Carrier` with its callback poster. The carrier is handed `--messages` messages at
`--rate` a second as its Messages endpoint hands them on (`_schedule_callbacks`): it posts
`sent` after its delivery delay, then `delivered` once `sent` is answered, two signed
callbacks per message, which the listener verifies and answers (a `delivered` once its
receipt is in `receipt_queue`: the sids are no message's). The CPU time (user + system,
psutil) of each process over the run is reported per 1,000 callbacks.

With `--against REF`, both processes of every other run use the code of git commit REF (an
archive of it in a temporary directory), alternated with this tree's, and each side's
median is compared. Results in bench/results/callbacks-<date>.json (or `--out`).

Only the standard library and psutil are imported here at first: a process of `--against`'s
code imports Herald's modules from that code's directory.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results"
ACCOUNT_SID = "AC" + "b" * 32
BATCH = uuid.UUID(int=1)
# The carrier's messages are handed on each tick, as many as have come due at `--rate`.
TICK_SECONDS = 0.001
# What starts a line a child process says to this one.
SAID = "callbacks:"


@dataclass(frozen=True)
class Run:
    code: str
    callbacks: int
    answers: dict[str, int]
    wall_seconds: float
    listener_cpu_seconds: float
    carrier_cpu_seconds: float
    # Of which in the kernel (system time).
    listener_system_seconds: float
    carrier_system_seconds: float

    @property
    def listener_ms_per_1000(self) -> float:
        return self.listener_cpu_seconds / self.callbacks * 1e6

    @property
    def carrier_ms_per_1000(self) -> float:
        return self.carrier_cpu_seconds / self.callbacks * 1e6


def _cpu(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user, times.system


@contextmanager
def _child(root: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A process of this module run with the code of `root`, told to stop on leaving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_LOG_LEVEL"] = "WARNING"
    argv = [sys.executable, "-m", "bench.callbacks", *args, "--root", str(root)]
    process = subprocess.Popen(
        argv, cwd=REPOSITORY, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


def _said(process: subprocess.Popen[str]) -> str:
    """The next thing a child says (`SAID` lines: its logs go to stdout too)."""
    assert process.stdout is not None
    while line := process.stdout.readline():
        if line.startswith(SAID):
            return line.removeprefix(SAID).strip()
    raise RuntimeError(f"{process.args!r} ended early")


def one_run(code: str, root: Path, database_url: str, messages: int, rate: float) -> Run:
    from deploy.local.processes import free_port

    port = str(free_port())
    with (
        _child(root, "listener", "--database-url", database_url, "--port", port) as listener,
        _child(
            root, "carrier", "--port", port, "--messages", str(messages), "--rate", str(rate)
        ) as carrier,
    ):
        for process in (listener, carrier):
            _said(process)
        processes = psutil.Process(listener.pid), psutil.Process(carrier.pid)
        before = [_cpu(p) for p in processes]
        started = time.monotonic()
        assert carrier.stdin is not None
        carrier.stdin.write("go\n")
        carrier.stdin.flush()
        answers: dict[str, int] = json.loads(_said(carrier))
        wall = time.monotonic() - started
        after = [_cpu(p) for p in processes]
    return Run(
        code=code,
        callbacks=sum(answers.values()),
        answers=answers,
        wall_seconds=round(wall, 3),
        listener_cpu_seconds=round(sum(after[0]) - sum(before[0]), 4),
        carrier_cpu_seconds=round(sum(after[1]) - sum(before[1]), 4),
        listener_system_seconds=round(after[0][1] - before[0][1], 4),
        carrier_system_seconds=round(after[1][1] - before[1][1], 4),
    )


@contextmanager
def _code_of(ref: str) -> Iterator[Path]:
    """The tree of git commit `ref`, in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="herald-callbacks-") as folder:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref],
            cwd=REPOSITORY,
            check=True,
            capture_output=True,
        ).stdout
        archive_path = Path(folder) / "code.tar"
        archive_path.write_bytes(archive)
        code = Path(folder) / "code"
        with tarfile.open(archive_path) as tar:
            tar.extractall(code, filter="data")
        yield code


async def serve_listener(database_url: str, port: int) -> None:
    """The receipts listener with the API's pool, intake and metrics, until stdin closes."""
    from api.receipt_listener import ReceiptListener
    from api.services.receipts import ReceiptIntake
    from metrics import ApiMetrics
    from settings import Settings
    from store.db import create_pool, migrate

    settings = Settings(database_url=database_url, receipts_port=port)
    pool = await create_pool(settings.dsn)
    await migrate(pool)
    intake = ReceiptIntake(pool)
    listener = ReceiptListener(settings=settings, pool=pool, intake=intake, metrics=ApiMetrics())
    await listener.start("127.0.0.1", port)
    print(SAID, "ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.close()
    await intake.close()
    await pool.close()


async def post_callbacks(port: int, messages: int, rate: float) -> None:
    """The emulator's carrier, handed `messages` messages at `rate` a second once stdin says
    go; prints its callbacks' answers, by status, once every one is answered."""
    from deploy.local.emulator import Carrier, Faults
    from settings import DEV_AUTH_TOKEN, STATUS_CALLBACK_PATH
    from store import receipts

    loop = asyncio.get_running_loop()
    carrier = Carrier(auth_token=DEV_AUTH_TOKEN, faults=Faults(), seed=1)
    await carrier.start()
    url = f"http://127.0.0.1:{port}{STATUS_CALLBACK_PATH}"
    print(SAID, "ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    handed = 0
    started = loop.time()
    all_answered = loop.create_future()

    def tick() -> None:
        nonlocal handed
        due = min(messages, int((loop.time() - started) * rate) + 1)
        for n in range(handed, due):
            to = f"+4477009{n % 100000:05d}"
            # Each message's own URL, as a batch's (keyed by a batch no ledger row is of).
            keyed = receipts.keyed_url(url, receipts.MessageKey(BATCH, n, 1))
            carrier._schedule_callbacks(keyed, ACCOUNT_SID, f"SM{n:032x}", to, "Herald")
        handed = due
        if handed < messages:
            loop.call_later(TICK_SECONDS, tick)

    def check() -> None:
        if carrier.callbacks.total() == 2 * messages:
            all_answered.set_result(None)
        else:
            loop.call_later(0.01, check)

    tick()
    check()
    await all_answered
    print(SAID, json.dumps(dict(carrier.callbacks)), flush=True)
    await carrier.stop()


def summary(runs: list[Run]) -> dict[str, Any]:
    by_code: dict[str, dict[str, float]] = {}
    for code in dict.fromkeys(r.code for r in runs):
        mine = [r for r in runs if r.code == code]
        by_code[code] = {
            "listener_ms_per_1000_callbacks": statistics.median(
                r.listener_ms_per_1000 for r in mine
            ),
            "carrier_ms_per_1000_callbacks": statistics.median(r.carrier_ms_per_1000 for r in mine),
        }
    return by_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", help="git commit whose code to alternate with this tree's")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results file goes")
    listener = sub.add_parser("listener")
    listener.add_argument("--database-url", required=True)
    carrier = sub.add_parser("carrier")
    carrier.add_argument("--messages", type=int, required=True)
    carrier.add_argument("--rate", type=float, required=True)
    for role in (listener, carrier):
        role.add_argument("--port", type=int, required=True)
        role.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    if args.role is not None:
        # Herald's modules from the code under measurement.
        sys.path.insert(0, str(args.root))
        import uvloop

        if args.role == "listener":
            uvloop.run(serve_listener(args.database_url, args.port))
        else:
            uvloop.run(post_callbacks(args.port, args.messages, args.rate))
        return 0
    return measure(args.messages, args.rate, args.rounds, args.against, args.out)


def measure(messages: int, rate: float, rounds: int, against: str | None, out: Path) -> int:
    from bench.uploads import scratch_postgres

    runs: list[Run] = []
    with scratch_postgres("herald-callbacks-") as (database_url, _):
        codes: list[tuple[str, Path]] = [("this tree", REPOSITORY)]
        with ExitStack() as stack:
            if against:
                codes.insert(0, (against, stack.enter_context(_code_of(against))))
            for _ in range(rounds):
                for code, root in codes:
                    run = one_run(code, root, database_url, messages, rate)
                    runs.append(run)
                    print(
                        f"{code:>12}: listener {run.listener_ms_per_1000:6.2f} ms,"
                        f" carrier {run.carrier_ms_per_1000:6.2f} ms per 1,000 callbacks"
                        f" (system {run.listener_system_seconds:.2f} s,"
                        f" {run.carrier_system_seconds:.2f} s; {run.answers},"
                        f" {run.wall_seconds:.1f} s)",
                        flush=True,
                    )
    result = {
        "messages": messages,
        "rate": rate,
        "load_average": os.getloadavg(),
        "medians": summary(runs),
        "runs": [asdict(r) for r in runs],
    }
    print(json.dumps(result["medians"], indent=2))
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (out / f"callbacks-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
