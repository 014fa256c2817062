"""plain_csv, the column-wise validation of plain CSV files, gives `build_recipients`'
outcomes exactly, and leaves every other file to it."""

import csv
import gc
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from activities.recipients import columns as recipient_table
from activities.recipients.columns import (
    BLOCK_BYTES,
    Block,
    NotPlain,
    plain_csv,
    plain_csv_file,
)
from activities.recipients.frames import pl
from activities.recipients.quoting import next_record_end
from activities.recipients.rows import (
    Recipient,
    RecipientRules,
    Rejected,
    SourceInvalid,
    Tally,
    build_recipients,
    kept_request_data,
    read_rows,
)
from store.messages import RECIPIENT_DATA_COLUMNS
from tests.support.builders import PHONE_CELLS

# The shared phone cells (none holds a comma or a quote), and cells the column path
# leaves to phonenumbers: a national prefix after the code, other digits, no region.
# Possible but not valid numbers (Bland's and Postman's examples), for `number_check`.
NUMBERS = [
    *PHONE_CELLS,
    "+4407911123456",
    "+114155552671",
    "+١٤١٥٥٥٥٢٦٧١",
    "+80012345678",
    "+10987654321",
    "6599999999",
    "10987654321",
]
# Text a plain CSV cell can hold: no quote, comma or line break; whitespace of every kind,
# GSM-7 extension characters, other scripts, characters beyond the BMP.
CELL = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters='\x00",\r\n'),
    max_size=10,
) | st.sampled_from(["Ann", "Zoë", "€{x}", "😀", "Жанна", " ", "\x1c", "\u2028", "", "ab" * 40])
# Cells that need quotes: commas, quotes, line breaks of both kinds.
QUOTED_CELL = st.sampled_from(["Lee, Ann", 'say "hi"', "two\nlines", "a\r\nb", '"', ",", "\n"])
COLUMNS = ["name", " request_data.code ", "agent_message", "nm", "has space"]
TEMPLATES = [
    None,
    "",
    "Hi {{name}}",
    "Hi {{ name }}, code {{code}} €",
    "{{code}}",
    "Plain text, no variables",
    "Long {{name}} " + "x" * 170,
    "Ünïcode {{name}}",
    "{{missing}} here",
]


@st.composite
def files(draw: st.DrawFn) -> tuple[bytes, RecipientRules]:
    columns = ["phone_number", *draw(st.lists(st.sampled_from(COLUMNS), unique=True))]
    columns = draw(st.permutations(columns))
    rows = draw(
        st.lists(
            st.lists(st.sampled_from(NUMBERS) | CELL, min_size=0, max_size=len(columns)).map(
                lambda cells: cells if cells else [""]
            ),
            max_size=25,
        )
    )
    # The phone number in its column, most of the time.
    at = columns.index("phone_number")
    for row in rows:
        if len(row) > at and draw(st.booleans()):
            row[at] = draw(st.sampled_from(NUMBERS))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    quoting = draw(st.sampled_from(["none", "minimal", "all"]))
    if quoting == "none":
        text = ending.join(",".join(row) for row in [columns, *rows])
    else:
        # Excel's way (or every cell quoted), with cells that need it; the header unquoted.
        for row in rows:
            if draw(st.booleans()):
                row[draw(st.integers(0, len(row) - 1))] = draw(QUOTED_CELL)
        out = io.StringIO()
        if quoting == "all":
            csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator=ending).writerows(rows)
        else:
            csv.writer(out, lineterminator=ending).writerows(rows)
        text = ending.join([",".join(columns), out.getvalue().removesuffix(ending)])
    if draw(st.booleans()):
        text += ending
    content = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + text.encode()
    rules = RecipientRules(
        max_rows=draw(st.sampled_from([1000, 5])),
        max_message_chars=draw(st.sampled_from([1600, 30])),
        agent_message=draw(st.sampled_from(TEMPLATES)),
        request_data=draw(st.sampled_from([{}, {"name": "friend"}, {"code": " "}])),
        column_mapping=draw(
            # Two columns for one field (`code`), or one each.
            st.sampled_from([{}, {"nm": "request_data.name"}, {"nm": "request_data.code"}])
        ),
        exclude_duplicates=draw(st.booleans()),
        opted_out=draw(st.sampled_from([frozenset(), frozenset({"+12015550123"})])),
        number_check=draw(st.sampled_from(["valid", "possible"])),
    )
    return content, rules


