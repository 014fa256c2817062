"""The message ledger: one row per recipient; statuses only move forward, but for an
`uncertain` row that the carrier shows it never got (`settle_uncertain`)."""

import re
import uuid
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import overload

import asyncpg

from store import conversation_messages, receipts
from store.db import rows_affected
from workflows.statuses import BatchStatus, LedgerStatus

# The statuses of a batch whose rows may be on the wire.
SENDING_BATCH_STATUSES = (
    BatchStatus.DISPATCHING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.IN_PROGRESS_CHUNKED,
    BatchStatus.PAUSED,
)

# Times apply_kept_receipts runs its statement when PostgreSQL ends it with a deadlock.
DEADLOCK_ATTEMPTS = 5

RECIPIENT_COLUMNS = (
    "batch_id",
    "seq",
    "account_id",
    "row_number",
    "to_number",
    "body",
    "status",
    "error_code",
    "encoding",
    "segments",
)
# A row's own request data (its file's `request_data.<field>` columns and the columns its
# batch's `column_mapping` maps), kept for a reply's conversation; NULL when the file has
# no such column (and for rows validated before rows kept it: the reply reads the file).
RECIPIENT_DATA_COLUMNS = (*RECIPIENT_COLUMNS, "request_data")
# The row engine's COPY also gives a row's own sender (the column engine's CSV has none).
LEDGER_COLUMNS = (*RECIPIENT_COLUMNS, "from_number", "request_data")
# A Postman upload's rows also keep their language and their template's values.
LOADED_COLUMNS = (*RECIPIENT_COLUMNS, "language", "request_data")
REJECTED_COLUMNS = ("batch_id", "row_number", "account_id", "code", "reason", "value")
# What PostgreSQL's text and jsonb cannot hold: NUL, and a lone surrogate (no UTF-8).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


CONTENT_COLUMNS = ("batch_id", "row_number", "content_sid", "content_variables")


@dataclass(frozen=True, slots=True)
class RowContent:
    """A row's own content template, either part None where the batch's applies."""

    content_sid: str | None
    content_variables: str | None


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    seq: int
    to_number: str
    body: str
    # The row's own sender; None: the batch's.
    from_number: str | None = None
    row_number: int = 0
    # The row's own content template; None: the batch's.
    content: RowContent | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    seq: int
    status: LedgerStatus
    carrier_sid: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    # A row left `pending` outside its send window: when the window opens.
    window_opens_at: datetime | None = None
    # A row whose request never left (left `pending` as the slice stopped or for its window,
    # or `expired`): its mark, if its wave made one, counts no attempt.
    unsent: bool = False


def _delete_batch_rows(tables: tuple[str, ...]) -> str:
    """One statement deleting a batch's rows (`$1`) from each of `tables`: the first ones as
    data-modifying CTEs, so that it is one round trip however many tables."""
    *first, last = tables
    ctes = ", ".join(
        f"gone_{table} AS (DELETE FROM {table} WHERE batch_id = $1)" for table in first
    )
    return (f"WITH {ctes} " if ctes else "") + f"DELETE FROM {last} WHERE batch_id = $1"


# A batch's ledger, with its short links; and what a validation attempt writes besides.
_LEDGER_TABLES = ("short_links", "messages")
_CLEAR_LEDGER = _delete_batch_rows(_LEDGER_TABLES)
_CLEAR_VALIDATION = _delete_batch_rows((*_LEDGER_TABLES, "rejected_rows", "message_contents"))


async def clear_validation(conn: asyncpg.Connection, batch_id: uuid.UUID) -> None:
    """Drop what an interrupted validation attempt wrote, so a retry starts clean: what
    `clear_ledger` drops, the rejected rows and the rows' own contents, in one statement
    (one round trip, not four, on every batch's way to its first message)."""
    await conn.execute(_CLEAR_VALIDATION, batch_id)


async def has_ledger(pool: asyncpg.Pool, batch_id: uuid.UUID) -> bool:
    """Whether the batch has ledger rows: a validation (or load) of it committed them, in one
    transaction with its counts."""
    found: bool = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE batch_id = $1)", batch_id
    )
    return found


async def clear_ledger(conn: asyncpg.Connection, batch_id: uuid.UUID) -> None:
    """Drop the ledger of a batch that will send nothing, with its short links; its rejected
    rows stay."""
    await conn.execute(_CLEAR_LEDGER, batch_id)


async def copy_recipients(conn: asyncpg.Connection, records: Sequence[tuple]) -> None:
    """COPY ledger rows given as tuples, `LEDGER_COLUMNS` in order (none: no statement)."""
    if records:
        await conn.copy_records_to_table("messages", records=records, columns=LEDGER_COLUMNS)


