"""Measures recipient-file validation: rows/s against plain CSV reading, and peak memory.

    make bench-validation   (or: .venv/bin/python -m bench.validation [--rows 1000000])
    (--block-bytes N: the column path's blocks of about N bytes instead of `BLOCK_BYTES`)
    (`make bench` runs it too, after the stack's measures.)

Writes a CSV like a real list (some duplicates, invalid and blank numbers, numbers without a
`+`, UK numbers, names that need UCS-2) to disk, where the activity puts the file it gets
from PostgreSQL, then times Python's csv module merely reading it from there against
Herald's validation of it: the column path the activity takes for such a file (parse,
normalise and validate each number, render, classify segments, mark duplicates, count),
then, once, the row path it takes for files the columns do not cover. The process is
prepared first as the worker prepares itself when it starts (`worker.prepare_process`). Each
of the first two is timed `--repeats` times, alternately, and the best of each is kept; the
first column run, which compiles polars' patterns, is shown apart. PostgreSQL is not
involved: making the COPY's CSV, which the activity does while PostgreSQL takes the block
before, is timed apart. Peak RSS is the process's high-water mark (getrusage) after the
column runs.
"""

import argparse
import csv
import io
import itertools
import json
import random
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from activities.recipients.columns import BLOCK_BYTES, Block, plain_csv_file
from activities.recipients.rows import RecipientRules, Tally, build_recipients, read_rows
from activities.validation import COPY_BATCH
from worker import prepare_process

AREA_CODES = (201, 212, 213, 305, 312, 404, 415, 503, 617, 702, 718, 917)
NAMES = ("Ann", "Bob", "Chloé", "Dmitri", "Eve", "François", "Grace", "Hideo")
UCS2_NAMES = ("Жанна", "Łukasz", "Ngọc")
T = TypeVar("T")
# Runs of each side, the best kept: on a shared machine the column path, which uses both
# cores, is slowed by other work more often than `csv` reading, which uses one.
REPEATS = 7
# Issue 23's targets at 1,000,000 rows: validation at least as fast as the csv module
# merely reading the file, and the validating process's peak under 300 MB.
RATIO_TARGET = 1.0
PEAK_TARGET_MB = 300
RESULTS = Path(__file__).parent / "results"
TEMPLATE = "Hi {{first_name}}, your code is {{code}}. Reply STOP to opt out."


def number(index: int, rng: random.Random) -> str:
    """A distinct number per index: mostly US, a tenth UK mobiles, some without a `+`."""
    if index % 10 == 9:
        formatted = f"+4474{index:08d}"
    else:
        rest = index // len(AREA_CODES)
        area = AREA_CODES[index % len(AREA_CODES)]
        formatted = f"+1{area}{200 + rest // 10_000 % 800}{rest % 10_000:04d}"
    return formatted.removeprefix("+") if rng.random() < 0.05 else formatted


def write_file(path: Path, rows: int, rng: random.Random) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phone_number", "first_name", "request_data.code"])
        for index in range(rows):
            roll = rng.random()
            if roll < 0.01:
                phone = number(rng.randrange(max(index, 1)), rng)  # a duplicate
            elif roll < 0.02:
                phone = f"+1{rng.randrange(10**6)}"  # too short: invalid
            elif roll < 0.03:
                phone = ""
            else:
                phone = number(index, rng)
            name = rng.choice(UCS2_NAMES) if rng.random() < 0.03 else rng.choice(NAMES)
            writer.writerow([phone, name, f"{rng.randrange(10**6):06d}"])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def report(line: str) -> None:
    sys.stdout.write(line + "\n")


def csv_reading(source: bytes | Path) -> int:
    """The rows the csv module reads in the file (its bytes, or on disk), header aside."""
    raw = io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        return sum(1 for _ in csv.reader(text)) - 1


def by_rows(content: bytes, rules: RecipientRules) -> Tally:
    tally = Tally()
    header, rows = read_rows(content)
    outcomes = build_recipients(header, rows, rules)
    while block := list(itertools.islice(outcomes, COPY_BATCH)):
        for outcome in block:
            tally.count(outcome)
    return tally