def by_rows(content: bytes, rules: RecipientRules) -> tuple[list, list[Rejected], Tally] | str:
    """The row path's ledger rows, rejected rows and counts, or its SourceInvalid code."""
    try:
        header, rows = read_rows(content)
        outcomes = list(build_recipients(header, rows, rules))
    except SourceInvalid as error:
        return error.code
    tally = Tally()
    for outcome in outcomes:
        tally.count(outcome)
    recipients = [o for o in outcomes if isinstance(o, Recipient)]
    ledger = [
        (seq, o.row_number, o.to_number, o.body, o.encoding, o.segments, o.skip_code, data)
        for seq, o in enumerate(recipients)
        for data in [o.request_data]
    ]
    return ledger, [o for o in outcomes if isinstance(o, Rejected)], tally


def by_columns(
    content: bytes,
    rules: RecipientRules,
    block_bytes: int = BLOCK_BYTES,
    *,
    from_file: bool = False,
) -> tuple[list, list[Rejected], Tally] | str:
    """The column path's outcomes, as `by_rows` gives them; `from_file`: read from a file a
    block at a time (`plain_csv_file`), not from the file's bytes."""
    plain = plain_csv_file(io.BytesIO(content), rules) if from_file else plain_csv(content, rules)
    if plain is None:
        assert b"\n" not in content, "a plain file was left to the row path"
        return by_rows(content, rules)  # a header alone: no rows
    blocks: list[Block] = []
    rejected = []
    try:
        for block in plain.blocks(block_bytes):
            blocks.append(block)
            rejected += block.rejected
    except SourceInvalid as error:
        return error.code
    except NotPlain:
        # As validation does: the row path takes the file whole (quoting polars may read
        # otherwise).
        assert b'"' in content, "a file without quotes turned out not plain"
        return by_rows(content, rules)
    ledger = pl.concat([plain_ledger(), *(block.ledger for block in blocks)], how="diagonal")
    statuses = ledger.select((pl.col("status") == "skipped") == pl.col("skip_code").is_not_null())
    assert statuses.to_series().all()
    rows = ledger.select(
        "seq", "row_number", "to_number", "body", "encoding", "segments", "skip_code"
    )
    return (
        [
            (*row, request_data)
            for row, request_data in zip(rows.iter_rows(), request_data_read(blocks), strict=True)
        ],
        rejected,
        plain.tally,
    )


def request_data_read(blocks: list[Block]) -> list[dict[str, str] | None]:
    """Each ledger row's request data as the ledger's reader takes it (the JSON of the
    blocks' `ledger_csv`, by `kept_request_data`), None where it keeps none."""
    kept: list[dict[str, str] | None] = []
    for block in blocks:
        data = b"".join(block.ledger_csv(uuid.uuid4(), uuid.uuid4())).decode()
        for record in csv.reader(io.StringIO(data, newline="")):
            if block.copy_columns != RECIPIENT_DATA_COLUMNS:
                kept.append(None)
                continue
            values = json.loads(record[RECIPIENT_DATA_COLUMNS.index("request_data")])
            kept.append(kept_request_data(values))
    return kept


def plain_ledger() -> pl.DataFrame:
    """An empty ledger, so that a file of no rows concatenates too."""
    return pl.DataFrame(
        schema={
            "seq": pl.UInt32,
            "row_number": pl.UInt32,
            "to_number": pl.String,
            "body": pl.String,
            "status": pl.String,
            "skip_code": pl.String,
            "encoding": pl.String,
            "segments": pl.Int32,
        }
    )