async def copy_recipients_csv(
    conn: asyncpg.Connection, data: bytes, columns: tuple[str, ...]
) -> None:
    """COPY ledger rows given as CSV, `columns` in order (`RECIPIENT_COLUMNS`,
    `RECIPIENT_DATA_COLUMNS` or `LOADED_COLUMNS`; an unquoted empty field is NULL). Given
    as a buffer (a memoryview: asyncpg takes bytes for a path), sent as it is: a file-like
    source would be read in an executor through a class asyncpg makes per call, a reference
    cycle that kept each part's bytes until the garbage collector ran, tens of MB over a
    large file's COPY."""
    await conn.copy_to_table("messages", source=memoryview(data), columns=columns, format="csv")


async def copy_outcomes(
    conn: asyncpg.Connection,
    ledger: AsyncIterable[bytes],
    rejected: Sequence[tuple],
    columns: tuple[str, ...],
) -> None:
    """A block of a validated file: its ledger rows as CSV parts of `columns`
    (`copy_recipients_csv`), then its rejected rows."""
    async for part in ledger:
        await copy_recipients_csv(conn, part, columns)
    await copy_rejected(conn, rejected)


# A batch adding fewer rows than this share of those the statistics count leaves them be:
# autovacuum's own threshold (autovacuum_analyze_scale_factor).
STATISTICS_SHARE = 0.1
# The columns the send path's statements select rows by (claim_slice, write_outcomes, and
# apply_kept_receipts by carrier_sid: without its statistics the planner reads the whole
# batch by its key for each slice's receipts, ten times the blocks): re-sampled after a bulk
# COPY. The other text columns (numbers, bodies) cost most of a whole-table ANALYZE and
# decide no plan of theirs; autovacuum samples them later.
SEND_PATH_COLUMNS = ("batch_id", "seq", "status", "carrier_sid")


async def refresh_statistics(pool: asyncpg.Pool, added: int) -> None:
    """Re-sample the ledger's statistics after a bulk COPY of `added` rows (the row count,
    and the columns of SEND_PATH_COLUMNS). Until autovacuum gets to it, the planner may think
    the new rows are not there, and join a slice's outcomes against a scan of the whole table
    instead of the primary key: seconds per slice instead of ms. Not for a batch small beside
    the rows the statistics already count: its slices are planned on the primary key anyway,
    and the ANALYZE (behind any autovacuum of the table) took about a second of a 100-row
    batch's validation while a large batch sent (docs/WORKFLOWS.md, Fairness between
    batches). It is on the way from the POST to the first message, so it samples only what
    the send path's plans need, from 3,000 rows (migration 260): a whole-table ANALYZE took
    0.6 s of a 20,000-row batch's."""
    known = await pool.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass")
    if known is not None and known > 0 and added < known * STATISTICS_SHARE:
        return
    await pool.execute(f"ANALYZE messages ({', '.join(SEND_PATH_COLUMNS)})")


async def copy_rejected(conn: asyncpg.Connection, records: Sequence[tuple]) -> None:
    """COPY rejected rows, `REJECTED_COLUMNS` in order. None, no statement: a COPY costs two
    round trips even empty, and most blocks of most files reject no row."""
    if records:
        await conn.copy_records_to_table("rejected_rows", records=records, columns=REJECTED_COLUMNS)


async def last_sent_to(
    conn: asyncpg.Connection | asyncpg.Pool,
    account_id: uuid.UUID,
    agent_number: str,
    user_number: str,
) -> dict | None:
    """The account's last batch message from `agent_number` the carrier accepted for
    `user_number`: its batch, row, send time, its own `request_data` (RECIPIENT_DATA_COLUMNS;
    a Postman upload's row keeps its values), whether its batch's ledger keeps request data
    (`keeps_request_data`: validated since migration 380, after 240 kept it, so a null one is
    a file's with no request-data column) and the batch's stored request. A row sent from
    its own sender (a mailing list's, or its file's `agent_number` column) is that sender's,
    not the batch's."""
    row = await conn.fetchrow(LAST_SENT_TO, account_id, agent_number, user_number)
    return dict(row) if row else None


# By the index of sent rows by number, account and time (migration 410), newest first: the
# read stops at the first row from the sender.
LAST_SENT_TO = (
    "SELECT m.batch_id, m.row_number, m.sent_at, m.request_data, b.request,"
    " b.validated_skipped IS NOT NULL AS keeps_request_data"
    " FROM messages AS m"
    " JOIN batches AS b ON b.id = m.batch_id"
    " WHERE m.to_number = $3 AND m.carrier_sid IS NOT NULL AND m.account_id = $1"
    " AND coalesce(m.from_number, b.agent_number) = $2"
    " ORDER BY m.sent_at DESC NULLS LAST LIMIT 1"
)


