"""Delivery receipts from the carrier: they move a message forward by rank, never back.

A batch message's StatusCallback URL carries the message's ledger key (`keyed_url`), so
the final receipt of one sent with the service's credentials is applied to its row by that
key where it is taken, whether or not the worker has written its sid yet (`KEYED`): at full
rate a quarter of the receipts came before their sids, and finding them a row through the
queue cost PostgreSQL about eleven blocks a message more than applying them.

Any other final receipt (a conversation's, or a batch's sent with an account's own carrier
credentials: those callbacks are signed with the account's token, and a key is trusted only
under the service's) finds its message by its carrier sid. One whose message already holds
its sid is applied where it is taken (`take_receipts`): one row write, committed before the
carrier is answered. The others (a receipt that comes before its send's sid is written, a
conversation message's) are appended to `receipt_queue` in the same statement, then applied
in batches by `apply_queued`, which any number of API processes run at once, or by the
worker as it writes the sids (messages.record_outcomes: a row takes its first receipt in the
write of its outcome). The first final receipt of a message is the only one ever applied: a
repeated, replayed or later receipt of the same message changes nothing. One waiting in the
queue or kept in `carrier_receipts` is that first one.

Every statement that moves ledger rows by receipt locks them first in the ledger's key order
(`batch_id, seq`): the intake, the appliers and the worker never wait on each other in a
cycle, so PostgreSQL never has to end one of them after its deadlock_timeout.
"""

import re
import uuid
from dataclasses import dataclass

import asyncpg

# The statuses a receipt can end a message in. `sent` and the carrier's in-between statuses
# (queued, sending, ...) rank no higher than a recorded message: they cost no query.
FINAL_RECEIPTS = ("delivered", "undelivered", "failed")
# receipt_rank() of a final status (migration 020): a message of that rank moves no more.
FINAL_RANK = 2


# The queue swings from empty to tens of thousands of rows, most of them dead, within seconds.
# A plan PostgreSQL keeps for a connection's statement (after its fifth call) may come from
# a moment the queue was nearly empty and scan it whole for every receipt: in `make bench` at
# 100,000 rows such kept plans took the intake 190 ms a call and the claim 1.6 s, until
# PostgreSQL planned again after an autovacuum.
# The applier plans each of its statements for its call (for its transaction), a few dozen
# calls a batch. The intake, which runs one statement per group of callbacks, thousands a
# batch, keeps one plan of it for as long as it holds its connection, a plan that reads no
# table whole (sequential scans off: each table it reads is searched by an index), so it is
# never the one above; planning it for each call was 40% of the intake's CPU
# (`bench.receipts_pg`, 54 receipts a statement: 23-28 ms per 1,000 receipts against 13-17).
# Both settings are the held connection's alone: the intake resets them before giving it back.
INTAKE_PLANS = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"
INTAKE_PLANS_RESET = "RESET plan_cache_mode; RESET enable_seqscan"
PLAN_EACH_CALL_IN_TRANSACTION = "SET LOCAL plan_cache_mode = force_custom_plan"
# For the applier's transaction: commit without waiting for its WAL to reach the disk. All it
# does is redone from what stays durable: a commit a crash of PostgreSQL loses takes the whole
# transaction with it, the claim's deletes too, so its receipts are back in the queue; and a
# later commit that waits for its own flush (a callback's, the worker's) flushes this one
# first. Not for the worker's messages.apply_kept_receipts: the kept receipts it applies are
# in no queue, and nothing would apply them again. In `make bench` at 20,000 rows with
# receipts on, waits for WAL flushes (WalSync, WALWrite) were 70% of the samples of the
# worker's outcome write and of the intake while active: every commit that waits adds to them.
COMMIT_WITHOUT_FLUSH_IN_TRANSACTION = "SET LOCAL synchronous_commit = off"


# A NOT EXISTS subquery's `OFFSET 0`: PostgreSQL keeps it a probe of the outer row's sid
# (by the sid index) instead of turning it into an anti join, which it may answer by reading
# the whole of `carrier_receipts` or `receipt_queue` for each statement: it does for a table
# it has no statistics of yet (a fresh database), or for the queue, small but for the dead rows
# of the receipts it has handed on. At full rate that read was most of the intake's statement.
BY_INDEX = " OFFSET 0"