# 250 examples: each runs the column path twice (about 25 ms a call, its threads' start), the
# suite's slowest test at 400; every CI run draws new ones.
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    file=files(),
    block_bytes=st.sampled_from([1, 20, 90, BLOCK_BYTES]),
    in_flight=st.sampled_from([1, 2, 3]),
)
@example(
    file=(
        b"phone_number,name\n+12015550123,Ann\n\n  ,\n+12015550123,Bob\n",
        RecipientRules(max_rows=9, max_message_chars=1600, agent_message="Hi {{name}}"),
    ),
    block_bytes=20,
    in_flight=2,
)
def test_plain_files_get_the_row_paths_outcomes(
    file: tuple[bytes, RecipientRules], block_bytes: int, in_flight: int
) -> None:
    content, rules = file
    expected = by_rows(content, rules)
    with mock.patch.object(recipient_table, "IN_FLIGHT", in_flight):
        assert by_columns(content, rules, block_bytes) == expected
        if plain_csv(content, rules) is not None:
            assert by_columns(content, rules, block_bytes, from_file=True) == expected


def test_a_million_row_file_in_the_benchmarks_shape() -> None:
    """Many rows: blocks, duplicates across them, UCS-2 names, every outcome at scale."""
    import random
    import tempfile
    from pathlib import Path

    from bench.validation import TEMPLATE, write_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipients.csv"
        write_file(path, 20_000, random.Random(7))
        content = path.read_bytes()
    rules = RecipientRules(max_rows=20_000, max_message_chars=1600, agent_message=TEMPLATE)
    expected = by_rows(content, rules)
    assert not isinstance(expected, str)
    assert expected[2].skipped > 0 and expected[2].rejected > 0 and expected[2].ucs2 > 0
    assert by_columns(content, rules) == expected


@pytest.mark.parametrize(
    "content",
    [
        b'"phone_number",name\n+12015550123,Ann\n',  # a quoted header
        b"phone_number,phone_number\n+12015550123,+12015550124\n",  # repeated column
        b"phone_number, \n+12015550123,x\n",  # an unnamed column
        b"phone_number\r,name\n+12015550123,x\n",  # a lone CR in the header
        b"name\nAnn\n",  # no phone_number column
        b"phone_number",  # no line end: no rows
        b'[{"phone_number": "+12015550123"}]',  # JSON
        b"\xff\xfephone_number\n",  # UTF-16
        b"phone_number\n+1\x00\n",  # binary
        b"phone_number,^code$\n+12015550123,x\n",  # a name polars reads as a pattern
        b"phone_number,*\n+12015550123,x\n",
    ],
)
def test_other_files_are_left_to_the_row_path(content: bytes) -> None:
    assert plain_csv(content, RecipientRules(max_rows=10, max_message_chars=1600)) is None


@pytest.mark.parametrize(
    "content",
    [
        b"phone_number,phone_number\n+12015550123,+12015550124\n",
        b"phone_number,name, phone_number\n+12015550123,Ann,+12015550124\n",
        b'"phone_number",phone_number\n+12015550123,+12015550124\n',
        b'[{"phone_number": "+12015550123", "phone_number": "+12015550124"}]',
    ],
    ids=["twice", "spaced", "quoted", "json-keys"],
)
def test_a_second_phone_number_column_fails_the_file(content: bytes) -> None:
    rules = RecipientRules(max_rows=10, max_message_chars=1600)

    # The column path leaves such a file to the row path (as validation does), which refuses it.
    assert plain_csv(content, rules) is None
    assert by_rows(content, rules) == "duplicate_phone_column"


@pytest.mark.parametrize(
    "row",
    [
        b"+12015550123,A\rB",  # a lone CR ends a line for csv
        b"+12015550123,A\r\r",  # a CR before a CRLF
        b"\r+12015550123,A\r",  # a lone CR starting a CRLF line
        b"+12015550123,\xff",  # not UTF-8
        b"+12015550123,Ann,extra",  # more cells than columns
        b"+12015550123," + b"x" * (csv.field_size_limit() + 1),  # over csv's cell limit
    ],
)
@pytest.mark.parametrize("first", [False, True], ids=["last", "first"])
def test_a_block_that_is_not_plain_after_all_stops_the_column_path(row: bytes, first: bool) -> None:
    """Last, or first: the blocks validated beside it, which wait for its numbers to look for
    theirs (repeats are skipped), are given what it raised."""
    rows = [b"+12015550124,Bob\n"] * 3
    rows.insert(0 if first else 3, row + b"\n")
    content = b"phone_number,name\n" + b"".join(rows)
    rules = RecipientRules(max_rows=10, max_message_chars=1600, exclude_duplicates=True)
    plain = plain_csv(content, rules)
    assert plain is not None
    with pytest.raises(NotPlain):
        list(plain.blocks(block_bytes=20))