# A slice's claim, one statement: the rows a dead attempt left `sending` become
# `uncertain`, the pending rows of numbers opted out since validation are skipped, and the
# other pending rows are returned with their own content templates. The statement's parts
# see the rows as they were before it, so the rows skipped are left out by their seqs. A
# row's content is looked up by its key (LIMIT 1 keeps the lookup a probe of the primary
# key per row, never a read of all the batch's contents). Four round trips fewer than a
# transaction of three statements, on the way from a slice's start to its first request.
_CLAIM = """
WITH lost AS (
    UPDATE messages SET status = 'uncertain', updated_at = now()
    WHERE batch_id = $1 AND seq >= $2 AND seq < $3 AND status = 'sending'
    RETURNING seq
), opted_out AS (
    UPDATE messages AS m SET status = 'skipped', error_code = 'opted_out', updated_at = now()
    FROM batches AS b
    WHERE m.batch_id = $1 AND m.seq >= $2 AND m.seq < $3 AND m.status = 'pending'
        AND b.id = m.batch_id
        AND coalesce((b.request ->> 'exclude_opt_outs')::boolean, true)
        AND EXISTS (SELECT 1 FROM opt_outs AS o
                    WHERE o.account_id = m.account_id AND o.number = m.to_number)
    RETURNING m.seq
)
SELECT m.seq, m.to_number, m.body, m.from_number, m.row_number,
       c.content_sid, c.content_variables
FROM messages AS m
LEFT JOIN LATERAL (
    SELECT content_sid, content_variables FROM message_contents AS c
    WHERE c.batch_id = m.batch_id AND c.row_number = m.row_number LIMIT 1
) AS c ON true
WHERE m.batch_id = $1 AND m.seq >= $2 AND m.seq < $3 AND m.status = 'pending'
    AND NOT EXISTS (SELECT 1 FROM opted_out AS o WHERE o.seq = m.seq)
ORDER BY m.seq
"""


async def claim_slice(
    pool: asyncpg.Pool, batch_id: uuid.UUID, start: int, end: int
) -> list[ClaimedMessage]:
    """The slice's pending rows, for its sender to move to `sending` (write_outcomes) in waves
    just before they go on the wire, each with its own content template if it has one.

    A slice is sent by one activity at a time, so a row already `sending` here was marked by
    an attempt that died: the carrier may have accepted it, and Twilio takes no idempotency
    key, so it becomes `uncertain` instead of being sent again.

    A number that opted out since the batch was validated is skipped (`opted_out`), unless
    the batch was started with `exclude_opt_outs: false`.
    """
    rows = await pool.fetch(_CLAIM, batch_id, start, end)
    return [
        ClaimedMessage(
            r["seq"],
            r["to_number"],
            r["body"],
            r["from_number"],
            r["row_number"],
            None
            if r["content_sid"] is None and r["content_variables"] is None
            else RowContent(r["content_sid"], r["content_variables"]),
        )
        for r in rows
    ]


async def copy_contents(conn: asyncpg.Connection, records: Iterable[tuple]) -> None:
    """Rows' own content templates, `CONTENT_COLUMNS` in order."""
    await conn.copy_records_to_table("message_contents", records=records, columns=CONTENT_COLUMNS)


@overload
def storable(text: str) -> str: ...


@overload
def storable(text: None) -> None: ...


def storable(text: str | None) -> str | None:
    """`text` as PostgreSQL can store it, each UNSTORABLE character as U+FFFD: a carrier's
    words may hold NUL, a JSON file's cells (`rows._read_json`) a `\\u0000` or a lone
    `\\ud800`, and one such value must not fail the statement of a whole slice, or a whole
    validation."""
    return UNSTORABLE.sub("\ufffd", text) if text else text


# The first final receipt of each sid of the outcomes ($4), to join to an outcome sent (only
# `sent` ranks below a final receipt: no other outcome takes one). Looked up for all the sids
# at once, one scan of each receipt table's sid index, not two probes per outcome: those were
# a fifth of the statement's blocks (384 of 2,038 for 96 rows with no receipt). And looked up
# once (MATERIALIZED): a plan the worker's connection kept, counting ten outcomes and one
# ledger row of them, joined them to the lookup by a nested loop that ran it again for each
# outcome, each time searching the indexes for all the wave's sids: 4.5 of 7 ms for 100
# outcomes, half the worker's PostgreSQL CPU in bench.receipts_pg.
SENT_ROW_RECEIPTS = f"f AS MATERIALIZED ({receipts.first_receipts('$4::text[]')})"


@dataclass(frozen=True, slots=True)
class Written:
    """What `write_outcomes` did: the seqs it marked `sending`, each with its attempt (the
    row's `attempts` now), and the sids whose receipts are still to be applied
    (apply_kept_receipts), once it has committed."""

    marked: dict[int, int]
    unsettled: list[str]


async def record_outcomes(
    pool: asyncpg.Pool, batch_id: uuid.UUID, outcomes: list[Outcome], *, by: int | None = None
) -> None:
    """Write outcomes (write_outcomes, of the rows `by` marked), then apply the receipts that
    came for their sids meanwhile (apply_kept_receipts): a slice's last write."""
    if outcomes:
        written = await write_outcomes(pool, batch_id, outcomes, by=by)
        await apply_kept_receipts(pool, batch_id, written.unsettled)


