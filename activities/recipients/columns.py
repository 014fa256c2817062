"""A plain CSV recipient file validated by columns, in polars: `build_recipients`'
outcomes, faster, for the files that are most of the traffic.

`build_recipients` handles any file row by row; its per-row Python objects cost much more
than reading the CSV. A file with no quoting (no `"`), in UTF-8, with no lone
carriage return, is one row a line: it is cut into blocks of lines, each read by polars
(which then reads as Python's csv module does) and validated by vectorised passes; a row
those do not settle goes through `recipients`' own rules, so both paths give the same
outcomes. `plain_csv` returns None for any other file, and a block that turns out not to
be plain raises NotPlain: the caller then takes the row path.

Expressions are evaluated with `select_seq` and `with_columns_seq` (here and in
`phone_columns`): a block's expressions each take well under a millisecond, and polars'
parallel evaluation of several costs more than they do (74 µs against 19 for two cheap
expressions over 1,000 rows); the blocks themselves run in parallel (`IN_FLIGHT`).
"""

import asyncio
import csv
import functools
import io
import re
import struct
import sys
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, BinaryIO, TypeVar, cast

from activities.recipients import rejections
from activities.recipients.frames import pl
from activities.recipients.phone_columns import possible_e164_column, valid_e164_column
from activities.recipients.phones import POSSIBLE
from activities.recipients.quoting import next_record_end, records_alike
from activities.recipients.rejections import Code, Rejected
from activities.recipients.rows import (
    JSON_START,
    MESSAGE_COLUMN,
    PHONE_COLUMN,
    REQUEST_DATA_PREFIX,
    STRICT_EXAMPLES,
    RecipientRules,
    Tally,
    phone_column_issue,
    request_defaults,
    request_field,
    row_outcome,
    template_parts,
    too_many_rows,
    variable_sources,
)
from activities.recipients.segments import (
    GSM7,
    GSM7_BASIC,
    GSM7_EXTENSION,
    GSM7_PART,
    GSM7_SINGLE,
    UCS2,
    UCS2_PART,
    UCS2_SINGLE,
)
from store.messages import (
    LOADED_COLUMNS,
    RECIPIENT_COLUMNS,
    RECIPIENT_DATA_COLUMNS,
    REJECTED_COLUMNS,
)

LEDGER_COLUMNS = (
    "seq",
    "row_number",
    "to_number",
    "body",
    "status",
    "skip_code",
    "encoding",
    "segments",
)
_BOM = b"\xef\xbb\xbf"
# What `in_thread`'s `next` gives after the last item.
_END = object()
T = TypeVar("T")
# A CR not before a LF: a line end to the csv module, not to polars.
_LONE_CR = re.compile(rb"\r(?!\n)")
# Sizes of data `_newlines` and `_lone_cr` read by polars: below, Python is as quick; above
# (a block's one long line), polars' pass would take several times the data's size.
_BYTES_BY_POLARS = range(64 << 10, 8 << 20)
# Lines of a file, whole: a block is given as pieces of them, joined when it is read.
Lines = bytes | memoryview
# A row's language, carried beside its ledger row (a Postman upload's).
LANGUAGE_COLUMN = "language"
# The file's row numbers, under a name no column of a file without NUL bytes can have.
_ROW = "\x00row_number"
# Bytes of the file validated at a time, so memory stays flat whatever the file's size, and
# each block is COPYed while the next is made. Each MiB more of a block costs about 25 MiB
# more at the peak and saves a block's fixed cost (polars' calls): 2 MiB, with the file's
# bytes on disk, keeps a 1,000,000-row validation under 300 MB (docs/RECIPIENTS.md).
BLOCK_BYTES = 2 << 20
# Blocks validated at once, each in its own thread. Three on two cores: with two, a fifth
# of the cores' time was idle (each thread waits for the GIL and for polars' pool between
# its calls, and the other thread cannot always fill the gap); a third block fills more of
# it. At 1,000,000 rows, alternated: 0.96x the csv module against 0.89x in the median,
# with the process's peak 13 MiB higher and the stack's validating worker's within its
# noise (docs/PERFORMANCE.md, 2026-12-05, midday).
IN_FLIGHT = 3
# Blocks read from the file ahead of the threads (`_ReadAhead`).
READ_AHEAD = 2
# Ledger rows per COPY: a few MB of CSV.
COPY_ROWS = 25_000
# Distinct own messages (`agent_message` cells) of a block rendered by columns, each over
# its rows; a block with more settles its rows with own messages one by one.
OWN_TEMPLATES = 8


class NotPlain(Exception):
    """A block of a file taken for plain CSV is not: a row with more cells than the header,
    bytes that are not UTF-8, a lone CR. The row path must take the whole file."""


@dataclass(frozen=True)
class Block:
    """Ledger rows in send order (`LEDGER_COLUMNS`) and rejected rows, in file order."""

    ledger: pl.DataFrame
    rejected: list[Rejected]

    @property
    def copy_columns(self) -> tuple[str, ...]:
        """The ledger's columns `ledger_csv` gives: with a `language` carried (a Postman
        upload's), the row's language and its `request_data.<name>` values as JSON too; with
        `request_data.<name>` values alone (a file's request-data columns), those."""
        if LANGUAGE_COLUMN in self.ledger.columns:
            return LOADED_COLUMNS
        if any(name.startswith(REQUEST_DATA_PREFIX) for name in self.ledger.columns):
            return RECIPIENT_DATA_COLUMNS
        return RECIPIENT_COLUMNS

    def ledger_csv(self, batch_id: uuid.UUID, account_id: uuid.UUID) -> Iterator[bytes]:
        """The ledger as CSV for `copy_recipients_csv` (`copy_columns`), `COPY_ROWS` rows at
        a time (a few MB each). Strings are quoted, so an empty one stays apart from NULL
        (an unquoted empty field). The request data's JSON keeps a blank cell's field, null
        or blank: the ledger's reader leaves it out (rows.kept_request_data)."""
        columns = self.copy_columns
        carried: list[pl.Expr] = []
        if columns == LOADED_COLUMNS:
            carried.append(pl.col(LANGUAGE_COLUMN))
        if columns != RECIPIENT_COLUMNS:
            values = [name for name in self.ledger.columns if name.startswith(REQUEST_DATA_PREFIX)]
            carried.append(
                pl.struct(
                    pl.col(name).alias(name.removeprefix(REQUEST_DATA_PREFIX)) for name in values
                )
                .struct.json_encode()
                .alias("request_data")
                if values
                else pl.lit("{}").alias("request_data")
            )
        for start in range(0, self.ledger.height, COPY_ROWS):
            table = self.ledger.slice(start, COPY_ROWS).select_seq(
                pl.lit(str(batch_id)).alias("batch_id"),
                "seq",
                pl.lit(str(account_id)).alias("account_id"),
                "row_number",
                "to_number",
                "body",
                "status",
                pl.col("skip_code").alias("error_code"),
                "encoding",
                "segments",
                *carried,
            )
            assert tuple(table.columns) == columns
            out = _Written()
            # polars writes through `write` alone (`flush` and `tell` only where there are
            # such methods); its stubs ask for a whole binary file.
            table.write_csv(cast(IO[bytes], out), include_header=False, quote_style="non_numeric")
            yield b"".join(out.chunks)