@pytest.mark.parametrize(
    "row", [b'+12015550125,"Ann"x', b'+12015550125,A"nn', b'+12015550125,"Ann', b"+1201555\x00"]
)
def test_a_file_read_a_block_at_a_time_is_not_plain_at_a_stray_quote_or_a_nul(row: bytes) -> None:
    content = b"phone_number,name\n" + b"+12015550124,Bob\n" * 3 + row + b"\n"
    plain = plain_csv_file(io.BytesIO(content), RecipientRules(max_rows=10, max_message_chars=1600))
    assert plain is not None
    with pytest.raises(NotPlain):
        list(plain.blocks(block_bytes=20))


def test_excel_quoting_is_validated_by_columns() -> None:
    """Quoted cells with commas, quotes and line breaks, CRLF line ends: the column path
    takes the file, block by block (a block may end only after a quoted cell's line break),
    with the row path's outcomes."""
    rows = [[f"+1201555{i:04d}", f"Lee, {i}", f'say "hi"\r\n{i}'] for i in range(40)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    content = b"phone_number,name,code\r\n" + out.getvalue().encode()
    rules = RecipientRules(max_rows=100, max_message_chars=1600, agent_message="{{name}} {{code}}")

    for from_file in (False, True):
        plain = (
            plain_csv_file(io.BytesIO(content), rules) if from_file else plain_csv(content, rules)
        )
        assert plain is not None
        assert sum(block.ledger.height for block in plain.blocks(block_bytes=50)) == 40
        assert by_columns(content, rules, 50, from_file=from_file) == by_rows(content, rules)


def test_the_ledger_csv_keeps_quotes_line_breaks_and_nulls_apart() -> None:
    rules = RecipientRules(
        max_rows=10, max_message_chars=1600, agent_message='Say "hi",\n{{name}} \\N'
    )
    plain = plain_csv(b"phone_number,name\n+12015550123,Ann\n+12015550123,Bob\n", rules)
    assert plain is not None
    [block] = plain.blocks()
    batch_id, account_id = uuid.uuid4(), uuid.uuid4()
    with mock.patch.object(recipient_table, "COPY_ROWS", 1):
        parts = list(block.ledger_csv(batch_id, account_id))
    assert len(parts) == 2  # one COPY a row here
    data = b"".join(parts)
    assert data == b"".join(block.ledger_csv(batch_id, account_id))
    ids, hi, number = [str(batch_id), str(account_id)], 'Say "hi",\n', "+12015550123"
    assert list(csv.reader(io.StringIO(data.decode(), newline=""))) == [
        [ids[0], "0", ids[1], "1", number, f"{hi}Ann \\N", "pending", "", "gsm7", "1"],
        [ids[0], "1", ids[1], "2", number, f"{hi}Bob \\N", "skipped", "duplicate", "gsm7", "1"],
    ]
    assert b',"pending",,' in data  # NULL error_code: an unquoted empty field


async def test_a_blocks_csv_is_made_a_part_at_a_time_as_the_copy_takes_it() -> None:
    """`ledger_copies` makes a block's CSV part by part, each once the one before is taken
    (rather than all at once: they were a block's share of the worker's peak), and the parts
    are the block's `ledger_csv`."""
    rules = RecipientRules(max_rows=99, max_message_chars=1600, agent_message="Hi {{name}}")
    content = b"phone_number,name\n+12015550123,Ann\n+12015550124,Bob\n+12015550125,Cy\n"
    batch_id, account_id = uuid.uuid4(), uuid.uuid4()
    made = 0

    class Counted(recipient_table._Written):
        def __init__(self) -> None:
            nonlocal made
            made += 1
            super().__init__()

    plain, again = plain_csv(content, rules), plain_csv(content, rules)
    assert plain is not None and again is not None
    [block] = again.blocks()
    with (
        mock.patch.object(recipient_table, "COPY_ROWS", 1),
        mock.patch.object(recipient_table, "_Written", Counted),
    ):
        expected = list(block.ledger_csv(batch_id, account_id))
        made = 0
        [copy] = [copy async for copy in recipient_table.ledger_copies(plain, batch_id, account_id)]
        assert made == 0
        first = await anext(copy.ledger)
        assert made == 1
        parts = [first, *[part async for part in copy.ledger]]
    assert made == 3
    assert parts == expected


async def test_a_strict_batchs_blocks_from_a_rejected_row_on_have_no_csv() -> None:
    """With `with_ledger` false (a strict batch, doomed by its first rejected row), the
    blocks before the first rejected row have their CSV, the block of it and every block
    after have none; each block's rejected rows are given all the same."""
    numbers = ["+12015550123", "+12015550124", "not a number", "+12015550125", "+12015550126"]
    content = "\n".join(["phone_number", *numbers]).encode() + b"\n"
    rules = RecipientRules(max_rows=99, max_message_chars=1600, agent_message="Hi")
    plain = plain_csv(content, rules)
    assert plain is not None
    copies = recipient_table.ledger_copies(
        plain, uuid.uuid4(), uuid.uuid4(), with_ledger=False, block_bytes=1
    )
    given = [([part async for part in copy.ledger], copy.rejected) async for copy in copies]
    assert [(len(parts), len(rejected)) for parts, rejected in given] == [
        (1, 0),
        (1, 0),
        (0, 1),
        (0, 0),
        (0, 0),
    ]


@pytest.mark.parametrize(
    "template",
    [
        "x" * 159 + "{{name}}",  # 160 and 161 characters: one segment, then three
        "Ж" * 69 + "{{name}}",  # 70 and 71: one UCS-2 segment, then two
        "€" * 79 + "{{name}}",  # 160 and 161 units with extension characters
        "x" * 305 + "{{name}}",  # 306 and 307: two parts of 153, then three
        "😀" * 34 + "{{name}}",  # surrogate pairs
    ],
)
def test_segment_boundaries(template: str) -> None:
    content = b"phone_number,name\n+12015550123,a\n+12015550124,ab\n+12015550125,abcdefgh\n"
    rules = RecipientRules(max_rows=10, max_message_chars=1600, agent_message=template)
    expected = by_rows(content, rules)
    assert not isinstance(expected, str)
    assert len({row[5] for row in expected[0]}) > 1  # the rows straddle a boundary
    assert by_columns(content, rules) == expected


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_a_number_repeated_blocks_apart_is_a_duplicate(in_flight: int) -> None:
    """One line a block: each repeat is in a later block, up to four blocks apart, some of
    them validated while the block of the first is still pending."""
    numbers = ["+12015550123", "+12015550124", "+12015550123", "+12015550125"] * 3
    content = "\n".join(["phone_number", *numbers]).encode() + b"\n"
    rules = RecipientRules(max_rows=99, max_message_chars=1600, agent_message="Hi")
    with mock.patch.object(recipient_table, "IN_FLIGHT", in_flight):
        result = by_columns(content, rules, block_bytes=1)
    assert result == by_rows(content, rules)
    assert not isinstance(result, str)
    assert [row[6] for row in result[0]] == [None, None, "duplicate", None] + ["duplicate"] * 8


@pytest.mark.parametrize("in_flight", [1, 3])
def test_numbers_are_not_compared_where_repeated_ones_are_sent(in_flight: int) -> None:
    """With `exclude_duplicates` false no number is looked for among the others (the work
    and the numbers kept for it grow with the file), and a repeated number is sent."""
    numbers = ["+12015550123", "+12015550124", "+12015550123", "+12015550125"] * 3
    content = "\n".join(["phone_number", *numbers]).encode() + b"\n"
    rules = RecipientRules(
        max_rows=99, max_message_chars=1600, agent_message="Hi", exclude_duplicates=False
    )
    with (
        mock.patch.object(recipient_table, "IN_FLIGHT", in_flight),
        mock.patch.object(recipient_table, "_keys", side_effect=AssertionError("compared")),
    ):
        result = by_columns(content, rules, block_bytes=1)
    assert result == by_rows(content, rules)
    assert not isinstance(result, str)
    assert [row[6] for row in result[0]] == [None] * 12


@pytest.fixture
def two_in_flight() -> Iterator[None]:
    """Two blocks validated at once, as the tests of how blocks are read and taken are
    written for (with more, a block they wait for would be taken at the start)."""
    with mock.patch.object(recipient_table, "IN_FLIGHT", 2):
        yield


def numbers_read(first_row: int, *numbers: str, pause: float = 0.0) -> Callable[[], pl.DataFrame]:
    """A block's read: its numbers, from row `first_row`, after `pause` seconds."""

    def read() -> pl.DataFrame:
        time.sleep(pause)
        return recipient_table.numbered(pl.DataFrame({"phone_number": list(numbers)}), first_row)

    return read


@pytest.mark.usefixtures("two_in_flight")
@pytest.mark.parametrize("exclude_duplicates", [False, True])
def test_a_thread_done_before_the_block_before_it_takes_the_next(
    exclude_duplicates: bool,
) -> None:
    """The first block is slow to read: the second block's thread, done before it, takes
    the third at once (the third is read before the first), and the outcomes are as if the
    blocks had come one by one."""
    events: list[str] = []
    slow = numbers_read(1, "+12015550123", pause=0.5)
    third_numbers = numbers_read(4, "+12015550124")

    def first() -> pl.DataFrame:
        frame = slow()
        events.append("first read")
        return frame

    def third() -> pl.DataFrame:
        events.append("third read")
        return third_numbers()

    def reads() -> Iterator[Callable[[], pl.DataFrame]]:
        yield first
        yield numbers_read(2, "+12015550124", "+12015550123")
        yield third

    rules = RecipientRules(
        max_rows=9,
        max_message_chars=1600,
        agent_message="Hi",
        exclude_duplicates=exclude_duplicates,
    )
    blocks = recipient_table.frame_blocks(reads(), ["phone_number"], rules, Tally())
    skips = [code for block in blocks for code in block.ledger["skip_code"].to_list()]

    repeated = "duplicate" if exclude_duplicates else None
    assert skips == [None, None, repeated, repeated]
    if not exclude_duplicates:
        # (With duplicates excluded the second block waits for the first's numbers, so it
        # is done first only by a hair, if at all.)
        assert events == ["third read", "first read"]


@pytest.mark.usefixtures("two_in_flight")
def test_the_next_block_is_read_while_the_blocks_before_it_are_validated() -> None:
    """The block after those in flight is taken from the file while they are validated, so
    that a thread done with its block does not wait for it to be read: here the first
    block's read waits for the third to be taken (or 10 s)."""
    third_taken = threading.Event()
    waited: list[bool] = []
    first_numbers = numbers_read(1, "+12015550123")

    def first() -> pl.DataFrame:
        waited.append(third_taken.wait(10))
        return first_numbers()

    def reads() -> Iterator[Callable[[], pl.DataFrame]]:
        yield first
        yield numbers_read(2, "+12015550124", "+12015550123")
        third_taken.set()
        yield numbers_read(4, "+12015550124")

    rules = RecipientRules(max_rows=9, max_message_chars=1600, agent_message="Hi")
    blocks = recipient_table.frame_blocks(reads(), ["phone_number"], rules, Tally())
    skips = [code for block in blocks for code in block.ledger["skip_code"].to_list()]

    assert waited == [True]
    assert skips == [None, None, "duplicate", "duplicate"]


@pytest.mark.usefixtures("two_in_flight")
def test_the_two_blocks_after_those_in_flight_are_read_while_they_are_validated() -> None:
    """Two threads often end their blocks together: both next blocks are read ahead, so
    that neither waits for its read. Here the first two blocks' reads wait for the fourth
    to be taken (or 10 s)."""
    fourth_taken = threading.Event()
    waited: list[bool] = []

    def waiting(read: Callable[[], pl.DataFrame]) -> Callable[[], pl.DataFrame]:
        def wait_then_read() -> pl.DataFrame:
            waited.append(fourth_taken.wait(10))
            return read()

        return wait_then_read

    def reads() -> Iterator[Callable[[], pl.DataFrame]]:
        yield waiting(numbers_read(1, "+12015550123"))
        yield waiting(numbers_read(2, "+12015550124"))
        yield numbers_read(3, "+12015550123")
        fourth_taken.set()
        yield numbers_read(4, "+12015550125")

    rules = RecipientRules(max_rows=9, max_message_chars=1600, agent_message="Hi")
    blocks = recipient_table.frame_blocks(reads(), ["phone_number"], rules, Tally())
    skips = [code for block in blocks for code in block.ledger["skip_code"].to_list()]

    assert waited == [True, True]
    assert skips == [None, None, "duplicate", None]


@pytest.mark.parametrize("in_flight", [2, 3])
@pytest.mark.parametrize("failing", [1, 2])
@pytest.mark.parametrize("exclude_duplicates", [False, True])
def test_a_failed_block_is_raised_before_what_the_reads_raise_after_it(
    exclude_duplicates: bool, failing: int, in_flight: int
) -> None:
    """Errors come in file order, whichever thread is done first, and however many blocks
    are in flight: reading the file past a block that fails later raises nothing first."""

    def not_plain() -> pl.DataFrame:
        time.sleep(0.3)
        raise NotPlain("the failing block")

    def reads() -> Iterator[Callable[[], pl.DataFrame]]:
        yield not_plain if failing == 1 else numbers_read(1, "+12015550123")
        yield not_plain if failing == 2 else numbers_read(2, "+12015550124")
        raise SourceInvalid("too_many_rows", "after the second block")

    rules = RecipientRules(
        max_rows=9,
        max_message_chars=1600,
        agent_message="Hi",
        exclude_duplicates=exclude_duplicates,
    )
    with (
        mock.patch.object(recipient_table, "IN_FLIGHT", in_flight),
        pytest.raises(NotPlain, match="the failing block"),
    ):
        list(recipient_table.frame_blocks(reads(), ["phone_number"], rules, Tally()))


@pytest.mark.parametrize("exclude_duplicates", [False, True])
@pytest.mark.parametrize(
    ("bad_row", "at"),
    [
        # Not UTF-8: the block's read fails, in its thread.
        (b"+12015550123,\xff\n", 45_000),
        # A NUL byte: reading the file fails, in the main loop (the block read ahead).
        (b"+12015550123,\x00\n", 5_000),
        (b"+12015550123,\x00\n", 45_000),
        (b"+12015550123,\x00\n", 59_000),
    ],
)
def test_a_file_not_plain_after_all_leaves_no_blocks_to_the_garbage_collector(
    exclude_duplicates: bool, bad_row: bytes, at: int
) -> None:
    """What the blocks after a failed one hold is freed when the caller is done with the
    error (reference counting), not kept in reference cycles until the collector runs: the
    row path then takes the whole file, with all the memory it needs."""
    rows = [f"+1201555{i % 10_000:04d},Bob\n".encode() for i in range(60_000)]
    rows.insert(at, bad_row)
    content = b"phone_number,name\n" + b"".join(rows)
    rules = RecipientRules(
        max_rows=10**6,
        max_message_chars=1600,
        agent_message="Hi {{name}}",
        exclude_duplicates=exclude_duplicates,
    )
    # From the file, a block at a time, as the activity reads it.
    plain = plain_csv_file(io.BytesIO(content), rules)
    assert plain is not None

    def validate() -> None:
        for _ in plain.blocks(block_bytes=200_000):
            pass

    assert left_to_the_collector(validate, NotPlain) == []


def left_to_the_collector(run: Callable[[], object], raised: type[Exception]) -> list[str]:
    """What `run`, which raises `raised`, leaves in reference cycles (frames, tracebacks,
    errors, blocks and their frames), freed only when the garbage collector runs. What was
    there before is frozen, out of the collections: in the heap a whole suite leaves,
    collecting it all took seconds."""
    gc.disable()
    gc.freeze()
    try:
        with pytest.raises(raised):
            run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, pl.DataFrame | pl.Series | Block | BaseException)
            or type(o).__name__ in ("_ReadAhead", "frame", "traceback")
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()
        gc.enable()