@dataclass(frozen=True, slots=True)
class MessageKey:
    """A ledger row, and which attempt at sending it (the row's `attempts` as the send went
    out): a keyed StatusCallback URL names the send it is for (`keyed_url`)."""

    batch_id: uuid.UUID
    seq: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Receipt:
    carrier_sid: str
    status: str
    error_code: str | None
    # The send its callback's URL named (`keyed_url`), when trusted; else None.
    key: MessageKey | None = None


# The query of a keyed StatusCallback URL: `m=<batch id>.<seq>.<attempt>`.
MESSAGE_KEY = re.compile(
    r"m=([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})\.([0-9]{1,18})\.([0-9]{1,9})"
)


def keyed_url(status_callback_url: str, key: MessageKey) -> str:
    """The StatusCallback URL of the send `key`: the carrier calls it with the message's
    callbacks, and signs it whole (Twilio signs the URL with its query)."""
    return KeyedUrls(status_callback_url, key.batch_id).of(key.seq, key.attempt)


class KeyedUrls:
    """`keyed_url` of one batch's sends, for a slice's: the part they share made once."""

    def __init__(self, status_callback_url: str, batch_id: uuid.UUID) -> None:
        self._prefix = f"{status_callback_url}?m={batch_id}."

    def of(self, seq: int, attempt: int) -> str:
        return f"{self._prefix}{seq}.{attempt}"


def message_key(query: str) -> MessageKey | None:
    """The send named in a status callback's query (`keyed_url`), or None if it names none."""
    found = MESSAGE_KEY.fullmatch(query)
    return MessageKey(uuid.UUID(found[1]), int(found[2]), int(found[3])) if found else None


# SQL: apply the final receipts $1..$6 (batch id, seq, attempt, sid, status, error code) to
# their ledger rows by key. A row takes the first of its send's receipts (its `attempts` is
# the key's attempt: a receipt of an earlier send of a row sent again, which may hold no sid
# or another, moves nothing) while it is on the wire or `uncertain` (the worker has not
# written its outcome: the receipt writes the sid and the time it was sent, and the outcome's
# write, which moves only rows still `sending`, or `uncertain` to an answer, leaves a final
# row), or once it is `sent` with the receipt's sid; none once it is final.
#
# The statement never waits for a row: the worker writes a wave's outcomes, and claims a
# slice, in an order of its own, and a receipt that waited for one of those rows while holding
# another deadlocked with it (a few hundred receipts answered 503, and a slice's attempt
# failed, in `make bench` at 100,000 rows). A receipt whose row is locked (SKIP LOCKED) is
# appended to the queue instead, as is every other receipt the statement does not apply (a
# late repeat, another send's, a key of no row): each is then taken by its sid as an unkeyed
# receipt is, when the worker has written it (messages.record_outcomes) or by the applier,
# which drops one whose message is final. (So a keyed receipt put off by a lock can be
# overtaken by a later final one of the same send, a carrier's second final status, which
# Twilio does not send; a repeat of it changes nothing either way.)
KEYED = (
    "WITH a AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::text[],"
    " $5::text[], $6::text[]) WITH ORDINALITY"
    " AS a(batch_id, seq, attempt, carrier_sid, status, error_code, n)),"
    " r AS (SELECT DISTINCT ON (batch_id, seq, attempt) * FROM a"
    " ORDER BY batch_id, seq, attempt, n),"
    " l AS MATERIALIZED (SELECT r.* FROM messages AS m JOIN r"
    " ON m.batch_id = r.batch_id AND m.seq = r.seq WHERE m.attempts = r.attempt"
    " AND (m.status IN ('sending', 'uncertain')"
    " OR (m.status = 'sent' AND m.carrier_sid = r.carrier_sid))"
    " ORDER BY m.batch_id, m.seq FOR NO KEY UPDATE OF m SKIP LOCKED),"
    " moved AS (UPDATE messages AS m SET status = r.status, error_code = r.error_code,"
    " error_message = NULL, carrier_sid = r.carrier_sid, updated_at = now(),"
    " sent_at = CASE WHEN m.status = 'sent' THEN m.sent_at ELSE now() END"
    # The rows of `l` are locked by this statement: nothing moves them after its check.
    " FROM l AS r WHERE m.batch_id = r.batch_id AND m.seq = r.seq)"
    " INSERT INTO receipt_queue (carrier_sid, status, error_code)"
    " SELECT a.carrier_sid, a.status, a.error_code FROM a"
    " WHERE a.n NOT IN (SELECT n FROM l) ORDER BY a.n"
)


