"""A Postman upload's two readers agree on every quoting: the column path (polars, a block of
records at a time) and the row path (the csv module) accept the same rows, refuse the same
rows for the same reasons, and fail a file for the same file-level error. Files are
generated well-formed (Excel's minimal quoting, every cell quoted, LF or CRLF) and then
broken (a stray quote, a lost quote, a lone CR, an empty line)."""

import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from activities.recipients.phones import POSSIBLE
from activities.recipients.rows import RecipientRules
from api.services import postman
from api.services.batches import TooManyRecipients
from tests.support.postman_example import stored_rows

TEMPLATES = {"english": "Dear {{name}}, {{topic}}", "chinese": "{{name}} {{topic}}"}
PARAMETERS = ["name", "topic"]
HEADER = ["recipient", "language", *PARAMETERS]
MAX_ROWS = 50
RULES = RecipientRules(max_rows=MAX_ROWS, max_message_chars=1600, number_check=POSSIBLE)
# Possible Singapore mobile numbers, and cells that are not numbers.
RECIPIENTS = st.sampled_from(["6591234567", "6598765432", "6581112222"]) | st.sampled_from(
    ["", "12", "+6591234567", "65 9123 4567", "6591234567x"]
)
LANGUAGES = st.sampled_from(["english", "chinese"]) | st.sampled_from(["", "french", "English"])
# Cells as Excel writes them: commas, quotes, line breaks of both kinds, blanks, non-Latin.
CELL = st.sampled_from(
    ["Ann", "Lee, Ann", 'say "hi"', "two\nlines", "two\r\nlines", "  ", "", "Zoë", "李", "a\rb"]
) | st.text(alphabet=st.sampled_from('ab ,"\n\r'), max_size=6)
ROWS = st.lists(st.tuples(RECIPIENTS, LANGUAGES, CELL, CELL), min_size=0, max_size=12)
# Ways to break a well-formed file, each at a position drawn from the file.
BREAKS = st.sampled_from(["none", "insert_quote", "drop_quote", "lone_cr", "empty_line"])


def render(rows: Sequence[tuple[str, ...]], quote_all: bool, line_end: str) -> bytes:
    """The rows as Excel writes them (quotes where a cell needs them), or every cell quoted."""
    out = io.StringIO()
    if quote_all:
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator=line_end)
    else:
        writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator=line_end)
    writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode()


def broken(content: bytes, how: str, at: int) -> bytes:
    """`content` broken `how`, near byte `at` of its records (the header stays whole)."""
    start = content.index(b"\n") + 1
    where = start + at % max(1, len(content) - start)
    if how == "insert_quote":
        return content[:where] + b'"' + content[where:]
    if how == "drop_quote":
        quote = content.find(b'"', where)
        quote = content.find(b'"', start) if quote < 0 else quote
        return content if quote < 0 else content[:quote] + content[quote + 1 :]
    if how == "lone_cr":
        return content[:where] + b"\r" + content[where:]
    if how == "empty_line":
        line = content.find(b"\n", where)
        return content if line < 0 else content[: line + 1] + b"\n" + content[line + 1 :]
    return content


def outcome(content: bytes, path: str) -> Any:
    """What a path makes of the file: the ledger rows it stored and its batch message, or the
    error it raised with what it says. `row` is the row path alone; `convert` tries the
    column path first."""
    try:
        if path == "row":
            out = io.BytesIO()
            rules = main_rules(content)
            postman._convert(io.BytesIO(content), postman._Pass(TEMPLATES, PARAMETERS, rules, out))
            written, message = out.getvalue(), rules.agent_message
        else:
            converted = postman.convert(io.BytesIO(content), TEMPLATES, PARAMETERS, RULES)
            with converted.content:
                written = converted.content.read()
            message = converted.message
    except postman.InvalidRows as error:
        return ("InvalidRows", error.message, error.rows)
    except (postman.HeaderMismatch, postman.NotText, TooManyRecipients) as error:
        return (type(error).__name__, error.message)
    return (
        "ok",
        stored_rows(written),
        message,
    )


def main_rules(content: bytes) -> RecipientRules:
    """The rules `convert` gives its paths: the first row's language's message."""
    main = postman._main_language(io.BytesIO(content), TEMPLATES)
    return dataclasses.replace(RULES, agent_message=TEMPLATES[main])


def columns_take(content: bytes) -> bool:
    """Whether the column path settles the file itself (no fallback to the row path)."""
    run = postman._Pass(TEMPLATES, PARAMETERS, main_rules(content), io.BytesIO())
    try:
        postman._convert_columns(io.BytesIO(content), run)
    except postman._NotPlain:
        return False
    except (postman.HeaderMismatch, TooManyRecipients):
        return True
    return True


@settings(max_examples=300, deadline=None)
@given(
    rows=ROWS,
    quote_all=st.booleans(),
    line_end=st.sampled_from(["\n", "\r\n"]),
    how=BREAKS,
    at=st.integers(min_value=0, max_value=10_000),
)
@example(
    rows=[("6591234567", "english", "Lee, Ann", "two\nlines")],
    quote_all=False,
    line_end="\r\n",
    how="none",
    at=0,
)
@example(
    rows=[("6591234567", "english", "Ann", "x")],
    quote_all=False,
    line_end="\n",
    how="insert_quote",
    at=14,
)
def test_both_paths_agree_on_any_quoting(
    rows: list[tuple[str, ...]], quote_all: bool, line_end: str, how: str, at: int
) -> None:
    content = broken(render(rows, quote_all, line_end), how, at)

    assert outcome(content, "columns") == outcome(content, "row")


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["6591234567", "6598765432"]),
            st.sampled_from(["english", "chinese"]),
            st.sampled_from(["Lee, Ann", 'say "hi"', "two\nlines", "two\r\nlines", "Zoë"]),
            st.sampled_from(["visa", "a, b", "x\ny"]),
        ),
        min_size=1,
        max_size=12,
    ),
    quote_all=st.booleans(),
    line_end=st.sampled_from(["\n", "\r\n"]),
)
def test_excel_quoting_is_read_by_columns(
    rows: list[tuple[str, ...]], quote_all: bool, line_end: str
) -> None:
    """A well-formed quoted file with every row right never needs the row path."""
    content = render(rows, quote_all, line_end)

    assert columns_take(content)
    assert outcome(content, "columns")[0] == "ok"


def test_a_quoted_cell_may_span_blocks_of_the_column_path(monkeypatch: Any) -> None:
    """Blocks end at a record's end, never inside a quoted cell with line breaks."""
    monkeypatch.setattr(postman, "PLAIN_BLOCK_BYTES", 64)
    rows = [("6591234567", "english", f"line {i}\nnext, {'x' * 40}", "visa") for i in range(20)]
    content = render(rows, False, "\r\n")

    assert columns_take(content)
    assert outcome(content, "columns") == outcome(content, "row")