class _Unread(Exception):
    """What reading the file raised for a block (as `_file_lines`' NotPlain)."""


def _failing_read(pause: float) -> Callable[[], pl.DataFrame]:
    def read() -> pl.DataFrame:
        time.sleep(pause)
        raise NotPlain("the first block")

    return read


@pytest.mark.parametrize(
    ("first", "raised"),
    [
        # Reading the third block raises while the first two are validated (read ahead).
        (numbers_read(1, "+12015550123", pause=0.3), _Unread),
        # The first block fails first: the third's error, read ahead, is never raised.
        (_failing_read(0.3), NotPlain),
    ],
)
@pytest.mark.parametrize("in_flight", [2, 3])
def test_what_reading_ahead_raised_leaves_nothing_to_the_garbage_collector(
    first: Callable[[], pl.DataFrame], raised: type[Exception], in_flight: int
) -> None:
    """Whether it is raised in its turn (taken by `fill`, or by a thread done early as an
    extra block) or never (a block before it failed), what reading a block raised is freed
    with the error the caller gets, not kept in a reference cycle with the frames its
    traceback holds."""

    def reads() -> Iterator[Callable[[], pl.DataFrame]]:
        yield first
        yield numbers_read(2, "+12015550124")
        raise _Unread

    rules = RecipientRules(max_rows=9, max_message_chars=1600, agent_message="Hi")

    def validate() -> None:
        list(recipient_table.frame_blocks(reads(), ["phone_number"], rules, Tally()))

    with mock.patch.object(recipient_table, "IN_FLIGHT", in_flight):
        assert left_to_the_collector(validate, raised) == []