class _Written:
    """What polars writes, kept as the bytes it writes: a part's CSV comes in one or a few
    writes of a few MB. A `BytesIO` grew by copying itself into larger buffers, and
    `getvalue` copied it once more: glibc made those buffers from heaps it keeps (a thread's
    own, once a large block has raised its mmap threshold), and they stayed in the worker."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> int:
        self.chunks.append(chunk)
        return len(chunk)


@dataclass
class PlainCsv:
    """A file polars reads as the csv module would (see the module), validated a block at
    a time by `blocks`; `tally` counts the blocks given so far. `content` is the file's
    bytes, or the file itself, read a block at a time (`plain_csv_file`)."""

    header: list[str]
    content: bytes | BinaryIO
    rules: RecipientRules
    tally: Tally = field(default_factory=Tally)

    def blocks(self, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
        """Each block's outcomes, in file order (`frame_blocks`). Raises SourceInvalid (too
        many rows) and NotPlain."""
        header_line, line_blocks = (
            _memory_lines(self.content, block_bytes)
            if isinstance(self.content, bytes)
            else _file_lines(self.content, block_bytes)
        )

        def read(first_row: int, pieces: list[Lines], count: int) -> pl.DataFrame:
            text = b"".join((header_line, *pieces))
            # The pieces, freed now rather than with the block's thread's work (which holds
            # this read until the block is validated).
            pieces.clear()
            return _read_block(text, self.header, first_row, count)

        reads = (
            functools.partial(read, first_row, [*pieces], count)
            for first_row, pieces, count in line_blocks
        )
        carried = _request_data(self.header, self.rules)
        yield from frame_blocks(reads, self.header, self.rules, self.tally, carried)


def frame_blocks(
    reads: Iterator[Callable[[], pl.DataFrame]],
    header: list[str],
    rules: RecipientRules,
    tally: Tally,
    carried: Sequence[pl.Expr] = (),
) -> Iterator[Block]:
    """The outcomes of blocks of rows, in order: each `read` gives a block's cells (strings,
    "" where empty) under `header`'s names, numbered by `numbered`; `tally` counts the blocks
    given. The columns `carried` makes of each block's frame are kept beside each ledger
    row. Raises SourceInvalid (too many rows), what a `read` raises and what `reads`
    itself raises (reading the file), in file order. `IN_FLIGHT` blocks are validated at
    once, each in a thread (polars lets go of the GIL), since one block's passes are too
    short to keep the cores busy, and the next are read from the file meanwhile
    (`_ReadAhead`). A block's thread also
    looks for its numbers in the blocks before it, waiting for those still being validated
    to find theirs (a block never waits for a later one); only the skip codes, which depend
    on the counts of the blocks before, are given here, in order."""
    sources = variable_sources(header, rules.column_mapping)
    defaults = request_defaults(rules)
    carried_names = [column.meta.output_name() for column in carried]
    # The numbers of the Recipients of each block given, as integers (8 bytes each).
    seen: list[pl.Series] = []

    def validate(
        read: Callable[[], pl.DataFrame],
        given: list[pl.Series],
        earlier: list[Future[pl.Series | None]],
        found: Future[pl.Series | None],
    ) -> _Validated:
        """A block validated, its numbers set in `found` as soon as they are known (None if
        it failed: what it raised is given in its turn, and is not passed on, which would
        keep the blocks after it, their frames in its traceback, alive until the garbage
        collector runs). `given`: the numbers of the blocks given when it was submitted;
        `earlier`: of those submitted before it, not given then."""
        try:
            frame = read()
            rows, block = _validate(frame, header, rules, sources, defaults, carried)
            # The cells, freed while the block waits for the numbers of those before it.
            del frame
            # Where repeated numbers are sent, none is looked for.
            keys = _keys(block.ledger) if rules.exclude_duplicates else _NO_KEYS
        except BaseException:
            found.set_result(None)
            raise
        found.set_result(keys)
        if not rules.exclude_duplicates:
            return _Validated(rows, block, keys, _NOT_REPEATED)
        before = list(given)
        for numbers in earlier:
            if (theirs := numbers.result()) is None:
                raise _AfterFailed
            before.append(theirs)
        return _Validated(rows, block, keys, _repeated(keys, before))

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as executor:
        pending: deque[Future[_Validated]] = deque()
        # The numbers of the blocks submitted and not given yet, as their threads find them.
        numbers: deque[Future[pl.Series | None]] = deque()
        upcoming: _ReadAhead | None = _ReadAhead(reads)

        def fill(blocks: int = IN_FLIGHT) -> None:
            nonlocal upcoming
            while upcoming is not None and len(pending) < blocks:
                if pending and not upcoming.has_read():
                    # The end, or what reading the file raised: raised in its turn, once
                    # the blocks before it are given (one of them may fail first).
                    return
                read = upcoming.take()
                if read is None:
                    upcoming = None
                else:
                    found: Future[pl.Series | None] = Future()
                    pending.append(executor.submit(validate, read, list(seen), [*numbers], found))
                    numbers.append(found)

        try:
            fill()
            while pending:
                if not pending[0].done():
                    # Rather than wait idle; not as a block is submitted: its thread would
                    # wait for the GIL this holds.
                    while (
                        upcoming is not None
                        and not any(block.done() for block in pending)
                        and upcoming.prepare()
                    ):
                        pass
                    wait(pending, return_when=FIRST_COMPLETED)
                    # A block done before the one before it: its thread takes another at
                    # once, rather than wait with it. Only while this loop waits for the
                    # block it gives next: while a block given waits for the caller (the
                    # COPY of the one before), at most `IN_FLIGHT` are submitted, and done
                    # blocks do not pile up in memory. Not when reading the next block
                    # failed: that is raised in its turn, by `fill` once this one is given.
                    if (
                        not pending[0].done()
                        and any(block.done() and block.exception() is None for block in pending)
                        and upcoming is not None
                        and upcoming.has_read()
                    ):
                        fill(IN_FLIGHT + 1)
                done = pending.popleft().result()
                numbers.popleft()
                seen.append(done.keys)
                if tally.rows + done.rows > rules.max_rows:
                    raise too_many_rows(rules.max_rows)
                # The next block is read and started now, not once this one is given.
                fill()
                ledger = _with_skips(
                    done.block.ledger, rules, done.repeated, tally.recipients, carried_names
                )
                block = Block(ledger, done.block.rejected)
                tally.add(_tally(done.rows, ledger, block.rejected))
                yield block
                # Not held while the next block is awaited: its CSV, made as it is COPYed,
                # holds what it needs, and lets it go with its last part (`ledger_copies`).
                del done, ledger, block
        finally:
            # What the blocks not given hold, freed now rather than with what was raised.
            pending.clear()
            numbers.clear()
            if upcoming is not None:
                upcoming.close()


class _AfterFailed(Exception):
    """A block's thread gave up: a block before it failed, and is raised in its turn."""