def timed(function: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def by_columns(
    path: Path, rules: RecipientRules, block_bytes: int = BLOCK_BYTES
) -> tuple[Tally, list[Block]]:
    """The column path, as the activity takes it: the file read from disk a block at a time;
    keeps the first block, for the COPY's CSV, but no more (memory stays flat)."""
    with path.open("rb") as file:
        plain = plain_csv_file(file, rules)
        assert plain is not None, "the benchmark's file must take the column path"
        first: list[Block] = []
        for block in plain.blocks(block_bytes):
            first = first or [block]
    return plain.tally, first


def measure_validation(
    rows: int,
    *,
    seed: int = 4,
    repeats: int = REPEATS,
    keep_duplicates: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> dict[str, Any]:
    rules = RecipientRules(
        max_rows=rows,
        max_message_chars=1600,
        agent_message=TEMPLATE,
        exclude_duplicates=not keep_duplicates,
    )
    with tempfile.TemporaryDirectory() as folder:
        # On disk, as the activity has it (`validation._on_disk`), and read from there by both.
        path = Path(folder) / "recipients.csv"
        write_file(path, rows, random.Random(seed))
        file_mib = path.stat().st_size / 2**20
        rss_before = psutil.Process().memory_info().rss / 2**20
        prepare_process()
        first_seconds, _ = timed(lambda: by_columns(path, rules, block_bytes))
        csv_runs, column_runs = [], []
        for _ in range(repeats):
            seconds, read = timed(lambda: csv_reading(path))
            csv_runs.append(seconds)
            seconds, (column_tally, blocks) = timed(lambda: by_columns(path, rules, block_bytes))
            column_runs.append(seconds)
        block_rows = blocks[0].ledger.height
        copy_seconds, _ = timed(lambda: list(blocks[0].ledger_csv(uuid.uuid4(), uuid.uuid4())))
        peak_rss = peak_rss_mib()
        content = path.read_bytes()
    row_seconds, tally = timed(lambda: by_rows(content, rules))
    assert read == tally.rows == column_tally.rows == rows
    assert tally == column_tally, "the two paths disagree"
    csv_rate, column_rate = rows / min(csv_runs), rows / min(column_runs)
    return {
        "rows": rows,
        "block_bytes": block_bytes,
        "file_mib": file_mib,
        "outcomes": {
            "to_send": tally.recipients - tally.skipped,
            "skipped": tally.skipped,
            "rejected": tally.rejected,
            "segments": tally.segments,
            "gsm7": tally.gsm7,
            "ucs2": tally.ucs2,
        },
        "csv_rows_per_second": csv_rate,
        "csv_seconds": csv_runs,
        "rows_per_second": column_rate,
        "seconds": column_runs,
        "first_run_seconds": first_seconds,
        "row_path_rows_per_second": rows / row_seconds,
        "copy_csv_seconds_per_million": copy_seconds * 1e6 / max(block_rows, 1),
        "ratio": column_rate / csv_rate,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss,
        "load_average": list(psutil.getloadavg()),
    }


def describe(result: dict[str, Any]) -> list[str]:
    outcomes = result["outcomes"]
    return [
        f"file: {result['rows']:,} rows, {result['file_mib']:.1f} MiB"
        f" (validated {result['block_bytes']:,} bytes at a time)",
        f"outcomes: {outcomes['to_send']:,} to send, {outcomes['skipped']:,} skipped,"
        f" {outcomes['rejected']:,} rejected; {outcomes['segments']:,} segments"
        f" ({outcomes['gsm7']:,} GSM-7, {outcomes['ucs2']:,} UCS-2)",
        f"csv module, reading only: {result['csv_rows_per_second']:,.0f} rows/s"
        f" (best of {', '.join(f'{s:.2f}' for s in result['csv_seconds'])} s)",
        f"Herald validation:        {result['rows_per_second']:,.0f} rows/s"
        f" (best of {', '.join(f'{s:.2f}' for s in result['seconds'])} s;"
        f" first run, compiling its patterns: {result['first_run_seconds']:.2f} s)",
        f"ratio, validation rows/s over csv rows/s: {result['ratio']:.3f}"
        f" (target >= {RATIO_TARGET}, issue 23)",
        f"row path (files the columns do not cover): {result['row_path_rows_per_second']:,.0f}"
        " rows/s",
        "the ledger as CSV for COPY (not counted above):"
        f" {result['copy_csv_seconds_per_million']:.2f} s per million rows",
        f"RSS before validating: {result['rss_before_mib']:.0f} MiB;"
        f" peak RSS: {result['peak_rss_mib']:.0f} MiB"
        f" = {result['peak_rss_mib'] * 2**20 / 1e6:.0f} MB (target < {PEAK_TARGET_MB} MB,"
        " issue 23)",
        f"load average: {', '.join(f'{x:.2f}' for x in result['load_average'])}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="exclude_duplicates=false: no duplicate marking",
    )
    parser.add_argument(
        "--block-bytes",
        type=int,
        default=BLOCK_BYTES,
        help="bytes of the file validated at a time (the column path's blocks)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = measure_validation(
        args.rows,
        seed=args.seed,
        repeats=args.repeats,
        keep_duplicates=args.keep_duplicates,
        block_bytes=args.block_bytes,
    )
    for line in [json.dumps(result)] if args.json else describe(result):
        report(line)
    if not args.json:
        # (`make bench`, which asks for JSON, keeps the figures in its own results.)
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
        (RESULTS / f"validation-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