async def write_outcomes(
    pool: asyncpg.Pool,
    batch_id: uuid.UUID,
    outcomes: list[Outcome],
    *,
    mark: Sequence[int] = (),
    by: int | None = None,
) -> Written:
    """Write outcomes of a slice, and mark the rows of seqs `mark` `sending`, in one statement.

    Of the outcomes, only rows still `sending` by `by` (this attempt's marks) move, a
    `pending` one outside its send window (never marked `sending`) takes the time it opens,
    and `uncertain` ones move to a definite answer: an attempt presumed dead (its rows made
    `uncertain` by the next) that lived on and heard the carrier's answer settles them.

    A row of `mark` moves from `pending` to `sending`, counting an attempt, and records `by`
    (the marking attempt's token) and when (`marked_at`: reconciliation looks for its message
    only among those created since); one no longer `pending` (another attempt's, or settled)
    does not, so it is sent by no one else. A row already `sending` by `by` is this
    attempt's too: the same write run again after its connection closed mid-statement
    (activities/outages.py) finds the marks its first run committed, and returns them. The
    slice's sender marks its next wave in the statement that writes the outcomes of the last
    (one round trip a wave fewer); the rows of the two never overlap.

    A row sent whose first final receipt came before its sid (kept, or still queued) takes
    that receipt in the same write (receipts.first_receipts). A receipt that commits while
    the statement runs is not seen by it: the receipts of the other sids (`Written.unsettled`)
    are applied after it (apply_kept_receipts). The two statements commit one after the
    other, and a receipt that finds no row with its sid is queued (receipts.take_receipts)
    before anything applies it: whichever side writes second sees the first, queued or kept,
    so no receipt is lost to the race between them.
    """
    row = await pool.fetchrow(
        f"WITH {SENT_ROW_RECEIPTS}, moved AS (UPDATE messages AS m"
        " SET status = coalesce(f.status, o.status),"
        " carrier_sid = o.sid, error_code = CASE WHEN f.status IS NULL THEN o.code"
        " ELSE f.error_code END, error_message = o.msg, updated_at = now(),"
        " sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END,"
        " window_opens_at = o.opens,"
        # A request that never left is no attempt (a wait for the window, a slice stopped): a
        # row its wave marked `sending` counted one; a row never marked counted none.
        " attempts = m.attempts - (o.unsent AND m.status = 'sending')::int"
        " FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],"
        " $7::timestamptz[], $10::boolean[]) AS o(seq, status, sid, code, msg, opens, unsent)"
        " LEFT JOIN f ON f.carrier_sid = o.sid AND o.status = 'sent'"
        " WHERE m.batch_id = $1 AND m.seq = o.seq"
        # Only this attempt's marks: a statement of an attempt presumed dead, run again after
        # its answer was lost, must not undo the next attempt's marks of the same rows.
        " AND ((m.status = 'sending' AND m.marked_by IS NOT DISTINCT FROM $9)"
        " OR (m.status = 'pending' AND o.opens IS NOT NULL)"
        " OR (m.status = 'uncertain' AND o.status IN ('sent', 'failed')))"
        " RETURNING m.carrier_sid, f.status IS NOT NULL AS took),"
        # Marks are taken back only by the token that made them (`=`: a write with no token
        # adopts none); outcomes move rows of no token too (IS NOT DISTINCT FROM above), as a
        # write without one marked them.
        " marked AS (UPDATE messages SET status = 'sending',"
        " attempts = attempts + (status = 'pending')::int, marked_by = $9, marked_at = now(),"
        " updated_at = now()"
        " WHERE batch_id = $1 AND seq = ANY($8::bigint[])"
        " AND (status = 'pending' OR (status = 'sending' AND marked_by = $9))"
        " RETURNING seq, attempts)"
        " SELECT (SELECT coalesce(array_agg(carrier_sid), '{}') FROM moved WHERE took) AS took,"
        " (SELECT coalesce(array_agg(seq ORDER BY seq), '{}') FROM marked) AS marked,"
        " (SELECT coalesce(array_agg(attempts ORDER BY seq), '{}') FROM marked) AS attempts",
        batch_id,
        [o.seq for o in outcomes],
        [o.status for o in outcomes],
        [o.carrier_sid for o in outcomes],
        [o.error_code for o in outcomes],
        [storable(o.error_message) for o in outcomes],
        [o.window_opens_at for o in outcomes],
        list(mark),
        by,
        [o.unsent for o in outcomes],
    )
    # A row that took its first receipt is final: no later receipt moves it.
    final = set(row["took"])
    return Written(
        marked=dict(zip(row["marked"], row["attempts"], strict=True)),
        unsettled=[o.carrier_sid for o in outcomes if o.carrier_sid and o.carrier_sid not in final],
    )