class _ReadAhead:
    """The reads of `frame_blocks`, up to `READ_AHEAD` ahead: the next blocks' bytes are read
    from the file and their lines counted (`_file_lines`, 2-3 ms a block, mostly waiting for
    the GIL) while the blocks submitted are validated, not once a thread is done and waits
    for its next block. Two, as two threads often end their blocks within a few ms of each
    other: with one read ahead the second waited for its block's read. What reading raised
    is raised when it is taken, after the blocks read before it, where it would have been
    raised without reading ahead."""

    def __init__(self, reads: Iterator[Callable[[], pl.DataFrame]]) -> None:
        self._reads: Iterator[Callable[[], pl.DataFrame]] | None = reads
        self._held: deque[Callable[[], pl.DataFrame]] = deque()
        self._error: Exception | None = None

    def prepare(self) -> bool:
        """Read one more block now, if fewer than `READ_AHEAD` are held; whether one was."""
        if len(self._held) >= READ_AHEAD or self._error is not None or self._reads is None:
            return False
        try:
            read = next(self._reads, None)
        except Exception as error:
            self._error = error
            return False
        if read is None:
            self._reads = None
            return False
        self._held.append(read)
        return True

    def has_read(self) -> bool:
        """Whether a block is there to take (not the end, nor what reading it raised)."""
        if not self._held:
            self.prepare()
        return bool(self._held)

    def take(self) -> Callable[[], pl.DataFrame] | None:
        """The next block's read, None after the last."""
        if self.has_read():
            return self._held.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            try:
                raise error
            finally:
                # Its traceback holds this frame: kept in it, a reference cycle.
                del error
        return None

    def close(self) -> None:
        """Drop what was read ahead: a stored error's traceback holds the frames that hold
        this (a reference cycle, freed only by the garbage collector otherwise)."""
        self._reads = self._error = None
        self._held.clear()


def numbered(frame: pl.DataFrame, rows: int | Sequence[int]) -> pl.DataFrame:
    """A block's rows numbered, as `frame_blocks` takes them (the file's first row after
    its header is 1): from `rows` on, or each its own of `rows` (increasing: the rows in
    file order)."""
    if isinstance(rows, int):
        return frame.with_row_index(_ROW, offset=rows)
    return frame.with_columns_seq(pl.Series(_ROW, rows, dtype=pl.UInt32))


# `_Validated`'s numbers where repeated numbers are sent (`exclude_duplicates` false).
_NO_KEYS = pl.Series(dtype=pl.Int64)
_NOT_REPEATED = pl.Series(dtype=pl.Boolean)

# A stored ledger file (`write_ledger`): blocks, each its length then an Arrow IPC stream.
_BLOCK_LENGTH = struct.Struct("<Q")


def write_ledger(block: Block, out: IO[bytes]) -> None:
    """Add a block's ledger rows (with their carried columns) to a file of them, for
    `loaded_ledger` to read back as they are: an Arrow IPC stream compressed by zstd, a
    tenth of their CSV's bytes, which is what storing the file costs (tens of ms a MB)."""
    data = io.BytesIO()
    block.ledger.write_ipc_stream(data, compression="zstd")
    out.write(_BLOCK_LENGTH.pack(data.tell()))
    out.write(data.getbuffer())


def loaded_ledger(content: bytes) -> Iterator[tuple[Block, Tally]]:
    """The blocks of ledger rows `write_ledger` wrote, as they were (no rule applied again:
    they were validated as they were written), each with its counts."""
    view = memoryview(content)
    at = 0
    while at < len(view):
        (length,) = _BLOCK_LENGTH.unpack_from(view, at)
        at += _BLOCK_LENGTH.size
        ledger = pl.read_ipc_stream(view[at : at + length].tobytes())
        at += length
        yield Block(ledger, []), _tally(ledger.height, ledger, [])


@dataclass(frozen=True)
class _Validated:
    """A validated block: its rows (blank ones aside), outcomes, numbers as integers, and
    which of them came before, in it or in the blocks before (none of either where repeated
    numbers are sent)."""

    rows: int
    block: Block
    keys: pl.Series
    repeated: pl.Series