def first_receipts(sids: str) -> str:
    """SQL: the first final receipt of each carrier sid in the text[] expression `sids`: the
    kept one, else the first still queued.

    A batch of the queue is moved to `carrier_receipts` in one transaction, so any statement
    sees each receipt in exactly one of the two tables: a send's outcome written while its
    receipt waits in the queue is moved by it all the same (see messages.record_outcomes).
    """
    return (
        "(SELECT carrier_sid, status, error_code FROM carrier_receipts"
        f" WHERE carrier_sid = ANY({sids})"
        " UNION ALL"
        " (SELECT DISTINCT ON (q.carrier_sid) q.carrier_sid, q.status, q.error_code"
        f" FROM receipt_queue AS q WHERE q.carrier_sid = ANY({sids}) AND NOT EXISTS"
        " (SELECT FROM carrier_receipts AS k WHERE k.carrier_sid = q.carrier_sid)"
        " ORDER BY q.carrier_sid, q.id))"
    )


# SQL: which of the carrier sids $1 (text[]) have a final receipt kept or queued, as a text[]:
# all of them looked up at once in the sid index of each table, never a read of the ledger.
WITH_RECEIPTS = (
    "SELECT array(SELECT carrier_sid FROM receipt_queue WHERE carrier_sid = ANY($1::text[])"
    " UNION SELECT carrier_sid FROM carrier_receipts WHERE carrier_sid = ANY($1::text[]))"
)


def move_ledger(receipts_sql: str, rows: str) -> str:
    """SQL: move the ledger rows chosen by the condition `rows` (on `l`, a messages row) to
    the receipts of `receipts_sql` (rows of carrier_sid, status, error_code), by rank.

    The rows are locked first, in the ledger's key order, and then moved: statements that
    move the same rows at the same moment (the intake, the appliers, the worker's
    messages.apply_kept_receipts) wait for each other in turn and never deadlock.
    """
    return (
        "UPDATE messages AS m SET status = r.status, error_code = r.error_code,"
        " updated_at = now() FROM (SELECT l.batch_id, l.seq, f.status, f.error_code"
        f" FROM messages AS l JOIN {receipts_sql} AS f ON f.carrier_sid = l.carrier_sid"
        f" WHERE {rows} AND receipt_rank(l.status) < receipt_rank(f.status)"
        " ORDER BY l.batch_id, l.seq FOR NO KEY UPDATE OF l) AS r"
        " WHERE m.batch_id = r.batch_id AND m.seq = r.seq"
        " AND receipt_rank(m.status) < receipt_rank(r.status)"
    )


async def take_receipts(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, receipts: list[Receipt]
) -> None:
    """Take the final ones of `receipts`: those with a ledger key are applied by it, or
    queued when they cannot be (`KEYED`), in one statement; of the others, in one statement,
    those whose message already holds its sid are applied to it, and the rest are appended
    to the queue, in order.

    A message whose sid is known and ranked (`sent` or final) is moved to the first of its
    receipts here, unless an earlier receipt of it waits in the queue or is kept (then that
    one is its first: this one is queued behind it); a message already final takes none.
    A message whose sid is not written yet, or held by no ledger row (a conversation's),
    gets its receipts through the queue: the worker applies them when it writes the sid, or
    the applier does, whichever comes second (see messages.record_outcomes).
    """
    keys = [(r, r.key) for r in receipts if r.status in FINAL_RECEIPTS and r.key is not None]
    if keys:
        await conn.execute(
            KEYED,
            [key.batch_id for _, key in keys],
            [key.seq for _, key in keys],
            [key.attempt for _, key in keys],
            [r.carrier_sid for r, _ in keys],
            [r.status for r, _ in keys],
            [r.error_code for r, _ in keys],
        )
    final = [r for r in receipts if r.status in FINAL_RECEIPTS and r.key is None]
    if not final:
        return
    await conn.execute(
        "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY"
        " AS r(carrier_sid, status, error_code, n)),"
        " known AS MATERIALIZED (SELECT l.batch_id, l.seq, l.carrier_sid FROM messages AS l"
        " WHERE l.carrier_sid = ANY($1::text[]) AND receipt_rank(l.status) IS NOT NULL"
        " AND NOT EXISTS (SELECT FROM receipt_queue AS q"
        f" WHERE q.carrier_sid = l.carrier_sid{BY_INDEX})"
        " AND NOT EXISTS (SELECT FROM carrier_receipts AS k"
        f" WHERE k.carrier_sid = l.carrier_sid{BY_INDEX})"
        " ORDER BY l.batch_id, l.seq FOR NO KEY UPDATE OF l),"
        " moved AS (UPDATE messages AS m SET status = f.status, error_code = f.error_code,"
        " updated_at = now() FROM known AS k, (SELECT DISTINCT ON (carrier_sid) carrier_sid,"
        " status, error_code FROM r ORDER BY carrier_sid, n) AS f"
        " WHERE m.batch_id = k.batch_id AND m.seq = k.seq AND f.carrier_sid = k.carrier_sid"
        " AND receipt_rank(m.status) < receipt_rank(f.status))"
        " INSERT INTO receipt_queue (carrier_sid, status, error_code)"
        " SELECT r.carrier_sid, r.status, r.error_code FROM r"
        " WHERE NOT EXISTS (SELECT FROM known AS k WHERE k.carrier_sid = r.carrier_sid)"
        " ORDER BY r.n",
        [r.carrier_sid for r in final],
        [r.status for r in final],
        [r.error_code for r in final],
    )