async def renew_mark(pool: asyncpg.Pool, batch_id: uuid.UUID, seq: int, by: int) -> bool:
    """Whether row `seq` is still `sending` by the attempt `by`, its mark then renewed (its
    `marked_at` and `updated_at` now): for a row about to go on the wire long after its wave
    marked it. One that is not was made `uncertain` meanwhile (by the slice's next attempt,
    which took this one for dead, or as the batch ended), and maybe reconciled and reopened
    since: this attempt must not send it."""
    return bool(
        await pool.fetchval(
            "UPDATE messages SET marked_at = now(), updated_at = now()"
            " WHERE batch_id = $1 AND seq = $2 AND status = 'sending' AND marked_by = $3"
            " RETURNING true",
            batch_id,
            seq,
            by,
        )
    )


async def apply_kept_receipts(pool: asyncpg.Pool, batch_id: uuid.UUID, sids: list[str]) -> None:
    """Apply the receipts that came for `sids` before the sids were written to their rows.

    The receipts are looked up first, in the queue and the kept ones by the sids' index
    (receipts.WITH_RECEIPTS): the ledger is read only for the sids that have one, so a wave
    whose receipts have not come yet, the common case, costs one index scan of each receipt
    table. A receipt that commits after that look finds the sid written: the intake or the
    applier moves the row.

    The receipts applier (receipts.apply_queued) and the intake may move the same rows at
    the same moment; all lock them in one order (receipts.move_ledger), so they only wait
    in turn. Should PostgreSQL still end the statement with a deadlock (against any other
    transaction), the receipts would be lost here (the rows are written, nothing records
    them again), so the statement runs again: applying a receipt twice changes nothing.
    """
    if not sids:
        return
    waiting = await pool.fetchval(receipts.WITH_RECEIPTS, sids)
    if not waiting:
        return
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            await pool.execute(
                receipts.move_ledger(
                    receipts.first_receipts("$2::text[]"),
                    "l.carrier_sid = ANY($2::text[]) AND l.batch_id = $1",
                ),
                batch_id,
                waiting,
            )
            return
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_ATTEMPTS:
                raise


async def apply_slice_kept_receipts(
    pool: asyncpg.Pool, batch_id: uuid.UUID, start: int, end: int
) -> None:
    """`apply_kept_receipts` for the `sent` rows of seqs [start, end): a slice's attempt that
    follows one that died between writing its sids and applying the receipts kept for them
    applies them (no later statement looks for them: they would stay kept, the rows `sent`)."""
    rows = await pool.fetch(
        "SELECT carrier_sid FROM messages WHERE batch_id = $1 AND seq >= $2 AND seq < $3"
        " AND status = 'sent' AND carrier_sid IS NOT NULL",
        batch_id,
        start,
        end,
    )
    await apply_kept_receipts(pool, batch_id, [row["carrier_sid"] for row in rows])


@dataclass(frozen=True, slots=True)
class UncertainRow:
    seq: int
    to_number: str
    body: str
    created_at: datetime
    updated_at: datetime
    # The row's own sender, if it is not the batch's.
    from_number: str | None
    # The row's own content template, if it has one (else the batch's, if any, was sent).
    content_sid: str | None
    # When the row's last attempt marked it `sending` (None: marked before migration 310).
    marked_at: datetime | None


async def uncertain_rows(pool: asyncpg.Pool, batch_id: uuid.UUID) -> list[UncertainRow]:
    """The batch's `uncertain` rows, each with its own content template (looked up by its
    key, as claim_slice does)."""
    rows = await pool.fetch(
        "SELECT m.seq, m.to_number, m.body, m.created_at, m.updated_at, m.from_number,"
        " c.content_sid, m.marked_at FROM messages AS m LEFT JOIN LATERAL (SELECT content_sid"
        " FROM message_contents AS c WHERE c.batch_id = m.batch_id"
        " AND c.row_number = m.row_number LIMIT 1) AS c ON true"
        " WHERE m.batch_id = $1 AND m.status = 'uncertain' ORDER BY m.seq",
        batch_id,
    )
    return [UncertainRow(**r) for r in rows]


async def rows_to_settle(pool: asyncpg.Pool, batch_id: uuid.UUID, *, stopped: bool) -> bool:
    """Whether reconciliation has work as the batch ends, from the kept counts (every batch
    asks, and asked of the ledger PostgreSQL read it whole: in `make bench`'s sweep 36,000
    blocks and 81 ms at 600,000 rows): a row `uncertain`, or one still `sending`, which no
    live attempt holds now (a worker died under a stopped batch; a chunk was terminated) and
    which becomes `uncertain` here; or, unless the batch was stopped, a row still `pending`,
    which nothing sent (its chunk failed or was terminated through Temporal)."""
    async with pool.acquire() as conn:
        left = await count_by_status(conn, batch_id)
        if left.get(LedgerStatus.SENDING):
            await _abandon_sending(conn, batch_id)
    return bool(
        left.get(LedgerStatus.UNCERTAIN)
        or left.get(LedgerStatus.SENDING)
        or (left.get(LedgerStatus.PENDING) and not stopped)
    )