def plain_csv(content: bytes, rules: RecipientRules) -> PlainCsv | None:
    """The file as plain CSV, to validate by columns; None when it is not one, or has not
    exactly one `phone_number` column (the row path refuses it, saying why)."""
    header = _plain_header(content)
    if header is None or phone_column_issue(header) is not None or b"\n" not in content:
        return None
    return PlainCsv(header, content, rules)


def plain_csv_file(file: BinaryIO, rules: RecipientRules) -> PlainCsv | None:
    """`plain_csv` of a file read a block at a time from its start, so memory stays flat
    whatever its size. Only its header is read here: a block with a quote or a NUL byte
    raises NotPlain when its turn comes."""
    file.seek(0)
    first = file.readline()
    header = _plain_header(first)
    if header is None or phone_column_issue(header) is not None or not first.endswith(b"\n"):
        return None
    return PlainCsv(header, file, rules)


@dataclass(frozen=True)
class LedgerCopy:
    """A block's ledger rows as CSV of `columns` for `copy_recipients_csv`, a part at a time,
    each made (in a thread) once the one before is taken, and its rejected rows as
    `copy_rejected` records."""

    ledger: AsyncIterator[bytes]
    rejected: list[tuple]
    columns: tuple[str, ...]


async def in_thread(items: Iterator[T]) -> AsyncIterator[T]:
    """`items`, each made in a thread when it is asked for, off the event loop."""
    while (item := await asyncio.to_thread(next, items, _END)) is not _END:
        yield cast(T, item)


async def ledger_copies(
    plain: PlainCsv,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    *,
    with_ledger: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> AsyncGenerator[LedgerCopy, None]:
    """The plain file's outcomes block by block, the next block validated (in threads) while
    the caller COPYs this one; with `with_ledger` False, no ledger once a row is rejected
    (a strict batch's). A block's CSV is made a part at a time as the caller COPYs it, and
    its frame goes with its last part, rather than all its parts made at once and the frame
    kept until the next block is given (with `_Written`, 15 to 20 MiB of the validating
    worker's peak at 1,000,000 rows: docs/PERFORMANCE.md, "2026-12-07, afternoon")."""
    blocks = plain.blocks(block_bytes)
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, blocks, None))
    try:
        while (block := await upcoming) is not None:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, blocks, None))
            parts = (
                block.ledger_csv(batch_id, account_id)
                if with_ledger or not plain.tally.rejected
                else iter(())
            )
            copy = LedgerCopy(
                in_thread(parts),
                [rejected_record(batch_id, account_id, row) for row in block.rejected],
                block.copy_columns,
            )
            del block, parts
            yield copy
    finally:
        upcoming.cancel()


def rejected_record(batch_id: uuid.UUID, account_id: uuid.UUID, row: Rejected) -> tuple:
    """A rejected row as `copy_rejected` takes it (`REJECTED_COLUMNS`)."""
    record = (batch_id, row.row_number, account_id, row.code, row.reason, row.value)
    assert len(record) == len(REJECTED_COLUMNS)
    return record


def _plain_header(content: bytes) -> list[str] | None:
    """The stripped column names, when polars reads the file as the csv module would: no
    quoting in the header (its cells may be quoted, `quoting.records_alike`), no NUL, not
    JSON, column names unique once stripped, none that `pl.col` reads as a pattern (`*`,
    `^...$`) rather than a name."""
    if JSON_START.match(content) or b"\x00" in content:
        return None
    start = len(_BOM) if content.startswith(_BOM) else 0
    end = content.find(b"\n", start)
    first = content[start : None if end < 0 else end].removesuffix(b"\r")
    if b'"' in first:
        return None
    try:
        names = [name.strip() for name in first.decode("utf-8").split(",")]
    except UnicodeDecodeError:
        return None
    if b"\r" in first or not all(names) or len(set(names)) != len(names):
        return None
    if any(name == "*" or (name.startswith("^") and name.endswith("$")) for name in names):
        return None
    return names