async def held_by_others(
    pool: asyncpg.Pool, carrier_sid: str, accounts: frozenset[uuid.UUID]
) -> bool:
    """Whether a message of an account not among `accounts` holds `carrier_sid`: a batch's
    (by its ledger row's batch) or a conversation's. One probe of each table's sid index."""
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT FROM messages AS l JOIN batches AS b ON b.id = l.batch_id"
            " WHERE l.carrier_sid = $1 AND b.account_id <> ALL($2::uuid[]))"
            " OR EXISTS (SELECT FROM conversation_messages WHERE carrier_sid = $1"
            " AND sender = 'AGENT' AND account_id <> ALL($2::uuid[]))",
            carrier_sid,
            list(accounts),
        )
    )


async def queue_receipts(
    pool: asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    receipts: list[Receipt],
) -> None:
    """Append the final ones of `receipts` to the queue, in order, in one statement, whether
    or not their messages hold their sids yet (the intake applies those: `take_receipts`)."""
    final = [r for r in receipts if r.status in FINAL_RECEIPTS]
    if not final:
        return
    await pool.execute(
        "INSERT INTO receipt_queue (carrier_sid, status, error_code)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
        [r.carrier_sid for r in final],
        [r.status for r in final],
        [r.error_code for r in final],
    )


# SQL: take at most $1 receipts off the queue, the oldest first, but those another process
# holds and those behind an earlier one of their sid that it holds; each with whether its
# message is already final (`settled`). The ledger is read once for all of them, by their
# sids' index, never probed once for each receipt. The queue's other receipts of the claimed
# sids (`o`, most often none) are found once, by the sid index, and the claimed rows deleted
# by their ids: the statistics often count a queue of thousands of rows as one (sampled when
# it was empty), and a plan that trusted them joined the claimed rows to the queue row by
# row, 1.3 million blocks and 27 s for 694 receipts in `make bench` at 100,000 rows.
CLAIM = (
    "WITH c AS (SELECT id, carrier_sid FROM receipt_queue"
    " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),"
    " o AS MATERIALIZED (SELECT e.id, e.carrier_sid FROM receipt_queue AS e"
    " WHERE e.carrier_sid = ANY(array(SELECT carrier_sid FROM c))"
    " AND e.id NOT IN (SELECT id FROM c)),"
    " d AS (DELETE FROM receipt_queue WHERE id = ANY(array(SELECT c.id FROM c"
    " WHERE NOT EXISTS (SELECT FROM o WHERE o.carrier_sid = c.carrier_sid AND o.id < c.id)))"
    " RETURNING id, carrier_sid, status, error_code, received_at)"
    " SELECT d.*, d.carrier_sid IN (SELECT l.carrier_sid FROM messages AS l"
    " WHERE l.carrier_sid = ANY(array(SELECT carrier_sid FROM d))"
    f" AND receipt_rank(l.status) = {FINAL_RANK}) AS settled FROM d"
)


