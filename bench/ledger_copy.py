"""What a COPY of ledger rows costs PostgreSQL, and which part of the table costs what.

    make bench-ledger-copy   (or: .venv/bin/python -m bench.ledger_copy [--rows 200000])

Starts PostgreSQL (the embedded one, in a temporary directory), migrates, and COPYs `--rows`
ledger rows of one batch into `messages` as the validation does (CSV, `RECIPIENT_COLUMNS`),
once per variant of the table, each in its own transaction: as migrated; with the foreign
key `messages.batch_id -> batches` that migration 230 dropped (`with_batch_fk`); without the
count trigger of migration 211 (`without_count_trigger`); without both the trigger and the
partial indexes (`bare`). It reports the COPY backend's CPU time per row (user + system, read
from the backend process), which other processes on the machine disturb far less than wall
time, and each variant's ratio to the table as migrated. Results in
bench/results/ledger-copy-<date>.json.
"""

import argparse
import asyncio
import io
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil

from bench.uploads import scratch_postgres
from store.accounts import create_account
from store.db import create_pool, migrate
from store.messages import RECIPIENT_COLUMNS, refresh_statistics

RESULTS = Path(__file__).parent / "results"
BATCH_FK = "messages_batch_id_fkey"
# Each variant's changes to the table, made and undone inside its COPY's transaction.
VARIANTS: dict[str, list[str]] = {
    "as_migrated": [],
    "with_batch_fk": [
        f"ALTER TABLE messages ADD CONSTRAINT {BATCH_FK} FOREIGN KEY (batch_id)"
        " REFERENCES batches(id) NOT VALID"
    ],
    "without_count_trigger": ["ALTER TABLE messages DISABLE TRIGGER messages_counted_insert"],
    "bare": [
        "ALTER TABLE messages DISABLE TRIGGER messages_counted_insert",
        "DROP INDEX messages_carrier_sid",
        "DROP INDEX messages_sent_to_account",
    ],
}


@dataclass(frozen=True)
class CopyCost:
    variant: str
    rows: int
    wall_seconds: float
    backend_cpu_seconds: float
    cpu_us_per_row: float
    ratio_to_as_migrated: float
    counted: int


# The sender of `new_batch`'s batches.
AGENT_NUMBER = "+12015550100"


def ledger_csv(
    batch_id: uuid.UUID, account_id: uuid.UUID, rows: int, *, prefix: str = "+659"
) -> bytes:
    """Rows as the column engine writes them: a rendered one-segment message each, to
    numbers of `prefix` and seven digits."""
    out = io.StringIO()
    for i in range(rows):
        out.write(
            f"{batch_id},{i},{account_id},{i + 1},{prefix}{i % 10**7:07d},"
            f"Dear Emily {i:06d}; your app {i % 10**4:04d} is ready.,pending,,gsm7,1\n"
        )
    return out.getvalue().encode()


async def new_batch(conn: asyncpg.Connection, account_id: uuid.UUID) -> uuid.UUID:
    batch_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO files (id, account_id, filename, content_type, size_bytes, content)"
        " VALUES ($1, $2, 'bench.csv', 'text/csv', 0, '')",
        batch_id,
        account_id,
    )
    await conn.execute(
        "INSERT INTO batches (id, account_id, workflow_id, agent_number, request, request_hash)"
        " VALUES ($1, $2, $3, $4, '{}', '')",
        batch_id,
        account_id,
        f"bench-{batch_id}",
        AGENT_NUMBER,
    )
    return batch_id


async def validated_batch(
    pool: asyncpg.Pool, account_id: uuid.UUID, rows: int, *, prefix: str = "+659"
) -> uuid.UUID:
    """A batch of `rows` pending ledger rows (`ledger_csv`) COPYed in, the ledger's statistics
    then sampled as validation leaves them (messages.refresh_statistics)."""
    async with pool.acquire() as conn:
        batch_id = await new_batch(conn, account_id)
        await conn.copy_to_table(
            "messages",
            source=io.BytesIO(ledger_csv(batch_id, account_id, rows, prefix=prefix)),
            columns=RECIPIENT_COLUMNS,
            format="csv",
        )
    await refresh_statistics(pool, rows)
    return batch_id


def backend_cpu(pid: int) -> float:
    """The CPU seconds process `pid` has run, to the nanosecond (psutil's times count 10 ms
    ticks: a part's few hundred ms a round would be read to within a few per cent, and a
    COPY of a few thousand rows as none)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def backend_wal_writes(backend: asyncpg.Pool, reader: asyncpg.Pool) -> float:
    """The WAL writes the one backend of `backend` made itself so far (pg_stat_get_backend_io),
    read through `reader` once `backend` has flushed its statistics (a backend reports them at
    most once a second). A commit that waits for its WAL writes it itself, unless another's
    flush covered it; one that does not wait leaves it to the WAL writer."""
    await backend.execute("SELECT pg_stat_force_next_flush()")
    writes: float = await reader.fetchval(
        "SELECT coalesce(sum(writes), 0)::float8 FROM pg_stat_get_backend_io($1)"
        " WHERE object = 'wal'",
        await backend.fetchval("SELECT pg_backend_pid()"),
    )
    return writes


async def copy_cost(
    conn: asyncpg.Connection, account_id: uuid.UUID, variant: str, rows: int
) -> tuple[float, float, int]:
    batch_id = await new_batch(conn, account_id)
    data = ledger_csv(batch_id, account_id, rows)
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    transaction = conn.transaction()
    await transaction.start()
    try:
        for statement in VARIANTS[variant]:
            await conn.execute(statement)
        cpu = backend_cpu(backend)
        started = time.perf_counter()
        await conn.copy_to_table(
            "messages", source=io.BytesIO(data), columns=RECIPIENT_COLUMNS, format="csv"
        )
        wall = time.perf_counter() - started
        cpu = backend_cpu(backend) - cpu
        counted = await conn.fetchval(
            "SELECT coalesce(sum(n), 0) FROM batch_status_counts WHERE batch_id = $1", batch_id
        )
    finally:
        # The table goes back as migrated for the next variant.
        await transaction.rollback()
    return wall, cpu, int(counted)


async def measure(database_url: str, rows: int, rounds: int) -> list[CopyCost]:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool)
        account_id = await create_account(pool, "bench-ledger-copy")
        found: dict[str, list[tuple[float, float, int]]] = {v: [] for v in VARIANTS}
        async with pool.acquire() as conn:
            # Rounds interleave the variants, so the machine's load falls on each alike.
            for _ in range(rounds):
                for variant in VARIANTS:
                    found[variant].append(await copy_cost(conn, account_id, variant, rows))
    finally:
        await pool.close()
    best = {v: min(runs, key=lambda run: run[1]) for v, runs in found.items()}
    base = best["as_migrated"][1]
    return [
        CopyCost(
            variant=variant,
            rows=rows,
            wall_seconds=round(wall, 2),
            backend_cpu_seconds=round(cpu, 4),
            cpu_us_per_row=round(cpu / rows * 1e6, 2),
            ratio_to_as_migrated=round(cpu / base, 2),
            counted=counted,
        )
        for variant, (wall, cpu, counted) in best.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2, help="each variant's best is kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with scratch_postgres("herald-ledger-copy-") as (database_url, _):
        result = asyncio.run(measure(database_url, args.rows, args.rounds))
    load = psutil.getloadavg()
    report = {"load_average": [round(x, 2) for x in load], "copies": [asdict(r) for r in result]}
    args.out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (args.out / f"ledger-copy-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
