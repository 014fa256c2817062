"""Generated recipient files: no row is lost, and each number is sent at most once."""

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from activities.recipients import rows as recipients
from activities.recipients.phones import to_e164
from activities.recipients.rows import (
    Recipient,
    RecipientRules,
    Rejected,
    SourceInvalid,
    Tally,
    build_recipients,
    read_rows,
    render,
    variable_sources,
)
from activities.recipients.segments import classify
from tests.support.builders import PHONE_CELLS

# Cell text: commas, quotes, line breaks, spaces and non-Latin letters, but no NUL (binary)
# and no lone surrogates (not encodable).
CELL = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=12,
) | st.sampled_from(["Ann", 'Lee, "A"', "two\nlines", "\r\n", "Zoë", "😀", "  ", ""])


@dataclass(frozen=True)
class Line:
    """One line of a generated file: a data row, or a blank line (None)."""

    row: tuple[str, str] | None


LINES = st.lists(
    st.one_of(st.tuples(st.sampled_from(PHONE_CELLS), CELL).map(Line), st.just(Line(None))),
    max_size=40,
)


def render_file(lines: list[Line], form: str) -> bytes:
    """The lines as CSV (LF and every field quoted, or CRLF, minimal quoting and a BOM) or as
    a JSON array; every data row has an `id`, never blank, so a data row is never taken for
    a blank line."""
    if form == "json":
        items = [
            {"phone_number": ln.row[0], "name": ln.row[1], "id": f"r{i}"} if ln.row else {}
            for i, ln in enumerate(lines)
        ]
        return json.dumps(items, ensure_ascii=False).encode()
    out = io.StringIO(newline="")
    if form == "csv-lf":
        # Python 3.11's writer leaves a lone CR unquoted unless it is in the line terminator,
        # which would make it a line end: quote every field.
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    else:
        writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["phone_number", "name", "id"])
    for i, line in enumerate(lines):
        writer.writerow([*line.row, f"r{i}"] if line.row else [])
    prefix = b"\xef\xbb\xbf" if form == "csv-crlf-bom" else b""
    return prefix + out.getvalue().encode()


def expected_outcome(number: str, name: str, default: str | None) -> str:
    """The code one row should get, duplicates aside: a model of the rules."""
    if not number.strip():
        return "blank_number"
    if to_e164(number) is None:
        return "invalid_number"
    if not name.strip() and not default:
        return "missing_variable"
    return "ok"


@settings(max_examples=300, deadline=None)
@given(
    lines=LINES,
    form=st.sampled_from(["csv-lf", "csv-crlf-bom", "json"]),
    exclude_duplicates=st.booleans(),
    default=st.sampled_from([None, "friend"]),
)
def test_every_row_is_one_outcome_and_numbers_are_sent_once(
    lines: list[Line], form: str, exclude_duplicates: bool, default: str | None
) -> None:
    rules = RecipientRules(
        max_rows=1000,
        max_message_chars=1600,
        agent_message="Hi {{name}}",
        request_data={"name": default} if default else {},
        exclude_duplicates=exclude_duplicates,
    )
    data_rows = [(i + 1, ln.row) for i, ln in enumerate(lines) if ln.row is not None]
    header, rows = read_rows(render_file(lines, form))
    if form == "json" and not data_rows:
        # A JSON array has no header: with no object, no phone_number column either.
        with pytest.raises(SourceInvalid):
            build_recipients(header, rows, rules)
        return
    outcomes = list(build_recipients(header, rows, rules))
    tally = Tally()
    for outcome in outcomes:
        tally.count(outcome)

    valid = [o for o in outcomes if isinstance(o, Recipient) and o.skip_code is None]
    skipped = [o for o in outcomes if isinstance(o, Recipient) and o.skip_code is not None]
    rejected = [o for o in outcomes if isinstance(o, Rejected)]
    assert len(data_rows) == len(valid) + len(rejected) + len(skipped)
    assert (tally.rows, tally.rejected, tally.skipped) == (
        len(data_rows),
        len(rejected),
        len(skipped),
    )
    assert [o.row_number for o in outcomes] == [row_number for row_number, _ in data_rows]

    seen: set[str] = set()
    for (_, (number, name)), outcome in zip(data_rows, outcomes, strict=True):
        code = expected_outcome(number, name, default)
        if isinstance(outcome, Rejected):
            assert (outcome.code, outcome.value) == (code, number)
            continue
        assert code == "ok"
        assert outcome.to_number == to_e164(number)
        assert outcome.body == f"Hi {name if name.strip() else default}"
        duplicate = exclude_duplicates and outcome.to_number in seen
        assert outcome.skip_code == ("duplicate" if duplicate else None)
        seen.add(outcome.to_number)

    sent = Counter(o.to_number for o in valid)
    if exclude_duplicates:
        assert all(count == 1 for count in sent.values())
        assert set(sent) == {o.to_number for o in valid + skipped}


