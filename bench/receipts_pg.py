"""What PostgreSQL spends per final delivery receipt, by part (the intake, the worker's
outcome writes, the queue's applier): this tree's receipts code against a revision's,
alternated in one run.

    .venv/bin/python -m bench.receipts_pg [--against REV] [--rows 5000] [--rounds 4]

Starts PostgreSQL (the embedded one, in a temporary directory) and migrates. Each round
COPYs a batch of `--rows` ledger rows (bench.ledger_copy.ledger_csv) and sends it by slices
as the worker does (messages.mark_sending, then messages.record_outcomes), while each row's
final receipt comes as in `python -m bench --receipts`: EARLY_SHARE of them before their
slice's outcomes are written (MISSED_SHARE of these while the write runs), the others after,
taken INTAKE_BATCH at a time (receipts.take_receipts, on a connection set as the API's intake
sets the one it holds), the applier (receipts.apply_queued)
draining the queue every APPLY_EVERY slices. Each part runs on a connection of its own, as a
database role of its own: its backend's CPU (/proc/PID/schedstat, Linux's count in ns) and
its top-level statements' shared blocks (hit, read and dirtied; pg_stat_statements by role)
are reported per 1,000 final receipts, with the CPU of every PostgreSQL process (psutil;
autovacuum's included). The marking of rows `sending` runs on a connection not counted. The
two codes take rounds in turn on the same database, the same receipts in both rounds of a
pair, each pair in the other order; each round ends by checking that every row holds its
receipt. Results in bench/results/receipts-pg-<date>.json.
"""

import argparse
import asyncio
import json
import random
import secrets
import statistics
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

import store
from bench.ledger_copy import backend_cpu, backend_wal_writes, validated_batch
from bench.uploads import scratch_postgres
from store import messages, receipts
from store.accounts import create_account
from store.db import create_pool, migrate
from workflows.statuses import LedgerStatus

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
# The bench's emulator posts `delivered` ~50 ms after the send: 36-52% of final receipts
# came before the worker wrote their sid.
EARLY_SHARE = 0.4
# Of those, the share the worker's write of the outcomes missed (they committed while it ran),
# and of these the share its next statement moved (messages.apply_kept_receipts), the others
# being moved by the applier: 64% and 60% in a run of the bench (3,329 rows moved by the
# worker, 2,272 by the applier, of 8,807 queued).
MISSED_SHARE = 0.64
WORKER_MOVES_SHARE = 0.6
# Receipts per intake statement in the bench (concurrent callbacks share one).
INTAKE_BATCH = 54
# Rows per record_outcomes call.
SLICE = 100
# The applier's pause (0.2 s) in slices of the bench's rate.
APPLY_EVERY = 5
PARTS = ("intake", "worker", "applier")
# How many receipts were ever appended to the queue (its identity's last value; the queue
# itself is empty at the end of each round).
QUEUED_SO_FAR = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM receipt_queue_id_seq"


@dataclass(frozen=True)
class PartCost:
    cpu_ms: float
    blocks: float
    dirtied: float
    wal_records: float
    # Writes of the WAL the part's backend made itself: a commit that waits for its WAL to
    # be flushed writes it (unless another's flush covered it); one that does not wait leaves
    # it to the WAL writer.
    wal_writes: float


@dataclass(frozen=True)
class Round:
    code: str
    receipts: int
    queued: int
    parts: dict[str, PartCost]
    postgres_cpu_ms: float


