"""The column path of another commit against this tree's, alternated in one process.

    .venv/bin/python -m bench.validation_against [--ref main] [--rows 1000000] [--repeats 9]

On a shared machine two runs of `bench.validation`, one a commit, differ by more than most
changes do: the csv module's reading, the yardstick, swings as much as the validation. Here
`activities/recipients` of `--ref` (from git) is imported under another name beside this
tree's, both validate the file of `bench.validation` (same rows, same seed) one after the
other, `--repeats` times, with the csv module reading it between, and each run's process
CPU (polars' threads included) and elapsed time are kept. Both must give the same ledgers
and rejected rows. CPU time, the work done, is what other work on the machine changes
least.
"""

import argparse
import importlib
import itertools
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from activities.recipients import columns
from activities.recipients.frames import pl
from bench.validation import TEMPLATE, csv_reading, report, write_file
from worker import prepare_process

ROOT = Path(__file__).resolve().parent.parent
# The name `--ref`'s package is imported under.
OTHER = "recipients_at_ref"


def package_at(ref: str, folder: Path) -> ModuleType:
    """`activities/recipients` as it is at `ref`, imported as `OTHER`; its modules import
    each other, not this tree's."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "activities/recipients"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    source = folder / "source.tar"
    source.write_bytes(archive)
    with tarfile.open(source) as tar:
        tar.extractall(folder, filter="data")
    package = folder / OTHER
    (folder / "activities" / "recipients").rename(package)
    for path in package.glob("*.py"):
        text = re.sub(r"\bactivities\.recipients\b", OTHER, path.read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{OTHER}.columns")


def outcomes(module: ModuleType, path: Path, rows: int) -> tuple[list[Any], str]:
    """Each block's ledger and rejected rows (as tuples), and the counts, of the file by
    `module`'s column path under its own rules, read from disk as the activity reads it.
    (The two trees may cut the file into blocks otherwise: the ledgers and rejected rows
    are compared whole.)"""
    rules_type = importlib.import_module(module.__name__.replace("columns", "rows")).RecipientRules
    rules = rules_type(
        max_rows=rows, max_message_chars=1600, agent_message=TEMPLATE, exclude_duplicates=True
    )
    with path.open("rb") as file:
        plain = module.plain_csv_file(file, rules)
        assert plain is not None, "the benchmark's file must take the column path"
        blocks = [
            (
                block.ledger,
                [(r.row_number, str(r.code), r.reason, r.value) for r in block.rejected],
            )
            for block in plain.blocks()
        ]
    return blocks, repr(plain.tally).split("(", 1)[1]


def measure(ref: str, rows: int, seed: int, repeats: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipients.csv"
        write_file(path, rows, random.Random(seed))
        other = package_at(ref, Path(folder))
        return _measured(ref, other, path, rows, repeats)


def _measured(ref: str, other: ModuleType, path: Path, rows: int, repeats: int) -> list[str]:
    prepare_process()
    theirs, ours = outcomes(other, path, rows), outcomes(columns, path, rows)
    assert theirs[1] == ours[1], "the counts differ"
    their_ledgers, their_rejected = zip(*theirs[0], strict=True)
    our_ledgers, our_rejected = zip(*ours[0], strict=True)
    assert pl.concat(their_ledgers).equals(pl.concat(our_ledgers)), "the ledgers differ"
    assert list(itertools.chain(*their_rejected)) == list(itertools.chain(*our_rejected)), (
        "the rejected rows differ"
    )
    del theirs, ours, their_ledgers, our_ledgers
    runs: dict[str, list[tuple[float, float]]] = {"csv module": [], ref: [], "this tree": []}
    sides: list[tuple[str, Callable[[], object]]] = [
        ("csv module", lambda: csv_reading(path)),
        (ref, lambda: outcomes(other, path, rows)),
        ("this tree", lambda: outcomes(columns, path, rows)),
    ]
    for _ in range(repeats):
        for name, function in sides:
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    lines = [f"{rows:,} rows, same ledgers and rejected rows; best and median of {repeats}"]
    for name, times in runs.items():
        walls, cpus = sorted(t[0] for t in times), sorted(t[1] for t in times)
        lines.append(
            f"{name:12s} CPU {cpus[0]:.3f} s (median {cpus[len(cpus) // 2]:.3f}),"
            f" elapsed {walls[0]:.3f} s (median {walls[len(walls) // 2]:.3f})"
        )
    csv_cpu = min(t[1] for t in runs["csv module"])
    csv_wall = min(t[0] for t in runs["csv module"])
    for name in (ref, "this tree"):
        cpu, wall = min(t[1] for t in runs[name]), min(t[0] for t in runs[name])
        lines.append(
            f"{name:12s} csv module over validation, best against best: CPU {csv_cpu / cpu:.3f},"
            f" elapsed {csv_wall / wall:.3f}"
        )
    lines.append(f"load average: {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    for line in measure(args.ref, args.rows, args.seed, args.repeats):
        report(line)


if __name__ == "__main__":
    main()