def _even_size(size: int, block_bytes: int) -> int:
    """Bytes a block to cut `size` bytes into blocks of at most about `block_bytes`: one,
    or as many as a multiple of `IN_FLIGHT`. Blocks of one size end together, where a
    short last block would leave a core idle while it is validated."""
    blocks = -(-size // block_bytes)
    if blocks <= 1:
        return block_bytes
    return -(-size // (-(-blocks // IN_FLIGHT) * IN_FLIGHT))


def _memory_lines(
    content: bytes, block_bytes: int
) -> tuple[bytes, Iterator[tuple[int, Sequence[Lines], int]]]:
    """The header line (with `\\n`, without BOM or CR) and the blocks of lines after it,
    each in pieces to join, with its first row's number and its count of records."""
    start = len(_BOM) if content.startswith(_BOM) else 0
    end = content.find(b"\n", start)
    header_line = content[start:end].removesuffix(b"\r") + b"\n"
    view = memoryview(content)
    blocks = _line_blocks(content, end + 1, _even_size(len(content) - end - 1, block_bytes))
    return header_line, ((row, (view[lines],), count) for row, lines, count in blocks)


def _file_lines(
    file: BinaryIO, block_bytes: int
) -> tuple[bytes, Iterator[tuple[int, Sequence[Lines], int]]]:
    """`_memory_lines` of a file, read from its start a block at a time."""
    file.seek(0, io.SEEK_END)
    size = file.tell()
    file.seek(0)
    first = file.readline()
    header_line = first.removeprefix(_BOM).removesuffix(b"\n").removesuffix(b"\r") + b"\n"
    block_size = _even_size(size - len(first), block_bytes)

    def blocks() -> Iterator[tuple[int, Sequence[Lines], int]]:
        first_row = 1
        while chunk := file.read(block_size):
            # To the end of its line, and with quotes to the end of a record (a quoted cell
            # may hold line breaks). Kept in pieces, which the block's read joins once with
            # the header line: joined here too, the block would be copied once more, holding
            # the GIL the blocks' threads need (as counting does: a search for a quote costs
            # a fiftieth of counting them).
            pieces = [chunk, file.readline()]
            quoted = any(b'"' in piece for piece in pieces)
            if quoted:
                quotes = sum(piece.count(b'"') for piece in pieces)
                while quotes % 2 and (line := file.readline()):
                    pieces.append(line)
                    quotes += line.count(b'"')
            if any(b"\x00" in piece for piece in pieces):
                raise NotPlain("a NUL byte")
            if quoted:
                count = _records(b"".join(pieces))
            else:
                # A line a record; the last piece is empty at the file's end.
                ends = (pieces[-1] or chunk).endswith(b"\n")
                count = sum(_newlines(piece) for piece in pieces) + (not ends)
            yield first_row, pieces, count
            first_row += count

    return header_line, blocks()


def _newlines(data: bytes) -> int:
    """`data.count(b"\\n")`; by polars when large (`_bytes_column`)."""
    if len(data) not in _BYTES_BY_POLARS:
        return data.count(b"\n")
    return pl.select((_bytes_column(data) == ord("\n")).sum()).item()


def _lone_cr(data: bytes) -> bool:
    """Whether `data` holds a CR not before a LF; by polars when large (`_bytes_column`)."""
    if len(data) not in _BYTES_BY_POLARS:
        return _LONE_CR.search(data) is not None
    octets = _bytes_column(data)
    return pl.select(
        ((octets == ord("\r")) & (octets.shift(-1).fill_null(0) != ord("\n"))).any()
    ).item()


def _bytes_column(data: bytes) -> pl.Expr:
    """`data` as a column of its bytes (UInt8), for passes over a block's bytes: the
    `bytes` methods and `re` hold the GIL, which the blocks' threads need between their
    polars calls, about a millisecond a MiB (a count of line breaks; the search for a lone
    CR in a CRLF file, 1.5 ms); polars lets go of it and takes a third of the time."""
    column = pl.lit(pl.Series([data], dtype=pl.Binary))
    return column.bin.reinterpret(dtype=pl.Array(pl.UInt8, len(data))).arr.explode()


def _line_blocks(content: bytes, start: int, size: int) -> Iterator[tuple[int, slice, int]]:
    """Where whole lines from `start` are, about `size` bytes at a time, with the row number
    of the first (the header's line is row 0) and their count. Without quoting, a line is
    a row."""
    first_row = 1
    while start < len(content):
        end = next_record_end(content, start, start + size)
        if content.find(b'"', start, end) < 0:
            count = content.count(b"\n", start, end) + (not content.endswith(b"\n", 0, end))
        else:
            count = _records(content[start:end])
        yield first_row, slice(start, end), count
        first_row += count
        start = end


def _records(data: bytes) -> int:
    """The records of a block of lines holding a quote (without, a line is a record);
    NotPlain when polars may not read them as the csv module does
    (`quoting.records_alike`)."""
    count = records_alike(data)
    if count is None:
        raise NotPlain("quoting the csv module may read otherwise")
    return count


def _read_block(text: bytes, header: list[str], first_row: int, lines: int) -> pl.DataFrame:
    """The rows of a header line and `lines` records, one per line (an empty line is a row
    of nulls) but where quoted cells hold line breaks, numbered from `first_row`; cells are
    "" where missing."""
    quoted = b'"' in text
    try:
        frame = pl.read_csv(
            text,
            has_header=True,
            infer_schema=False,
            quote_char='"' if quoted else None,
            encoding="utf8",
            # "" where empty; null only where a row has fewer cells than the header.
            empty_string_is_null=False,
        )
    except pl.exceptions.PolarsError as error:
        raise NotPlain(str(error)) from error
    if frame.width != len(header) or frame.height != lines:
        raise NotPlain(f"{frame.height} rows of {frame.width} cells for {lines} lines")
    frame = frame.rename(dict(zip(frame.columns, header, strict=True)))
    if any(column.has_nulls() for column in frame.get_columns()):
        frame = frame.fill_null("")
    if frame.is_empty():
        return numbered(frame, first_row)
    # The csv module ends a line at a lone CR (polars keeps it in the cell, or drops it),
    # and refuses a cell over its limit. A CR not before a LF is looked for in the bytes
    # (a pass over them costs a fraction of one over the cells, and only a block with a CR
    # needs it: a search for a CR costs a tenth of it); a quoted block's CRs were checked
    # by `_records`: any left are in quoted cells.
    lone_cr = not quoted and b"\r" in text and _lone_cr(text)
    limit = csv.field_size_limit()
    longest = frame.select_seq(pl.max_horizontal(pl.all().str.len_bytes().max())).item()
    if lone_cr or (
        longest > limit and max(frame.select_seq(pl.all().str.len_chars().max()).row(0)) > limit
    ):
        raise NotPlain("a lone CR, or a cell over the csv module's limit")
    return numbered(frame, first_row)


def _validate(
    frame: pl.DataFrame,
    header: list[str],
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
    carried: Sequence[pl.Expr],
) -> tuple[int, Block]:
    """A block's rows (blank ones aside: `_settle_rows`) and outcomes but their skip codes:
    its ledger lacks `seq`, `status` and `skip_code`; the `carried` columns follow the
    outcomes."""
    table = frame.select_seq(
        pl.col(_ROW).alias("row_number"),
        _numbers(frame[PHONE_COLUMN], rules).alias("to_number"),
        *_message(frame, header, rules, sources, defaults),
        *carried,
    )
    ledger, rejected, blank = _settle_rows(frame, table, header, rules, sources, defaults)
    return frame.height - blank, Block(ledger, rejected)


def _numbers(raws: pl.Series, rules: RecipientRules) -> pl.Series:
    """The E.164 form of each cell that passes the batch's number check; null elsewhere."""
    valid = valid_e164_column(raws)
    return possible_e164_column(raws, valid) if rules.number_check == POSSIBLE else valid


def _message(
    frame: pl.DataFrame,
    header: list[str],
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> list[pl.Series]:
    """Each row's message rendered, its encoding and its segments, as `classify` gives
    them: the global message's, or the row's own (its `agent_message` cell) when the block
    has at most `OWN_TEMPLATES` distinct ones (a Postman file's languages). The body is ""
    where the row must be settled one by one: it has more own messages than that, no
    message is set, a variable has no value, the body is over `max_message_chars`, or
    `classify` must pack it (GSM-7 with an extension character over one segment, UCS-2 with
    a character beyond the BMP). The encoding of a message is told from its template's text
    and its variables' values, not its whole body."""
    table = _rendered(frame, rules.agent_message or "", rules, sources, defaults)
    if MESSAGE_COLUMN in header:
        own = frame.select_seq(~_is_blank(pl.col(MESSAGE_COLUMN))).to_series()
        table = table.with_columns_seq(pl.col("settle") | own)
        owned = frame.with_row_index("at").filter(own).select_seq("at", MESSAGE_COLUMN)
        groups = owned.group_by(MESSAGE_COLUMN, maintain_order=True).agg("at")
        if 0 < groups.height <= OWN_TEMPLATES:
            for template, at in groups.iter_rows():
                rows = pl.Series(at, dtype=pl.UInt32)
                part = _rendered(frame[rows], template, rules, sources, defaults)
                table = table.with_columns_seq(
                    table[name].scatter(rows, part[name]) for name in part.columns
                )
    if table["settle"].any():
        table = table.with_columns_seq(
            pl.when(pl.col("settle")).then(pl.lit("")).otherwise(pl.col("body")).alias("body")
        )
    return table.select_seq("body", "encoding", "segments").get_columns()


def _rendered(
    frame: pl.DataFrame,
    template: str,
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> pl.DataFrame:
    """`template` rendered for every row of `frame`: body, encoding, segments, and whether
    the row must be settled one by one (see `_message`)."""
    if not template.strip():
        return pl.DataFrame(
            {
                "body": pl.repeat("", frame.height, dtype=pl.String, eager=True),
                "encoding": pl.repeat(GSM7, frame.height, dtype=pl.String, eager=True),
                "segments": pl.repeat(1, frame.height, dtype=pl.Int32, eager=True),
                "settle": pl.repeat(True, frame.height, dtype=pl.Boolean, eager=True),
            }
        )
    rendering = _rendering(
        template,
        tuple(sorted(sources.items())),
        tuple(sorted(defaults.items())),
        rules.max_message_chars,
    )
    table = frame.select_seq(_ROW, *rendering.fast_columns).with_columns_seq(
        rendering.text_gsm7, rendering.extensions, rendering.astral
    )
    if not table["fast"].all():
        table = _slow_rows(frame, table, rendering)
    return table.select_seq(*rendering.outcome)


@dataclass(frozen=True)
class _Rendering:
    """A template's expressions, built once for each template and file's columns rather than
    for each block. Most rows take each variable's value from its first source, a cell of
    GSM-7's default alphabet that is not blank: one pattern tells both, and such a row's body
    is told from its length and its text's characters (`fast_columns`: body, length, fast).
    The other rows (usually few) have each value searched, and `render`'s lookup when one has
    a blank first source cell (`_slow_rows`)."""

    # The template's variables' values (`firsts`: the first sources' cells, `lookups`:
    # `render`'s), named by their variable's index.
    firsts: tuple[pl.Expr, ...]
    lookups: tuple[pl.Expr, ...]
    fast_columns: tuple[pl.Expr, ...]
    # The template's text's own characters: GSM-7 or not, extension characters, beyond the BMP.
    text_gsm7: pl.Expr
    extensions: pl.Expr
    astral: pl.Expr
    # From a table of "0", "1", ... (the values): whether each is a cell not blank; the
    # body and length; GSM-7 or not, and, counted in the values, its extension characters
    # and whether one is beyond the BMP (the text's own added).
    solid: pl.Expr
    body_and_length: tuple[pl.Expr, ...]
    gsm7: pl.Expr
    values_extensions: pl.Expr
    values_astral: pl.Expr
    # body, encoding, segments, settle, from a table of body, length, gsm7, extensions, astral.
    outcome: tuple[pl.Expr, ...]


@functools.lru_cache(maxsize=64)
def _rendering(
    template: str,
    sources: tuple[tuple[str, tuple[str, ...]], ...],
    defaults: tuple[tuple[str, str], ...],
    max_message_chars: int,
) -> _Rendering:
    parts = template_parts(template)
    text = "".join(parts[0::2])
    variables = parts[1::2]
    by_name, default_of = dict(sources), dict(defaults)
    firsts = [_first_value(name, by_name, default_of) for name in variables]
    names = [str(index) for index in range(len(variables))]
    cells = [pl.col(column) for column in names]
    length, gsm7, extensions = pl.col("length"), pl.col("gsm7"), pl.col("extensions")
    gsm7_units = length + extensions
    packed = (gsm7 & (extensions > 0) & (gsm7_units > GSM7_SINGLE)) | (~gsm7 & pl.col("astral"))
    # A missing value (null) makes the row one to settle one by one, as its body is null:
    # joined with it (`every`), the row is not GSM-7; without it (`present`), its extension
    # characters and characters beyond the BMP are those of the others, as the sums over each
    # value would be.
    every = pl.concat_str(cells) if cells else pl.lit("")
    present = pl.concat_str(cells, ignore_nulls=True) if cells else pl.lit("")
    text_gsm7 = pl.lit(set(text) <= set(GSM7_BASIC + GSM7_EXTENSION))
    text_extensions = pl.lit(sum(char in GSM7_EXTENSION for char in text), pl.Int32)
    text_astral = pl.lit(any(ord(char) > 0xFFFF for char in text))

    def body_and_length(values: list[pl.Expr]) -> tuple[pl.Expr, ...]:
        return (
            _joined(parts, values).fill_null("").alias("body"),
            pl.sum_horizontal(pl.lit(len(text)), *(v.str.len_chars() for v in values)).alias(
                "length"
            ),
        )

    return _Rendering(
        firsts=tuple(first.alias(column) for first, column in zip(firsts, names, strict=True)),
        lookups=tuple(
            _value(name, by_name, default_of).alias(column)
            for name, column in zip(variables, names, strict=True)
        ),
        fast_columns=(
            *body_and_length(firsts),
            pl.all_horizontal(
                pl.lit(value=True), *(cell.str.contains(_basic_value()) for cell in firsts)
            )
            .fill_null(value=False)
            .alias("fast"),
        ),
        text_gsm7=text_gsm7.alias("gsm7"),
        extensions=text_extensions.alias("extensions"),
        astral=text_astral.alias("astral"),
        body_and_length=body_and_length(cells),
        solid=pl.all_horizontal(
            pl.lit(value=True), *((~_is_blank(cell)).fill_null(value=False) for cell in cells)
        ),
        gsm7=(text_gsm7 & every.str.contains(f"^{_class(GSM7_BASIC + GSM7_EXTENSION)}*$"))
        .fill_null(value=False)
        .alias("gsm7"),
        values_extensions=(
            text_extensions + present.str.count_matches(_class(GSM7_EXTENSION)).fill_null(0)
        )
        .cast(pl.Int32)
        .alias("extensions"),
        values_astral=(text_astral | present.str.contains(r"[\x{10000}-\x{10FFFF}]"))
        .fill_null(value=False)
        .alias("astral"),
        outcome=(
            pl.col("body"),
            pl.when(gsm7).then(pl.lit(GSM7)).otherwise(pl.lit(UCS2)).alias("encoding"),
            pl.when(gsm7)
            .then(_segments(gsm7_units, GSM7_SINGLE, GSM7_PART))
            .otherwise(_segments(length, UCS2_SINGLE, UCS2_PART))
            .alias("segments"),
            ((length > max_message_chars) | packed).alias("settle"),
        ),
    )


def _slow_rows(frame: pl.DataFrame, table: pl.DataFrame, rendering: _Rendering) -> pl.DataFrame:
    """`table` with the rows not `fast` rendered by `render`'s lookup, and their encodings
    told by searching their values (short), the text's characters counted once. Where each
    of those rows' values is its first source's cell, not blank (most often: a value
    outside GSM-7's default alphabet, a name in another script), their bodies and lengths
    are already right, and only their encodings are told."""
    rows = frame.with_row_index("at").filter(~table["fast"])
    firsts = rows.select_seq("at", *rendering.firsts)
    if firsts.select_seq(rendering.solid).to_series().all():
        values = firsts
        slow = firsts.select_seq("at")
        changed: tuple[str, ...] = ("gsm7", "extensions", "astral")
    else:
        values = rows.select_seq("at", *rendering.lookups)
        slow = values.select_seq("at", *rendering.body_and_length)
        changed = ("body", "length", "gsm7", "extensions", "astral")
    # Each search over the row's values joined (a search's fixed cost, compiling its
    # pattern, is most of it on these few rows): its characters are theirs. Extension
    # characters count only in a GSM-7 body, characters beyond the BMP only in a UCS-2 one
    # (GSM-7 has none): each is searched for only when some body needs it.
    gsm7 = values.select_seq(rendering.gsm7).to_series()
    kinds = values.with_columns_seq(
        rendering.values_extensions if gsm7.any() else rendering.extensions,
        rendering.astral if gsm7.all() else rendering.values_astral,
    )
    slow = slow.with_columns_seq(gsm7, kinds["extensions"], kinds["astral"])
    return table.with_columns_seq(table[name].scatter(slow["at"], slow[name]) for name in changed)


def _joined(parts: tuple[str, ...], values: list[pl.Expr]) -> pl.Expr:
    """A template's text (even parts) and its variables' values (null if one is), joined
    in order: by `pl.format`, which takes two thirds of `pl.concat_str`'s time for it, the
    text's braces doubled (its escape)."""
    pattern = "".join(
        part.replace("{", "{{").replace("}", "}}") if index % 2 == 0 else "{}"
        for index, part in enumerate(parts)
    )
    return pl.format(pattern, *values)


def _first_value(
    name: str, sources: dict[str, tuple[str, ...]], defaults: dict[str, str]
) -> pl.Expr:
    """The value `_value` gives wherever the cell of its first source is not blank: that
    cell; the default when there is no source column."""
    if sources.get(name):
        return pl.col(sources[name][0])
    default = defaults.get(name)
    return pl.lit(default if default and not default.isspace() else None, pl.String)


def _value(name: str, sources: dict[str, tuple[str, ...]], defaults: dict[str, str]) -> pl.Expr:
    """`render`'s lookup: the first source column whose cell is not blank, else the
    default; null when neither has a value."""
    default = defaults.get(name)
    value = pl.lit(default if default and not default.isspace() else None, pl.String)
    for column in reversed(sources.get(name, ())):
        value = pl.when(_is_blank(pl.col(column))).then(value).otherwise(pl.col(column))
    return value


def _segments(units: pl.Expr, single: int, part: int) -> pl.Expr:
    return pl.when(units <= single).then(1).otherwise((units + part - 1) // part).cast(pl.Int32)


def _settle_rows(
    frame: pl.DataFrame,
    table: pl.DataFrame,
    header: list[str],
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> tuple[pl.DataFrame, list[Rejected], int]:
    """Rows with a valid number but no body get `row_outcome`, one by one; rows without a
    valid number are rejected as blank or not valid, as `row_outcome` would (their reasons
    have no fields: each is formatted once, not once a row), but for the rows whose every
    cell is blank, which are no rows (they keep their numbers): their count is last. Only
    a row without a valid number can be blank, so only those (few) are looked at."""
    invalid = table["to_number"].is_null()
    open_ = ~invalid & (table["body"] == "")
    numbers = frame.filter(invalid)
    blank = (
        numbers.select_seq(pl.all_horizontal(_is_blank(pl.col(name)) for name in header))
        .to_series()
        .fill_null(value=False)
    )
    blank_rows = int(blank.sum())
    if blank_rows:
        numbers = numbers.filter(~blank)
    numbers = numbers.select_seq(
        _is_blank(pl.col(PHONE_COLUMN)).cast(pl.UInt8).alias("blank"), _ROW, PHONE_COLUMN
    )
    # In file order, as the frame's rows are.
    rejected = rejections.at_rows(
        (rejections.INVALID_NUMBER, rejections.BLANK_NUMBER),
        zip(*(column.to_list() for column in numbers.get_columns()), strict=True),
    )
    kept = table.filter(~invalid & ~open_)
    if not open_.any():
        return kept, rejected, blank_rows
    settled: list[tuple[object, ...]] = []
    late: list[Rejected] = []
    # The columns carried beside the outcomes (`_validate`), after these five.
    opened = table.filter(open_)
    for (row_number, *cells), (number, *carried) in zip(
        frame.filter(open_).select_seq(_ROW, *header).iter_rows(),
        opened.select_seq("to_number", *opened.columns[5:]).iter_rows(),
        strict=True,
    ):
        outcome = row_outcome(
            row_number, dict(zip(header, cells, strict=True)), number, rules, sources, defaults
        )
        if isinstance(outcome, Rejected):
            late.append(outcome)
        else:
            settled.append(
                (
                    row_number,
                    outcome.to_number,
                    outcome.body,
                    outcome.encoding,
                    outcome.segments,
                    *carried,
                )
            )
    if late:
        rejected = sorted([*rejected, *late], key=lambda outcome: outcome.row_number)
    if settled:
        kept = pl.concat([kept, pl.DataFrame(settled, schema=table.schema, orient="row")]).sort(
            "row_number"
        )
    return kept, rejected, blank_rows


def _with_skips(
    table: pl.DataFrame,
    rules: RecipientRules,
    repeated: pl.Series,
    first_seq: int,
    carried: Sequence[str] = (),
) -> pl.DataFrame:
    """Skip codes as `_mark_skipped` gives them (a repeated number wins over opted out),
    and the rows' places in the send order."""
    skip_code = pl.lit(None, pl.String)
    if rules.opted_out:
        opted_out = pl.Series(list(rules.opted_out), dtype=pl.String).implode()
        skip_code = pl.when(pl.col("to_number").is_in(opted_out)).then(pl.lit(Code.OPTED_OUT.value))
    if rules.exclude_duplicates:
        skip_code = (
            pl.when(pl.lit(repeated)).then(pl.lit(Code.DUPLICATE.value)).otherwise(skip_code)
        )
    return (
        table.with_row_index("seq", offset=first_seq)
        .with_columns_seq(
            pl.when(skip_code.is_null())
            .then(pl.lit("pending"))
            .otherwise(pl.lit("skipped"))
            .alias("status"),
            skip_code.alias("skip_code"),
        )
        .select_seq(*LEDGER_COLUMNS, *carried)
    )


def _request_data(header: list[str], rules: RecipientRules) -> list[pl.Expr]:
    """A `request_data.<field>` column for each field the file's request-data columns give
    (rows.request_field): its column's cells as they are (a blank one is left out by the
    ledger's reader, rows.kept_request_data); of two columns giving one field, the later
    one's value unless blank (null if both are), as `request_data_of` reads a row."""
    fields: dict[str, list[str]] = {}
    for column in header:
        name = request_field(column, rules.column_mapping)
        if name:
            fields.setdefault(name, []).append(column)
    return [
        (
            pl.col(columns[0])
            if len(columns) == 1
            else pl.coalesce(
                pl.when(_is_blank(pl.col(column))).then(None).otherwise(pl.col(column))
                for column in reversed(columns)
            )
        ).alias(REQUEST_DATA_PREFIX + name)
        for name, columns in fields.items()
    ]


def _keys(ledger: pl.DataFrame) -> pl.Series:
    """The ledger's numbers as integers (E.164: a `+` and at most 15 digits; the cast
    takes the `+`, where cutting it off first would copy every number)."""
    return ledger["to_number"].cast(pl.Int64)


def _repeated(keys: pl.Series, earlier: list[pl.Series]) -> pl.Series:
    """Whether each number (an E.164 number as an integer, at most 15 digits) came before
    in its block or in `earlier` blocks. Within the block, every key but the first of its
    value (a hash pass, half the cost of a stable sort and a comparison with the key
    before)."""
    repeated = ~keys.is_first_distinct()
    if earlier:
        repeated = repeated | _found(keys, pl.concat(earlier, rechunk=False))
    return repeated


def _found(keys: pl.Series, earlier: pl.Series) -> pl.Series:
    """Whether each key is in `earlier`, by looking each of `earlier` (many) up in the
    keys (fewer), then the keys in the few found: probing a hash table costs a fraction
    of building one."""
    found = earlier.filter(earlier.is_in(keys.implode()))
    return keys.is_in(found.implode())


def _tally(rows: int, table: pl.DataFrame, rejected: list[Rejected]) -> Tally:
    sent = pl.col("skip_code").is_null()
    counts = table.select_seq(
        sent.sum().alias("sent"),
        pl.col("segments").filter(sent).sum().alias("segments"),
        (sent & (pl.col("encoding") == GSM7)).sum().alias("gsm7"),
    )
    sent_count, segments, gsm7 = counts.row(0)
    return Tally(
        rows=rows,
        recipients=table.height,
        rejected=len(rejected),
        skipped=table.height - sent_count,
        segments=segments,
        gsm7=gsm7,
        ucs2=sent_count - gsm7,
        first_rejected=rejected[:STRICT_EXAMPLES],
    )


def _is_blank(cell: pl.Expr) -> pl.Expr:
    """Empty or only what Python's `str.isspace` calls whitespace (stripping is faster
    than a regex pass)."""
    return cell.str.strip_chars_start(_python_spaces()).str.len_bytes() == 0


@functools.cache
def _python_spaces() -> str:
    return "".join(chr(point) for point in range(sys.maxunicode + 1) if chr(point).isspace())


@functools.cache
def _class(chars: str) -> str:
    """A regex character class (polars' syntax) of exactly these characters."""
    return "[" + "".join(f"\\x{{{ord(char):X}}}" for char in sorted(set(chars))) + "]"


@functools.cache
def _basic_value() -> str:
    """A value of GSM-7's default alphabet that is not blank: of its characters, only the
    space, CR and LF are whitespace to Python's `str.isspace`."""
    spaces = " \n\r"
    assert {char for char in GSM7_BASIC if char.isspace()} == set(spaces)
    solid = "".join(set(GSM7_BASIC) - set(spaces))
    return f"^{_class(spaces)}*{_class(solid)}{_class(GSM7_BASIC)}*$"