async def _abandon_sending(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, batch_id: uuid.UUID
) -> None:
    """Rows still `sending` as the batch ends belong to no live attempt: `uncertain`."""
    await conn.execute(
        "UPDATE messages SET status = 'uncertain', updated_at = now()"
        " WHERE batch_id = $1 AND status = 'sending'",
        batch_id,
    )


async def sids_in_ledger(conn: asyncpg.Pool | asyncpg.Connection, sids: list[str]) -> set[str]:
    """Which of `sids` some message row already holds, in any batch."""
    rows = await conn.fetch(
        "SELECT carrier_sid FROM messages WHERE carrier_sid = ANY($1::text[])", sids
    )
    return {r["carrier_sid"] for r in rows}


async def settle_uncertain(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    candidates: dict[int, tuple[str, list[str]]],
) -> dict[int, str]:
    """Settle each row of `candidates` (its number, and the sids of the carrier's messages
    that may be its own, oldest first): `sent` with the oldest no message of any batch or
    conversation holds; back to `pending` if none is left (the carrier never got it). Only
    rows still `uncertain` move. The rows found, with their sids.

    The sids held are read, and the rows written, in one transaction holding the numbers'
    reconciliation locks (`_lock_for_reconciliation`)."""
    found: dict[int, str] = {}
    async with pool.acquire() as conn, conn.transaction():
        await _lock_for_reconciliation(conn, account_id, [n for n, _ in candidates.values()])
        listed = sorted({sid for _, sids in candidates.values() for sid in sids})
        taken = await sids_in_ledger(conn, listed)
        taken |= await conversation_messages.sids_taken(conn, listed)
        for seq, (_, sids) in candidates.items():
            free = next((sid for sid in sids if sid not in taken), None)
            if free is not None:
                found[seq] = free
                taken.add(free)
        await conn.execute(
            "UPDATE messages AS m SET status = 'sent', carrier_sid = f.sid, sent_at = now(),"
            " error_code = NULL, error_message = NULL, updated_at = now()"
            " FROM unnest($2::bigint[], $3::text[]) AS f(seq, sid)"
            " WHERE m.batch_id = $1 AND m.seq = f.seq AND m.status = 'uncertain'",
            batch_id,
            list(found),
            list(found.values()),
        )
        await conn.execute(
            "UPDATE messages SET status = 'pending', window_opens_at = NULL, updated_at = now()"
            " WHERE batch_id = $1 AND seq = ANY($2::bigint[]) AND status = 'uncertain'",
            batch_id,
            [seq for seq in candidates if seq not in found],
        )
    await apply_kept_receipts(pool, batch_id, list(found.values()))
    return found


async def settle_conversation_message(
    pool: asyncpg.Pool, account_id: uuid.UUID, number: str, message_id: uuid.UUID, sids: list[str]
) -> str | None:
    """Settle conversation message `message_id` to `number` (`sending` or `uncertain`) as
    `settle_uncertain` settles a batch's rows, under the same lock: `sent` with the oldest of
    `sids` (the carrier's messages that may be its own, oldest first) that no message of any
    batch or conversation holds. That sid, or None when none is left or the message was
    settled meanwhile (it is left as it is). Run again after it committed (an outage cut it
    short: through_outages), it finds the sid it wrote and gives it again."""
    async with pool.acquire() as conn, conn.transaction():
        await _lock_for_reconciliation(conn, account_id, [number])
        own = (await conversation_messages.message_for_workflow(conn, message_id))["carrier_sid"]
        if own not in sids:
            taken = await sids_in_ledger(conn, sids)
            taken |= await conversation_messages.sids_taken(conn, sids)
            own = next((sid for sid in sids if sid not in taken), None)
            if own is None or not await conversation_messages.write_outcome(
                conn, message_id, status="sent", carrier_sid=own
            ):
                return None
    await receipts.apply_conversation_receipt(pool, own)
    return own