# Bytes that make records: line breaks of both kinds, quotes, commas, text.
RECORD_BYTES = st.binary(max_size=60).map(lambda data: bytes(b'\r\n",a'[byte % 5] for byte in data))


@settings(max_examples=500, deadline=None)
@given(data=RECORD_BYTES)
@example(data=b"a\r\r\n")
@example(data=b"a\r")
def test_a_lone_cr_is_found_as_counting_crs_and_crlfs_finds_it(data: bytes) -> None:
    assert (recipient_table._LONE_CR.search(data) is not None) == (
        data.count(b"\r") != data.count(b"\r\n")
    )


@settings(max_examples=500, deadline=None)
@given(data=RECORD_BYTES, start=st.integers(0, 60), at=st.integers(0, 60))
@example(data=b'a\n"\nb"\nc\n', start=0, at=0)
def test_a_record_ends_at_a_line_break_after_an_even_count_of_quotes(
    data: bytes, start: int, at: int
) -> None:
    """`next_record_end`, which counts quotes only when it finds one, against counting them
    at every line break."""
    start = min(start, len(data))
    at = min(max(at, start), len(data))
    expected = len(data)
    for cut in range(at, len(data)):
        if data[cut : cut + 1] == b"\n" and data.count(b'"', start, cut + 1) % 2 == 0:
            expected = cut + 1
            break
    assert next_record_end(data, start, at) == expected


@settings(max_examples=50, deadline=None)
@given(
    data=RECORD_BYTES,
    size=st.sampled_from([0, 1, 65535, 65536, 65537, 1 << 20, 8 << 20]),
    byte=st.sampled_from(b"\na\r"),
)
def test_line_breaks_and_lone_crs_are_found_by_polars_as_by_python(
    data: bytes, size: int, byte: int
) -> None:
    """`_newlines` and `_lone_cr`, which read large blocks by polars, against `bytes.count`
    and `_LONE_CR`, on either side of the sizes where they change over."""
    piece = (data * (size // max(len(data), 1) + 1))[:size] or bytes([byte]) * size
    assert recipient_table._newlines(piece) == piece.count(b"\n")
    assert recipient_table._lone_cr(piece) == (recipient_table._LONE_CR.search(piece) is not None)
    assert recipient_table._lone_cr(piece + b"\r") is True
