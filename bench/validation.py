"""Measures recipient-file validation: rows/s against plain CSV reading, and peak memory.

    make bench-validation   (or: .venv/bin/python -m bench.validation [--rows 1000000])

Writes a CSV like a real list (some duplicates, invalid and blank numbers, numbers without a
`+`, UK numbers, names that need UCS-2), reads it back as bytes as the activity gets them
from PostgreSQL, then times Python's csv module merely reading it, and Herald's whole pure
pipeline (parse, normalise and validate each number, render, classify segments, mark
duplicates, count) consuming it in COPY-sized blocks. PostgreSQL is not involved. The
phone-number pattern is built on first use, once per process; its time is shown apart and
counted in the second ratio. Peak RSS is the process's high-water mark (getrusage).
"""

import argparse
import csv
import io
import itertools
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil

from activities.batch import COPY_BATCH
from activities.recipients import RecipientRules, Tally, build_recipients, read_rows
from phones import valid_e164s

AREA_CODES = (201, 212, 213, 305, 312, 404, 415, 503, 617, 702, 718, 917)
NAMES = ("Ann", "Bob", "Chloé", "Dmitri", "Eve", "François", "Grace", "Hideo")
UCS2_NAMES = ("Жанна", "Łukasz", "Ngọc")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="exclude_duplicates=false: no set of seen numbers, the one memory that grows",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipients.csv"
        write_file(path, args.rows, random.Random(args.seed))
        content = path.read_bytes()
    rss_with_file = psutil.Process().memory_info().rss / 2**20

    started = time.perf_counter()
    text = io.TextIOWrapper(io.BytesIO(content), encoding="utf-8-sig", newline="")
    read = sum(1 for _ in csv.reader(text)) - 1
    csv_seconds = time.perf_counter() - started

    rules = RecipientRules(
        max_rows=args.rows,
        max_message_chars=1600,
        agent_message=TEMPLATE,
        exclude_duplicates=not args.keep_duplicates,
    )
    started = time.perf_counter()
    valid_e164s(["+1"])
    build_seconds = time.perf_counter() - started

    tally = Tally()
    started = time.perf_counter()
    header, rows = read_rows(content)
    outcomes = build_recipients(header, rows, rules)
    while block := list(itertools.islice(outcomes, COPY_BATCH)):
        for outcome in block:
            tally.count(outcome)
    herald_seconds = time.perf_counter() - started

    assert read == tally.rows == args.rows
    csv_rate, herald_rate = read / csv_seconds, tally.rows / herald_seconds
    report(f"file: {args.rows:,} rows, {len(content) / 2**20:.1f} MiB")
    report(
        f"outcomes: {tally.recipients - tally.skipped:,} to send, {tally.skipped:,} skipped,"
        f" {tally.rejected:,} rejected; {tally.segments:,} segments"
        f" ({tally.gsm7:,} GSM-7, {tally.ucs2:,} UCS-2)"
    )
    report(f"csv module, reading only: {csv_rate:,.0f} rows/s ({csv_seconds:.2f} s)")
    report(f"Herald validation:        {herald_rate:,.0f} rows/s ({herald_seconds:.2f} s)")
    report(f"phone-number pattern, built once per process: {build_seconds:.2f} s")
    with_build = tally.rows / (herald_seconds + build_seconds)
    report(
        f"ratio, validation rows/s over csv rows/s: {herald_rate / csv_rate:.3f}"
        f" ({with_build / csv_rate:.3f} counting the pattern build)"
    )
    report(f"RSS with the file loaded: {rss_with_file:.0f} MiB; peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