INVALID = "not a valid phone number in E.164 form"
DEFAULTS = "global.request_data"
NO_MESSAGE = "no message: set global.agent_message or this row's agent_message"
HEADERS = [
    ["phone_number", "name", "agent_message"],
    ["phone_number", "name"],
    ["name", "phone_number", "name"],  # a repeated name: the last cell a row reaches wins
    ["phone_number", "request_data.name", "name"],
]
# Rows as cells, some shorter or longer than the header, some blank.
ROWS = st.lists(
    st.lists(
        st.sampled_from(PHONE_CELLS)
        | st.sampled_from(["Ann", "", " ", "Zoë", "Yo {{name}}", "Hey", "{{name}}{{name}}"]),
        max_size=4,
    ),
    max_size=30,
)


def outcomes_in_blocks(content: bytes, rules: RecipientRules, size: int) -> list[object]:
    """The outcomes, then the code that stopped the pass if one did, `size` rows a block."""
    found: list[object] = []
    with mock.patch.object(recipients, "_BLOCK_ROWS", size):
        header, rows = read_rows(content)
        try:
            found.extend(build_recipients(header, rows, rules))
        except SourceInvalid as error:
            found.append(error.code)
    return found


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(HEADERS),
    rows=ROWS,
    size=st.integers(1, 5),
    max_rows=st.integers(1, 30),
    exclude_duplicates=st.booleans(),
    template=st.sampled_from(["Hi {{name}}", "Hello", "", "{{name}}: {{missing}}"]),
    default=st.sampled_from([None, "friend", " "]),
    max_chars=st.sampled_from([5, 1600]),
)
@example(
    header=["name", "phone_number", "name"],
    rows=[["Ann", "+12015550123", "Zoë"], ["Bob", "+12015550124"]],
    size=2,
    max_rows=5,
    exclude_duplicates=True,
    template="Hi {{name}}",
    default=None,
    max_chars=1600,
)
def test_blocks_of_any_size_give_the_same_outcomes(
    header: list[str],
    rows: list[list[str]],
    size: int,
    max_rows: int,
    exclude_duplicates: bool,
    template: str,
    default: str | None,
    max_chars: int,
) -> None:
    out = io.StringIO(newline="")
    csv.writer(out).writerows([header, *rows])
    rules = RecipientRules(
        max_rows=max_rows,
        max_message_chars=max_chars,
        agent_message=template,
        request_data={"name": default} if default is not None else {},
        exclude_duplicates=exclude_duplicates,
        opted_out=frozenset({"+447911123456"}),
    )
    content = out.getvalue().encode()
    expected = row_by_row(header, rows, rules)
    assert outcomes_in_blocks(content, rules, size) == expected
    assert outcomes_in_blocks(content, rules, 1000) == expected


def row_by_row(header: list[str], rows: list[list[str]], rules: RecipientRules) -> list[object]:
    """The rules applied to one row after the other: a model of build_recipients."""
    found: list[object] = []
    sources = variable_sources(header, rules.column_mapping)
    defaults = {name: str(value) for name, value in rules.request_data.items()}
    seen: set[str] = set()
    count = 0
    # A row's own request data, kept when the header has a request-data column.
    data_fields = {
        column: column.removeprefix("request_data.")
        for column in header
        if column.startswith("request_data.") and column != "request_data."
    }
    for row_number, row in enumerate(rows, start=1):
        if not "".join(row).strip():
            continue
        count += 1
        if count > rules.max_rows:
            return [*found, "too_many_rows"]
        values = dict(zip(header, row, strict=False))

        def lookup(name: str, values: dict[str, str] = values) -> str | None:
            present = [values.get(column) for column in sources.get(name, ())]
            present.append(defaults.get(name))
            return next((value for value in present if value and not value.isspace()), None)

        raw = values.get("phone_number", "")
        number = to_e164(raw)
        template = values.get("agent_message", "")
        template = template if template.strip() else rules.agent_message or ""
        body, missing = render(template, lookup)
        if not raw.strip():
            found.append(Rejected(row_number, "blank_number", "phone_number is blank", raw))
        elif number is None:
            found.append(Rejected(row_number, "invalid_number", INVALID, raw))
        elif not template.strip():
            found.append(Rejected(row_number, "missing_message", NO_MESSAGE, raw))
        elif missing is not None:
            reason = f"no value for {{{{{missing}}}}} in this row and no default in {DEFAULTS}"
            found.append(Rejected(row_number, "missing_variable", reason, raw))
        elif len(body) > rules.max_message_chars:
            reason = f"the message has {len(body)} characters; at most {rules.max_message_chars}"
            found.append(Rejected(row_number, "message_too_long", reason, raw))
        else:
            skip = "duplicate" if rules.exclude_duplicates and number in seen else None
            seen.add(number)
            if skip is None and number in rules.opted_out:
                skip = "opted_out"
            own = {
                data_fields[column]: value
                for column, value in values.items()
                if column in data_fields and value.strip()
            }
            found.append(
                Recipient(
                    row_number, number, body, *classify(body), skip, own if data_fields else None
                )
            )
    return found