async def _lock_for_reconciliation(
    conn: asyncpg.Connection, account_id: uuid.UUID, numbers: list[str]
) -> None:
    """Hold, until the transaction ends, the reconciliation lock of each of the account's
    `numbers` (taken in one order): the carrier's list of a number is read for every send to
    it the same way, so two reconciliations at once (two batches' rows, a batch's and a
    conversation's) would each read a message as free and both take it."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
        " FROM (SELECT DISTINCT 'reconcile ' || $1 || ' ' || n AS k"
        " FROM unnest($2::text[]) AS n ORDER BY k) AS keys",
        str(account_id),
        sorted(set(numbers)),
    )


async def numbers_in_flight(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    pairs: list[tuple[str, str]],
    within_seconds: float,
) -> set[str]:
    """Which numbers of `pairs` (sender, number) a send of the account may have on the wire
    or answered, its sid not yet written: a row `sending` of another batch that is sending,
    or a conversation message of the pair `sending` for at most `within_seconds` by the
    database's clock (a request older than that has been answered or given up, and a
    conversation's send writes its answer at once). A batch's row counts however long ago
    its wave was marked: a slice writes its answers only as it marks its next wave, which a
    slow sender's pace puts minutes later; but a paused batch's only within `within_seconds`
    (its slices stopped and wrote what they had: an older row is a dead attempt's, `sending`
    until the batch resumes). Another batch's rows are read through its key (no index finds
    unsent rows by number), only if its kept counts say it has such rows (_holding)."""
    rows = await pool.fetch(
        "SELECT m.to_number FROM batches AS b JOIN messages AS m ON m.batch_id = b.id"
        " WHERE b.account_id = $1 AND b.id <> $2 AND b.status = ANY($6::text[])"
        f" AND {_holding('sending')}"
        " AND m.status = 'sending' AND m.to_number = ANY($4::text[])"
        " AND (b.status <> 'paused' OR m.marked_at > now() - make_interval(secs => $5))"
        " UNION SELECT c.user_number FROM unnest($3::text[], $4::text[]) AS p(sender, number)"
        " JOIN conversations AS c ON c.agent_number = p.sender AND c.user_number = p.number"
        " JOIN conversation_messages AS cm ON cm.conversation_id = c.id"
        " WHERE c.account_id = $1 AND cm.status = 'sending'"
        " AND cm.updated_at > now() - make_interval(secs => $5)",
        account_id,
        batch_id,
        [sender for sender, _ in pairs],
        [number for _, number in pairs],
        within_seconds,
        list(SENDING_BATCH_STATUSES),
    )
    return {r["to_number"] for r in rows}


def _holding(status: LedgerStatus | str) -> str:
    """The condition that batch `b` has rows in `status`, by the counts its ledger's triggers
    keep: a batch with none is not read (its ledger scanned by its key, a million rows, for
    nothing)."""
    return (
        "(SELECT coalesce(sum(s.n), 0) FROM batch_status_counts AS s"
        f" WHERE s.batch_id = b.id AND s.status = '{LedgerStatus(status)}') > 0"
    )


async def uncertain_elsewhere(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID, pairs: list[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of `pairs` (sender, number) another batch of the account that is sending holds an
    `uncertain` row to: a message of its at the carrier has no sid in the ledger either.
    Read through each batch's key, as numbers_in_flight reads."""
    rows = await pool.fetch(
        "SELECT DISTINCT coalesce(m.from_number, b.agent_number) AS sender, m.to_number"
        " FROM batches AS b JOIN messages AS m ON m.batch_id = b.id"
        " WHERE b.account_id = $1 AND b.id <> $2 AND b.status = ANY($4::text[])"
        f" AND {_holding('uncertain')}"
        " AND m.status = 'uncertain' AND m.to_number = ANY($3::text[])",
        account_id,
        batch_id,
        [number for _, number in pairs],
        list(SENDING_BATCH_STATUSES),
    )
    return {(r["sender"], r["to_number"]) for r in rows} & set(pairs)


async def unsent_rows(pool: asyncpg.Pool, batch_id: uuid.UUID) -> list[int]:
    """The seqs of the batch's rows still `pending`: as it ends, what it is still to send
    (reopened by reconciliation, whichever attempt of it did; or left by a chunk that
    failed). Asked only when `rows_to_settle` found some."""
    rows = await pool.fetch(
        "SELECT seq FROM messages WHERE batch_id = $1 AND status = 'pending' ORDER BY seq",
        batch_id,
    )
    return [r["seq"] for r in rows]


async def close_ledger(
    pool: asyncpg.Pool, batch_id: uuid.UUID, *, pending_as: LedgerStatus | None
) -> None:
    """Give every row a terminal state as the batch ends: a row still `sending` belongs to no
    live attempt (`uncertain`); `pending` rows of a cancelled or expired batch become
    `pending_as`. Only statuses the kept counts hold are looked for: most batches end with
    none, and each look reads the batch's rows (or the whole ledger, by a sequential scan)."""
    async with pool.acquire() as conn, conn.transaction():
        left = await count_by_status(conn, batch_id)
        if left.get(LedgerStatus.SENDING):
            await _abandon_sending(conn, batch_id)
        if pending_as is not None and left.get(LedgerStatus.PENDING):
            await conn.execute(
                "UPDATE messages SET status = $2, updated_at = now()"
                " WHERE batch_id = $1 AND status = 'pending'",
                batch_id,
                pending_as,
            )


async def reopen(
    pool: asyncpg.Pool,
    batch_id: uuid.UUID,
    statuses: list[LedgerStatus],
    *,
    attempts_below: int | None = None,
) -> int:
    """Put rows in `statuses` back to `pending` for another attempt, those sent fewer than
    `attempts_below` times if given; how many were."""
    result = await pool.execute(
        "UPDATE messages SET status = 'pending', window_opens_at = NULL, updated_at = now()"
        " WHERE batch_id = $1 AND status = ANY($2::text[])"
        " AND ($3::int IS NULL OR attempts < $3)",
        batch_id,
        statuses,
        attempts_below,
    )
    return rows_affected(result)