# SQL: the first final receipt of each sid of the claimed receipts ($1 sids, $2 statuses, $3
# error codes, one of each sid): the kept one, else the claimed one.
CLAIMED_FIRST = (
    "(SELECT k.carrier_sid, k.status, k.error_code FROM carrier_receipts AS k"
    " WHERE k.carrier_sid = ANY($1::text[])"
    " UNION ALL SELECT c.carrier_sid, c.status, c.error_code"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS c(carrier_sid, status, error_code)"
    " WHERE NOT EXISTS (SELECT FROM carrier_receipts AS k WHERE k.carrier_sid = c.carrier_sid))"
)


async def apply_queued(pool: asyncpg.Pool, limit: int) -> list[int]:
    """Apply at most `limit` queued receipts, the oldest first; return the queue ids taken.

    Rows another process has claimed are skipped, so processes share the queue and apply
    each receipt once; a receipt behind an earlier one of its sid that another process holds
    is left for a later call (taken now, it would be kept as the sid's first). The claim, the
    keeping and the moves commit together: a failure puts the receipts back in the queue,
    and applying them again changes nothing twice.

    A receipt whose message is already final (it took its first receipt, most often in the
    write of its outcome: messages.record_outcomes) is only taken off the queue, and one that
    moves its message is not kept: no receipt moves a final message, so none needs keeping
    for it, and the intake, which finds the message final, queues none behind it. Only a
    receipt whose message does not hold its sid yet (or a conversation's) is kept. In the
    bench a third to a half of the final receipts came before their sids; keeping them all
    and moving most of them again was most of the applier's statements.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"{PLAN_EACH_CALL_IN_TRANSACTION}; {COMMIT_WITHOUT_FLUSH_IN_TRANSACTION}"
        )
        claimed = await conn.fetch(CLAIM, limit)
        first: dict[str, asyncpg.Record] = {}
        for row in sorted(claimed, key=lambda r: r["id"]):
            if not row["settled"]:
                first.setdefault(row["carrier_sid"], row)
        if not first:
            return [r["id"] for r in claimed]
        # Planned for each call's sids (PLAN_EACH_CALL_IN_TRANSACTION): a kept generic plan of
        # `carrier_sid = ANY($1)` read the whole ledger, testing each row against the array
        # element by element (2,200 blocks and 110-140 ms of CPU a call for a few hundred
        # receipts in the bench's runs).
        first = dict(sorted(first.items()))
        sids = list(first)
        # The ledger rows first, each to its sid's kept receipt, else to the one claimed now.
        moved = set(
            await conn.fetchval(
                f"WITH moved AS ({move_ledger(CLAIMED_FIRST, 'l.carrier_sid = ANY($1::text[])')}"
                " RETURNING m.carrier_sid) SELECT array(SELECT carrier_sid FROM moved)",
                sids,
                [r["status"] for r in first.values()],
                [r["error_code"] for r in first.values()],
            )
        )
        # A receipt that moved its message is not kept either: the message is final. The
        # others wait for their sids (or are a conversation's). In key order: two appliers
        # that claimed receipts of the same sid wait on each other's kept row in turn.
        kept = {sid: row for sid, row in first.items() if sid not in moved}
        if kept:
            await conn.execute(
                "INSERT INTO carrier_receipts (carrier_sid, status, error_code, received_at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
                " ON CONFLICT (carrier_sid) DO NOTHING",
                list(kept),
                [r["status"] for r in kept.values()],
                [r["error_code"] for r in kept.values()],
                [r["received_at"] for r in kept.values()],
            )
            await _apply_to_conversations(conn, list(kept))
    return [r["id"] for r in claimed]


async def apply_conversation_receipt(pool: asyncpg.Pool, carrier_sid: str) -> None:
    """Move the conversation message sent as `carrier_sid` to its first final receipt."""
    async with pool.acquire() as conn:
        await _apply_to_conversations(conn, [carrier_sid])


async def _apply_to_conversations(conn: asyncpg.Connection, sids: list[str]) -> None:
    await conn.execute(
        "UPDATE conversation_messages AS m SET status = r.status, error_code = r.error_code,"
        f" updated_at = now() FROM {first_receipts('$1::text[]')} AS r"
        " WHERE m.carrier_sid = r.carrier_sid AND m.sender = 'AGENT'"
        " AND receipt_rank(m.status) < receipt_rank(r.status)",
        sids,
    )
