"""What each step of the column path costs: CPU seconds per million rows, block by block.

    .venv/bin/python -m bench.validation_steps [--rows 1000000] [--block-bytes 1048576]

The file of `bench.validation` (same rows, same seed) is cut into the engine's blocks and
each block goes through the steps of `PlainCsv.blocks` one after the other, in this one
thread, each step timed apart in process CPU (polars' own threads included), so the
figures add up to the work the threads share in a real validation. Beside them: the csv
module merely reading the file, the target's yardstick, in CPU too. Process CPU, not
elapsed time, so that other work on a shared machine counts less; `bench.validation` gives
the ratio that issue 23 sets.
"""

import argparse
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from activities.recipients import columns
from activities.recipients.frames import pl
from activities.recipients.rows import (
    PHONE_COLUMN,
    RecipientRules,
    request_defaults,
    variable_sources,
)
from bench.validation import TEMPLATE, csv_reading, write_file
from worker import prepare_process

T = TypeVar("T")


def step_seconds(
    rows: int, seed: int, block_bytes: int = columns.BLOCK_BYTES
) -> tuple[dict[str, float], float]:
    """CPU seconds of each step over the whole file cut into blocks of about `block_bytes`,
    and of the csv module reading it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipients.csv"
        write_file(path, rows, random.Random(seed))
        content = path.read_bytes()
    rules = RecipientRules(
        max_rows=rows, max_message_chars=1600, agent_message=TEMPLATE, exclude_duplicates=True
    )
    prepare_process()
    plain = columns.plain_csv(content, rules)
    assert plain is not None, "the benchmark's file must take the column path"
    list(plain.blocks(block_bytes))  # once, so that polars' patterns are compiled
    header = plain.header
    sources = variable_sources(header, rules.column_mapping)
    defaults = request_defaults(rules)
    spent: dict[str, float] = defaultdict(float)

    def timed(step: str, function: Callable[..., T], *args: Any) -> T:
        started = time.process_time()
        value = function(*args)
        spent[step] += time.process_time() - started
        return value

    cut = "cut into blocks"
    tail = "skip codes, send order, tally"
    header_line, blocks = timed(cut, columns._memory_lines, content, block_bytes)
    earlier: list[pl.Series] = []
    first_seq = 0
    while lines := timed(cut, next, blocks, None):
        first_row, pieces, count = lines
        text = b"".join((header_line, *pieces))
        frame = timed(
            "parse (read_csv, checks)", columns._read_block, text, header, first_row, count
        )
        numbers = timed("numbers", columns._numbers, frame[PHONE_COLUMN], rules)
        message = timed(
            "message (render, encoding, segments)",
            columns._message,
            frame,
            header,
            rules,
            sources,
            defaults,
        )
        table = frame.select(
            pl.col(columns._ROW).alias("row_number"), numbers.alias("to_number"), *message
        )
        ledger, rejected, blank = timed(
            "rows settled one by one, blank and rejected rows",
            columns._settle_rows,
            frame,
            table,
            header,
            rules,
            sources,
            defaults,
        )
        repeated = timed(
            "duplicates", lambda ledger: columns._repeated(columns._keys(ledger), earlier), ledger
        )
        earlier.append(columns._keys(ledger))
        ledger = timed(tail, columns._with_skips, ledger, rules, repeated, first_seq)
        timed(tail, columns._tally, frame.height - blank, ledger, rejected)
        first_seq += ledger.height
        block = columns.Block(ledger, rejected)
        timed(
            "ledger as CSV for COPY",
            lambda b: list(b.ledger_csv(uuid.uuid4(), uuid.uuid4())),
            block,
        )
    started = time.process_time()
    csv_reading(content)
    return spent, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--block-bytes", type=int, default=columns.BLOCK_BYTES)
    args = parser.parse_args()
    spent, reading = step_seconds(args.rows, args.seed, args.block_bytes)
    per_million = 1e6 / args.rows
    total = sum(spent.values())
    by_cost = sorted(spent.items(), key=lambda item: -item[1])
    for step, seconds in [*by_cost, ("all steps", total)]:
        sys.stdout.write(
            f"{step:40s} {seconds * per_million:6.3f} s CPU per million rows"
            f" ({seconds / total:4.0%})\n"
        )
    sys.stdout.write(
        f"{'csv module, reading only':40s} {reading * per_million:6.3f} s CPU per million rows\n"
    )


if __name__ == "__main__":
    main()