async def count_in_statuses(
    pool: asyncpg.Pool,
    batch_id: uuid.UUID,
    statuses: Sequence[str],
    *,
    attempts_below: int | None = None,
    also: Sequence[str] = (),
) -> int:
    """Rows in `statuses`, of those sent fewer than `attempts_below` times if given, and
    every row in `also` (each row counted once). Without `attempts_below`, from the counts
    the ledger's triggers keep (count_by_status), not a read of the batch's ledger (a
    million rows per retry request)."""
    if attempts_below is None:
        counts = await count_by_status(pool, batch_id)
        return sum(counts.get(status, 0) for status in {*statuses, *also})
    return await pool.fetchval(
        "SELECT count(*) FROM messages WHERE batch_id = $1 AND ((status = ANY($2::text[])"
        " AND ($3::int IS NULL OR attempts < $3)) OR status = ANY($4::text[]))",
        batch_id,
        statuses,
        attempts_below,
        list(also),
    )


async def count_waiting_for_window(
    pool: asyncpg.Pool | asyncpg.Connection, batch_id: uuid.UUID
) -> int:
    """Rows left `pending` until their send window opens, as the ledger's triggers count
    them (migration 280): a few rows per batch, however large its ledger."""
    return await pool.fetchval(
        "SELECT coalesce(sum(windowed), 0)::bigint FROM batch_status_counts"
        " WHERE batch_id = $1 AND status = 'pending'",
        batch_id,
    )


# The counts kept by the ledger's triggers (migration 211): a few rows per batch, however
# large its ledger.
COUNT_BY_STATUS = (
    "SELECT status, sum(n)::bigint AS n FROM batch_status_counts WHERE batch_id = $1"
    " GROUP BY status HAVING sum(n) <> 0"
)


async def count_by_status(
    pool: asyncpg.Pool | asyncpg.pool.PoolConnectionProxy, batch_id: uuid.UUID
) -> dict[str, int]:
    """The batch's ledger rows by status (statuses with none left out)."""
    rows = await pool.fetch(COUNT_BY_STATUS, batch_id)
    return {r["status"]: r["n"] for r in rows}


async def list_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    after_seq: int,
    before_seq: int | None = None,
    search: str | None = None,
) -> list[dict]:
    """Up to `limit` rows in `seq` order: the first after `after_seq`, or, with `before_seq`,
    the last before it; of `status` and with `search` in the number, if given. A page read
    backwards bounds `seq` by `before_seq` itself: `($6 IS NULL OR seq < $6)`, which a generic
    plan cannot bound the index by, read it from the batch's last row down."""
    backwards = before_seq is not None
    rows = await pool.fetch(
        "SELECT m.seq, m.row_number, m.to_number, m.body, m.encoding, m.segments, m.status,"
        " m.carrier_sid, m.error_code, m.error_message, m.attempts, m.created_at, m.sent_at,"
        " m.updated_at, m.from_number, m.language, m.request_data, r.reference,"
        " coalesce(c.clicks, 0) AS clicks,"
        " c.first_clicked_at FROM messages m"
        " LEFT JOIN message_references r"
        " ON r.batch_id = m.batch_id AND r.row_number = m.row_number"
        " LEFT JOIN LATERAL (SELECT sum(clicks)::bigint AS clicks, min(first_clicked_at)"
        " AS first_clicked_at FROM short_links l WHERE l.batch_id = m.batch_id"
        " AND l.seq = m.seq) c ON true"
        " WHERE m.batch_id = $1 AND m.account_id = $2 AND m.seq > $3"
        " AND ($4::text IS NULL OR m.status = $4)"
        + (" AND m.seq < $6" if backwards else " AND $6::bigint IS NULL")
        + " AND ($7::text IS NULL OR strpos(m.to_number, $7) > 0)"
        f" ORDER BY m.seq {'DESC' if backwards else ''} LIMIT $5",
        batch_id,
        account_id,
        after_seq,
        status,
        limit,
        before_seq,
        search,
    )
    found = [dict(r) for r in rows]
    return found[::-1] if backwards else found


async def add_references(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    references: Iterable[tuple[int, str]],
) -> None:
    """The caller's references of a new batch's rows, as (row_number, reference)."""
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "message_references",
            records=[(batch_id, number, account_id, ref) for number, ref in references],
            columns=("batch_id", "row_number", "account_id", "reference"),
        )


async def ledger_footprint(pool: asyncpg.Pool) -> tuple[int, int]:
    """Rows in the whole ledger and its size on disk (table, indexes and TOAST), in bytes."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, pg_total_relation_size('messages') AS size FROM messages"
    )
    return row["n"], row["size"]


async def list_rejected(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    limit: int,
    after_row: int,
) -> list[dict]:
    rows = await pool.fetch(
        "SELECT row_number, value, code, reason FROM rejected_rows"
        " WHERE batch_id = $1 AND account_id = $2 AND row_number > $3"
        " ORDER BY row_number LIMIT $4",
        batch_id,
        account_id,
        after_row,
        limit,
    )
    return [dict(r) for r in rows]