def revision_modules(revision: str) -> tuple[types.ModuleType, types.ModuleType]:
    """store.receipts and store.messages as they are at `revision`, the latter bound to the
    former."""

    def load(name: str, path: str) -> types.ModuleType:
        source = subprocess.run(
            ["git", "show", f"{revision}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
        return module

    old_receipts = load(f"receipts_at_{revision}", "store/receipts.py")
    with _receipts_as(old_receipts):
        old_messages = load(f"messages_at_{revision}", "store/messages.py")
    return old_receipts, old_messages


@contextmanager
def _receipts_as(module: types.ModuleType) -> Iterator[None]:
    """`from store import receipts` gives `module` while this lasts."""
    saved = sys.modules["store.receipts"]
    sys.modules["store.receipts"] = store.receipts = module
    try:
        yield
    finally:
        sys.modules["store.receipts"] = store.receipts = saved


def _as_role(database_url: str, role: str) -> str:
    return database_url.replace("postgres@", f"{role}@", 1)


class Parts:
    """A pool of one connection per part, each as its own role."""

    def __init__(self, pools: dict[str, asyncpg.Pool], backends: dict[str, psutil.Process]):
        self.pools = pools
        self.backends = backends

    @classmethod
    async def open(cls, database_url: str) -> "Parts":
        pools, backends = {}, {}
        for part in PARTS:
            url = _as_role(database_url, f"bench_{part}")
            pools[part] = pool = await create_pool(url, min_size=1, max_size=1)
            backends[part] = psutil.Process(await pool.fetchval("SELECT pg_backend_pid()"))
        return cls(pools, backends)

    def cpu(self) -> dict[str, float]:
        return {part: backend_cpu(p.pid) for part, p in self.backends.items()}

    async def wal_writes(self, admin: asyncpg.Pool) -> dict[str, float]:
        """Each part's backend's writes of the WAL so far."""
        return {part: await backend_wal_writes(pool, admin) for part, pool in self.pools.items()}

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()


async def _statement_blocks(pool: asyncpg.Pool) -> dict[str, tuple[float, float, float]]:
    rows = await pool.fetch(
        "SELECT r.rolname, sum(s.shared_blks_hit + s.shared_blks_read)::float8 AS blocks,"
        " sum(s.shared_blks_dirtied)::float8 AS dirtied, sum(s.wal_records)::float8 AS wal"
        " FROM pg_stat_statements AS s JOIN pg_roles AS r ON r.oid = s.userid"
        " WHERE s.toplevel AND r.rolname LIKE 'bench\\_%' GROUP BY r.rolname"
    )
    return {
        r["rolname"].removeprefix("bench_"): (r["blocks"], r["dirtied"], r["wal"]) for r in rows
    }


def _postgres_cpu(postmaster: psutil.Process) -> float:
    total = sum(postmaster.cpu_times()[:2])
    for child in postmaster.children():
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return total


def _intake_session(rcpt: types.ModuleType) -> tuple[str, str]:
    """What the API's intake sets on the connection it holds (api/services/receipts.py), and
    what resets it, as a code defines them: one plan kept (`INTAKE_PLANS`), or, before it,
    each call planned (`PLAN_EACH_CALL`)."""
    if hasattr(rcpt, "INTAKE_PLANS"):
        return rcpt.INTAKE_PLANS, rcpt.INTAKE_PLANS_RESET
    return rcpt.PLAN_EACH_CALL, rcpt.PLAN_AS_THE_POOL_DOES


async def one_round(
    code: str,
    modules: tuple[types.ModuleType, types.ModuleType],
    admin: asyncpg.Pool,
    parts: Parts,
    account_id: uuid.UUID,
    rows: int,
    rng: random.Random,
) -> Round:
    rcpt, msgs = modules
    batch_id = await validated_batch(admin, account_id, rows)
    await admin.execute("SELECT pg_stat_statements_reset()")
    queued_before = await admin.fetchval(QUEUED_SO_FAR)
    postmaster = parts.backends["intake"].parent()
    assert postmaster is not None
    writes_before = await parts.wal_writes(admin)
    cpu_before, all_before = parts.cpu(), _postgres_cpu(postmaster)
    sids = {seq: "SM" + secrets.token_hex(16) for seq in range(rows)}
    waiting: list[Any] = []
    async with parts.pools["intake"].acquire() as intake:
        session, reset = _intake_session(rcpt)
        await intake.execute(session)

        async def take(everything: bool) -> None:
            while len(waiting) >= INTAKE_BATCH or (everything and waiting):
                batch = waiting[:INTAKE_BATCH]
                del waiting[:INTAKE_BATCH]
                await rcpt.take_receipts(intake, batch)

        for number, start in enumerate(range(0, rows, SLICE)):
            seqs = list(range(start, min(start + SLICE, rows)))
            await messages.write_outcomes(admin, batch_id, [], mark=seqs)
            early = {seq for seq in seqs if rng.random() < EARLY_SHARE}
            missed = {seq for seq in early if rng.random() < MISSED_SHARE}
            waiting += [
                rcpt.Receipt(sids[s], "delivered", None) for s in seqs if s in early - missed
            ]
            await take(everything=True)
            await msgs.record_outcomes(
                parts.pools["worker"],
                batch_id,
                [msgs.Outcome(s, LedgerStatus.SENT, sids[s]) for s in seqs],
            )
            # Queued while the outcomes' statement ran: unseen by it, by the intake too.
            await rcpt.queue_receipts(
                intake, [rcpt.Receipt(sids[s], "delivered", None) for s in sorted(missed)]
            )
            await msgs.apply_kept_receipts(
                parts.pools["worker"],
                batch_id,
                [sids[s] for s in sorted(missed) if rng.random() < WORKER_MOVES_SHARE],
            )
            waiting += [rcpt.Receipt(sids[s], "delivered", None) for s in seqs if s not in early]
            await take(everything=False)
            if number % APPLY_EVERY == APPLY_EVERY - 1:
                while len(await rcpt.apply_queued(parts.pools["applier"], 1000)) == 1000:
                    pass
        await take(everything=True)
        await intake.execute(reset)
    while await rcpt.apply_queued(parts.pools["applier"], 1000):
        pass
    cpu_after, all_after = parts.cpu(), _postgres_cpu(postmaster)
    writes_after = await parts.wal_writes(admin)
    blocks = await _statement_blocks(admin)
    queued = await admin.fetchval(QUEUED_SO_FAR) - queued_before
    wrong = await admin.fetchval(
        "SELECT count(*) FROM messages WHERE batch_id = $1 AND status <> 'delivered'", batch_id
    )
    assert wrong == 0, f"{code}: {wrong} rows without their receipt"
    per = 1000 / rows
    return Round(
        code=code,
        receipts=rows,
        queued=queued,
        parts={
            part: PartCost(
                cpu_ms=round((cpu_after[part] - cpu_before[part]) * 1000 * per, 2),
                blocks=round(blocks.get(part, (0, 0, 0))[0] * per),
                dirtied=round(blocks.get(part, (0, 0, 0))[1] * per),
                wal_records=round(blocks.get(part, (0, 0, 0))[2] * per),
                wal_writes=round((writes_after[part] - writes_before[part]) * per, 1),
            )
            for part in PARTS
        },
        postgres_cpu_ms=round((all_after - all_before) * 1000 * per, 2),
    )


async def measure(database_url: str, against: str, rows: int, rounds: int) -> list[Round]:
    admin = await create_pool(database_url, min_size=1, max_size=2)
    try:
        await migrate(admin)
        await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for part in PARTS:
            await admin.execute(f"CREATE ROLE bench_{part} LOGIN SUPERUSER")
            # Committing as the local stack's cluster does (this throwaway one does not wait
            # for its WAL at commit): a commit that waits is counted (`wal_writes`).
            await admin.execute(f"ALTER ROLE bench_{part} SET synchronous_commit = on")
        account_id = await create_account(admin, "bench-receipts-pg")
        codes = {against: revision_modules(against), "this tree": (receipts, messages)}
        parts = await Parts.open(database_url)
        found = []
        try:
            # A round of each first, not counted: the ledger and receipt tables fill, the
            # plans settle. Both codes' rounds of a pair draw the same receipts; which goes
            # first alternates (the second finds the tables a batch larger).
            for number in range(rounds + 1):
                for code, modules in list(codes.items())[:: 1 if number % 2 else -1]:
                    rng = random.Random(number)
                    done = await one_round(code, modules, admin, parts, account_id, rows, rng)
                    if number:
                        found.append(done)
        finally:
            await parts.close()
    finally:
        await admin.close()
    return found


def summary(found: list[Round]) -> dict[str, Any]:
    """Each code's medians per 1,000 final receipts, and new over old."""
    medians: dict[str, dict[str, float]] = {}
    for code in dict.fromkeys(r.code for r in found):
        mine = [r for r in found if r.code == code]
        medians[code] = {
            "postgres_cpu_ms_all_processes": statistics.median(r.postgres_cpu_ms for r in mine),
            "backend_cpu_ms": statistics.median(
                sum(p.cpu_ms for p in r.parts.values()) for r in mine
            ),
            "blocks": statistics.median(sum(p.blocks for p in r.parts.values()) for r in mine),
            "wal_records": statistics.median(
                sum(p.wal_records for p in r.parts.values()) for r in mine
            ),
            "wal_writes": statistics.median(
                sum(p.wal_writes for p in r.parts.values()) for r in mine
            ),
        }
        for part in PARTS:
            medians[code][f"{part}_cpu_ms"] = statistics.median(r.parts[part].cpu_ms for r in mine)
            medians[code][f"{part}_blocks"] = statistics.median(r.parts[part].blocks for r in mine)
            medians[code][f"{part}_wal_writes"] = statistics.median(
                r.parts[part].wal_writes for r in mine
            )
    old, new = medians.values()
    return {
        "per_1000_final_receipts_median": medians,
        "this_tree_over_against": {k: round(new[k] / old[k], 2) for k in old if old[k]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="the revision compared with")
    parser.add_argument("--rows", type=int, default=5000, help="rows (final receipts) a round")
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds of each code")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results file goes")
    args = parser.parse_args()
    with scratch_postgres("herald-receipts-pg-") as (database_url, _):
        found = asyncio.run(measure(database_url, args.against, args.rows, args.rounds))
    report = {
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "rows": args.rows,
        **summary(found),
        "rounds": [asdict(r) for r in found],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (args.out / f"receipts-pg-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=2))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
