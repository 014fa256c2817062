"""Turns a raw recipient file into ledger rows and rejected rows, one streaming pass.

Pure functions, no I/O: the validation activity feeds bytes in and COPYs the rows out. A CSV
file is decoded and parsed incrementally, so memory does not grow with its rows; a JSON
array is parsed whole (the standard library has no streaming JSON parser), so it costs
memory in proportion to the file, which the upload limit bounds.
"""

import codecs
import csv
import functools
import io
import itertools
import json
import operator
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from activities.recipients import rejections
from activities.recipients.phones import POSSIBLE, VALID, NumberCheck, possible_e164s, valid_e164s
from activities.recipients.rejections import Code, Rejected, SourceInvalid
from activities.recipients.segments import GSM7, classify, classify_all
from store.messages import storable
from workflows.contracts import DEFAULT_VALIDATION, ValidationLimits, ValidationOptions

PHONE_COLUMN = "phone_number"
MESSAGE_COLUMN = "agent_message"
# A row's own content template (WhatsApp), instead of the batch's.
CONTENT_COLUMNS = ("content_sid", "content_variables")
REQUEST_DATA = "request_data"
REQUEST_DATA_PREFIX = f"{REQUEST_DATA}."
# `{{`, what lies between, `}}`: the name is that text stripped (`_variable_name`). Blanks
# around the name are not in the pattern: `\{\{\s*([^{}]+?)\s*\}\}` took cubic time on a
# `{{` followed by many blanks and no `}}`.
TEMPLATE_VARIABLE = re.compile(r"\{\{([^{}]+)\}\}")
# A file whose first character, after a BOM and whitespace, opens a JSON value is JSON.
JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*[\[{]")
# How a JSON file's text can hold what PostgreSQL cannot store (store.messages.UNSTORABLE):
# by an escape, `\u0000` or a surrogate's, as a NUL byte is BINARY and a surrogate's bytes
# are not UTF-8. A CSV file's text cannot hold either.
UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_DECODE_BLOCK = 1 << 20
# Rows validated together: enough to spread each step's setup, few enough to stay in cache.
_BLOCK_ROWS = 512
# Rejected rows a strict failure names in its reason.
STRICT_EXAMPLES = 5

Row = list[str] | dict[str, str]
Lookup = Callable[[str], str | None]


# Not frozen: a frozen dataclass's __init__ costs several times as much, once per row, and
# `_mark_skipped` sets `skip_code` once the block's outcomes are built.
@dataclass(slots=True)
class Recipient:
    row_number: int
    to_number: str
    body: str
    encoding: str
    segments: int
    skip_code: str | None = None
    # Its own request data (`request_data_of`), when its file has request-data columns: the
    # ledger keeps it for a reply's conversation (messages.request_data).
    request_data: dict[str, str] | None = None


@dataclass(kw_only=True)
class RecipientRules:
    max_rows: int
    max_message_chars: int
    agent_message: str | None = None
    request_data: Mapping[str, Any] = field(default_factory=dict)
    column_mapping: Mapping[str, str] = field(default_factory=dict)
    exclude_duplicates: bool = DEFAULT_VALIDATION.exclude_duplicates
    opted_out: AbstractSet[str] = frozenset()
    number_check: NumberCheck = VALID

    @classmethod
    def from_request(
        cls, request: Mapping[str, Any], limits: ValidationLimits, opted_out: AbstractSet[str]
    ) -> "RecipientRules":
        """The rules of a stored batch request, under the limits it was accepted with;
        `opted_out` is the account's list when the request excludes opt-outs, else empty."""
        settings_global: Mapping[str, Any] = request.get("global") or {}
        return cls(
            max_rows=limits.max_rows,
            max_message_chars=limits.max_message_chars,
            agent_message=batch_message(request),
            request_data=settings_global.get("request_data") or {},
            column_mapping=request.get("column_mapping") or {},
            exclude_duplicates=ValidationOptions.from_request(request).exclude_duplicates,
            opted_out=opted_out,
            number_check=request.get("number_check", VALID),
        )


def batch_message(request: Mapping[str, Any]) -> str | None:
    """The message template of a stored batch request: its own, else its sender's opening
    message, else, for a content template, the text the ledger keeps for it (the carrier
    is sent the template, not this text)."""
    settings_global: Mapping[str, Any] = request.get("global") or {}
    given = settings_global.get("agent_message")
    # A blank message is none: the sender's opening message, if any, is sent instead.
    own = (given if given and str(given).strip() else None) or request.get("opening_message")
    if own:
        return str(own)
    content_sid = settings_global.get("content_sid")
    return content_placeholder(str(content_sid)) if content_sid else None


def content_placeholder(content_sid: str) -> str:
    """A ledger row's body when the message is a content template and nothing else."""
    return f"[content {content_sid}]"


@dataclass(kw_only=True)
class Tally:
    """The counts of one pass; only the first few rejected rows are kept, for a strict reason."""

    rows: int = 0
    recipients: int = 0
    rejected: int = 0
    skipped: int = 0
    segments: int = 0
    gsm7: int = 0
    ucs2: int = 0
    first_rejected: list[Rejected] = field(default_factory=list)

    def count(self, outcome: Recipient | Rejected) -> None:
        """Add one row's outcome; segments and encodings count only messages to be sent."""
        self.rows += 1
        if isinstance(outcome, Rejected):
            self.rejected += 1
            if len(self.first_rejected) < STRICT_EXAMPLES:
                self.first_rejected.append(outcome)
            return
        self.recipients += 1
        if outcome.skip_code is not None:
            self.skipped += 1
            return
        self.segments += outcome.segments
        if outcome.encoding == GSM7:
            self.gsm7 += 1
        else:
            self.ucs2 += 1

    def add(self, other: "Tally") -> None:
        """Count another pass's rows (a later part of the same file) in with these."""
        self.rows += other.rows
        self.recipients += other.recipients
        self.rejected += other.rejected
        self.skipped += other.skipped
        self.segments += other.segments
        self.gsm7 += other.gsm7
        self.ucs2 += other.ucs2
        room = STRICT_EXAMPLES - len(self.first_rejected)
        self.first_rejected += other.first_rejected[:room]

    def batch_counts(self) -> dict[str, int]:
        """The counts a batch keeps of its validation (`batches.set_validation_counts`)."""
        return {
            "rows_total": self.rows,
            "recipients": self.recipients,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "segments_total": self.segments,
            "messages_gsm7": self.gsm7,
            "messages_ucs2": self.ucs2,
        }

    def without_ledger(self) -> "Tally":
        """The counts once the ledger is dropped (a strict failure): rows and rejections."""
        return Tally(rows=self.rows, rejected=self.rejected, first_rejected=self.first_rejected)


def too_many_rows(max_rows: int) -> SourceInvalid:
    return rejections.TOO_MANY_ROWS.error(limit=max_rows)


def read_rows(content: bytes) -> tuple[list[str], Iterator[Row]]:
    """The header and an iterator over rows, for CSV or a JSON array of objects.

    Raises SourceInvalid at once for what shows at the start of the file; a CSV's decoding
    and quoting errors surface, as SourceInvalid too, while iterating.
    """
    if content.startswith(_UTF16_BOMS):
        raise rejections.UTF16.error()
    if b"\x00" in content:
        raise rejections.BINARY.error()
    if JSON_START.match(content):
        return _read_json(content)
    rows = _csv_rows(content)
    header = next(rows, None) or []
    return [name.strip() for name in header], rows


def _csv_rows(content: bytes) -> Iterator[list[str]]:
    # newline="" leaves line breaks to the csv module, which keeps those inside quotes.
    text = io.TextIOWrapper(io.BytesIO(content), encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        yield from reader
    except UnicodeDecodeError as error:
        raise _not_utf8(content) from error
    except csv.Error as error:
        raise rejections.BAD_CSV.error(error=error, line=reader.line_num) from error


def _not_utf8(content: bytes) -> SourceInvalid:
    """Where the first byte that is not UTF-8 is, found block by block in bounded memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    for start in range(0, len(content), _DECODE_BLOCK):
        pending = len(decoder.getstate()[0])
        block = content[start : start + _DECODE_BLOCK]
        try:
            decoder.decode(block, final=start + len(block) >= len(content))
        except UnicodeDecodeError as error:
            offset = start - pending + error.start
            break
    line = content.count(b"\n", 0, offset) + 1
    return rejections.NOT_UTF8.error(byte=content[offset], offset=offset, line=line)


def _read_json(content: bytes) -> tuple[list[str], Iterator[Row]]:
    try:
        items = json.loads(content.decode("utf-8-sig"), object_pairs_hook=_json_object)
    except UnicodeDecodeError as error:
        raise _not_utf8(content) from error
    except json.JSONDecodeError as error:
        raise rejections.BAD_JSON.error(
            error=error.msg, line=error.lineno, column=error.colno
        ) from error
    except RecursionError:
        raise rejections.JSON_TOO_DEEP.error() from None
    except ValueError as error:  # not JSONDecodeError: an integer of too many digits
        raise rejections.JSON_LONG_INTEGER.error(digits=sys.get_int_max_str_digits()) from error
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise rejections.NOT_AN_ARRAY.error()
    items = [_flat_request_data(item) for item in items]
    header = list(dict.fromkeys(key for item in items for key in item))
    if UNSTORABLE_ESCAPE.search(content):
        # Each key and cell as PostgreSQL can store it, as a CSV file's always are.
        header = list(dict.fromkeys(map(storable, header)))
        return header, (
            {storable(key): storable(cell_text(value)) for key, value in item.items()}
            for item in items
        )
    return header, ({key: cell_text(value) for key, value in item.items()} for item in items)


def _flat_request_data(item: dict[str, Any]) -> dict[str, Any]:
    """A row's nested `"request_data": {...}` object as `request_data.<field>` keys, as a
    CSV file spells them; a `request_data.<field>` key of the row itself wins."""
    nested = item.get(REQUEST_DATA)
    if not isinstance(nested, dict):
        return item
    flat = {f"{REQUEST_DATA_PREFIX}{name}": value for name, value in nested.items()}
    flat.update((key, value) for key, value in item.items() if key != REQUEST_DATA)
    return flat


def cell_text(value: Any) -> str:
    """A JSON value as the text a CSV cell would hold."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list):
        try:
            return json.dumps(value, ensure_ascii=False)
        except RecursionError:
            # Parsed, yet too deep to write back from deeper in the stack than it was read.
            raise rejections.JSON_TOO_DEEP.error() from None
    return str(value)


def phone_column_issue(header: Sequence[str]) -> SourceInvalid | None:
    """Why the header gives no one column of numbers: none named `phone_number`
    (`source_invalid`), or several, which would leave it to chance which one is sent to
    (`duplicate_phone_column`)."""
    positions = [i + 1 for i, name in enumerate(header) if name == PHONE_COLUMN]
    if not positions:
        found = ", ".join(repr(name) for name in header) or "no columns"
        return rejections.NO_PHONE_COLUMN.error(found=found)
    if len(positions) > 1:
        where = ", ".join(str(p) for p in positions)
        return rejections.DUPLICATE_PHONE_COLUMNS.error(count=len(positions), where=where)
    return None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of a JSON file; `json` would keep the last of repeated keys silently."""
    if sum(key == PHONE_COLUMN for key, _ in pairs) > 1:
        raise rejections.DUPLICATE_PHONE_KEY.error()
    return dict(pairs)


def row_request_data(
    content: bytes, row_number: int, column_mapping: Mapping[str, str]
) -> dict[str, str]:
    """The `request_data` a file's row gives (row 1 is the first after the header, as
    validation numbers them; `request_data_of`); {} for a row the file does not have. For a
    ledger row validated before rows kept theirs (messages.request_data)."""
    header, rows = read_rows(content)
    row = next(itertools.islice(rows, row_number - 1, None), None)
    return {} if row is None else request_data_of(_values(header, row), column_mapping)


def request_field(column: str, column_mapping: Mapping[str, str]) -> str | None:
    """The `request_data` field a column gives: a `request_data.<field>` column's, or the
    one `column_mapping` maps it to; None for any other column."""
    if column.startswith(REQUEST_DATA_PREFIX):
        name = column.removeprefix(REQUEST_DATA_PREFIX)
    elif column in column_mapping:
        name = column_mapping[column].removeprefix(REQUEST_DATA_PREFIX)
    else:
        return None
    return name or None


def request_data_of(values: Mapping[str, str], column_mapping: Mapping[str, str]) -> dict[str, str]:
    """A row's own `request_data` (`values` by column): the field each `request_field`
    column gives, blank cells left out, a later column's value over an earlier one's."""
    found: dict[str, str] = {}
    for column, value in values.items():
        name = request_field(column, column_mapping)
        if name and value and not value.isspace():
            found[name] = value
    return found


def kept_request_data(kept: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger row's request data as its reader takes it: without the fields of blank cells,
    which the column engine keeps (null, or blank text: columns._request_data)."""
    return {
        name: value
        for name, value in kept.items()
        if value is not None and not (isinstance(value, str) and not value.strip())
    }


def row_contents(content: bytes) -> Iterator[tuple[int, str | None, str | None]]:
    """(row number, content_sid, content_variables) of each row of the file that has either
    cell non-blank, numbered as validation numbers rows; nothing for a file without those
    columns."""
    header, rows = read_rows(content)
    if not any(name in header for name in CONTENT_COLUMNS):
        return
    for row_number, row in enumerate(rows, start=1):
        values = _values(header, row)
        sid, variables = (values.get(name, "").strip() or None for name in CONTENT_COLUMNS)
        if sid or variables:
            yield row_number, sid, variables


def request_defaults(rules: RecipientRules) -> dict[str, str]:
    """`global.request_data`, the variables' defaults, as cell text."""
    return {name: cell_text(value) for name, value in rules.request_data.items()}


def has_space(name: str) -> bool:
    return any(char.isspace() for char in name)


def header_issue(header: Sequence[str], column_mapping: Mapping[str, str]) -> Rejected | None:
    """Columns whose names hold whitespace, as one rejected entry at row 0 (not a row); but
    those `column_mapping` maps, whose values it names."""
    spaced = [name for name in header if has_space(name) and name not in column_mapping]
    if not spaced:
        return None
    names = ", ".join(spaced)
    return rejections.SPACED_COLUMNS.at(0, names, names=names)


@functools.lru_cache(maxsize=1024)
def template_parts(template: str) -> tuple[str, ...]:
    """Literal text and variable names, alternating (`re.split` with one group)."""
    parts = TEMPLATE_VARIABLE.split(template)
    return tuple(
        part if index % 2 == 0 else _variable_name(part) for index, part in enumerate(parts)
    )


def _variable_name(between: str) -> str:
    """The text between `{{` and `}}` without its outer blanks; of blanks only, the last one
    (a name no column gives: such a template fails as missing that variable)."""
    return between.strip() or between[-1]


def render(template: str, lookup: Lookup) -> tuple[str, str | None]:
    """The template with every `{{name}}` replaced by `lookup(name)`, in one pass (a value
    that itself looks like `{{x}}` is left as it is); or the first name without a value."""
    parts = template_parts(template)
    if len(parts) == 1:
        return template, None
    out: list[str] = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            out.append(part)
            continue
        value = lookup(part)
        if value is None:
            return "", part
        out.append(value)
    return "".join(out), None


def variable_sources(
    header: Sequence[str], column_mapping: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """For each template variable, the columns that may give it a value, strongest first.

    `request_data.<field>` columns and mapped columns name `request_data` fields explicitly,
    so they win over a plain column of the same name. Names with spaces are no variables,
    unless `column_mapping` maps them to one (a "First Name" column of a CRM's export).
    """
    explicit: dict[str, list[str]] = {}
    plain: dict[str, list[str]] = {}
    for column in header:
        if not column or (has_space(column) and column not in column_mapping):
            continue
        name = request_field(column, column_mapping)
        if name:
            explicit.setdefault(name, []).append(column)
        elif not column.startswith(REQUEST_DATA_PREFIX) and column not in column_mapping:
            plain.setdefault(column, []).append(column)
    return {name: (*explicit.get(name, ()), *plain.get(name, ())) for name in (*explicit, *plain)}


def build_recipients(
    header: list[str], rows: Iterator[Row], rules: RecipientRules
) -> Iterator[Recipient | Rejected]:
    """One Recipient or one Rejected per input row, in file order.

    Rows count from 1, the first after the header; a row whose every cell is blank is no
    row (it keeps its number, so later numbers still match the file). Checks the header at
    once; SourceInvalid may still surface while iterating.
    """
    issue = phone_column_issue(header)
    if issue is not None:
        raise issue
    sources = variable_sources(header, rules.column_mapping)
    defaults = request_defaults(rules)
    return _iter_recipients(header, rows, rules, sources, defaults)


def is_blank_row(row: Row) -> bool:
    cells = row.values() if isinstance(row, dict) else row
    return not "".join(cells).strip()


def _values(header: list[str], row: Row) -> dict[str, str]:
    return row if isinstance(row, dict) else dict(zip(header, row, strict=False))


def _iter_recipients(
    header: list[str],
    rows: Iterator[Row],
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> Iterator[Recipient | Rejected]:
    """Rows go block by block, each step one C-level pass over a column where per-row
    Python would cost more than parsing the CSV; rows the common case does not cover
    (a bad number, a row's own message, a missing value...) take `row_outcome`."""
    # Numbers already seen, as ints: a third of the memory of the E.164 strings.
    seen: set[int] = set()
    count = 0
    first = 1
    while block := list(itertools.islice(rows, _BLOCK_ROWS)):
        numbers: Sequence[int] = range(first, first + len(block))
        first += len(block)
        columns = _Columns(header, block)
        phones = map(str.strip, columns[PHONE_COLUMN])
        blank = {index for index in _where_not(phones) if is_blank_row(block[index])}
        if blank:
            kept = [index for index in range(len(block)) if index not in blank]
            numbers, block = [numbers[index] for index in kept], [block[index] for index in kept]
            columns = _Columns(header, block)
        overflow = count + len(block) > rules.max_rows
        if overflow:
            numbers, block = numbers[: rules.max_rows - count], block[: rules.max_rows - count]
            columns = _Columns(header, block)
        count += len(block)
        yield from _block_outcomes(columns, numbers, rules, sources, defaults, seen)
        if overflow:
            raise too_many_rows(rules.max_rows)


def _where_not(items: Iterable[object]) -> Iterator[int]:
    """The positions of the false items (None, ""), by a C-level pass."""
    return itertools.compress(itertools.count(), map(operator.not_, items))


class _Columns:
    """A block of rows (all lists or all dicts, as `read_rows` gives them) by column name;
    a missing cell reads as "", which `row_outcome` treats the same."""

    def __init__(self, header: list[str], rows: list[Row]) -> None:
        self.header = header
        self.rows = rows
        self._found: dict[str, list[str]] = {}

    def __getitem__(self, name: str) -> list[str]:
        column = self._found.get(name)
        if column is None:
            column = self._found[name] = self._read(name)
        return column

    def _read(self, name: str) -> list[str]:
        if name not in self.header or not self.rows:
            return [""] * len(self.rows)
        index = self.header.index(name)
        # dict(zip(header, row)) keeps the last of repeated names that the row reaches.
        if (
            not isinstance(self.rows[0], dict)
            and self.header.count(name) == 1
            and min(map(len, self.rows)) > index
        ):
            return list(map(operator.itemgetter(index), self.rows))
        return [_values(self.header, row).get(name, "") for row in self.rows]


def _block_outcomes(
    columns: _Columns,
    numbers: Sequence[int],
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
    seen: set[int],
) -> list[Recipient | Rejected]:
    """The outcome of each row, in order: a row with a valid number and a body of at most
    `max_message_chars` is done here, by columns, the rest by `row_outcome`."""
    raws = columns[PHONE_COLUMN]
    phones = valid_e164s(raws)
    if rules.number_check == POSSIBLE:
        phones = possible_e164s(raws, phones)
    bodies = _bodies(columns, len(numbers), rules, sources, defaults)
    if max(map(len, bodies), default=0) > rules.max_message_chars:
        bodies = [body if len(body) <= rules.max_message_chars else "" for body in bodies]
    kinds = zip(*classify_all(bodies), strict=True)
    outcomes: list[Recipient | Rejected] = list(map(Recipient, numbers, phones, bodies, *kinds))
    for index in sorted({*_where_not(phones), *_where_not(bodies)}):
        row = _values(columns.header, columns.rows[index])
        outcome = row_outcome(numbers[index], row, phones[index], rules, sources, defaults)
        outcomes[index] = outcome
        phones[index] = outcome.to_number if isinstance(outcome, Recipient) else None
    _mark_skipped(outcomes, phones, rules, seen)
    if any(request_field(column, rules.column_mapping) for column in columns.header):
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Recipient):
                row = _values(columns.header, columns.rows[index])
                outcome.request_data = request_data_of(row, rules.column_mapping)
    return outcomes


def _mark_skipped(
    outcomes: list[Recipient | Rejected],
    phones: list[str | None],
    rules: RecipientRules,
    seen: set[int],
) -> None:
    """Skip the Recipients (their numbers in `phones`, None for the rejected rows) whose
    number came before, in this block or one before it, or opted out."""
    positions = list(itertools.compress(itertools.count(), phones))
    numbers = list(filter(None, phones))
    skips = dict.fromkeys(
        itertools.compress(positions, map(rules.opted_out.__contains__, numbers)), Code.OPTED_OUT
    )
    if rules.exclude_duplicates:
        for index, key in zip(positions, map(int, numbers), strict=True):
            if key in seen:
                skips[index] = Code.DUPLICATE
            else:
                seen.add(key)
    for index, code in skips.items():
        outcome = outcomes[index]
        assert isinstance(outcome, Recipient)
        outcome.skip_code = code


def _bodies(
    columns: _Columns,
    size: int,
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> list[str]:
    """The rendered global message of each row; "" where `row_outcome` must look: the row
    has its own message, none is set, or a variable has no value."""
    template = rules.agent_message or ""
    if not template.strip():
        return [""] * size
    parts = template_parts(template)
    values = [_variable_values(name, columns, size, sources, defaults) for name in parts[1::2]]
    layout = "%s".join(part.replace("%", "%%") for part in parts[0::2])
    if any(None in column for column in values):
        bodies = ["" if None in cells else layout % cells for cells in zip(*values, strict=True)]
    elif values:
        bodies = list(map(layout.__mod__, zip(*values, strict=True)))
    else:
        bodies = [template] * size
    own = columns[MESSAGE_COLUMN]
    if any(map(str.strip, own)):
        bodies = [
            body if not message.strip() else "" for body, message in zip(bodies, own, strict=True)
        ]
    return bodies


def _variable_values(
    name: str,
    columns: _Columns,
    size: int,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> Sequence[str | None]:
    """`render`'s lookup of `name` in each row: the first column, in `sources` order, with a
    value that is not blank, else the default; None when neither has one."""
    default: str | None = defaults.get(name)
    if not default or default.isspace():
        default = None
    cells = [columns[column] for column in sources.get(name, ())]
    if cells and all(cells[0]) and not any(map(str.isspace, cells[0])):
        return cells[0]
    if not cells:
        return [default] * size
    return [
        next((value for value in row if value and not value.isspace()), default)
        for row in zip(*cells, strict=True)
    ]


def row_outcome(
    row_number: int,
    values: dict[str, str],
    number: str | None,
    rules: RecipientRules,
    sources: dict[str, tuple[str, ...]],
    defaults: dict[str, str],
) -> Recipient | Rejected:
    """One row's outcome, checked rule by rule, given its number in E.164 form (None: not
    valid); `_mark_skipped` decides its skip code."""
    raw_number = values.get(PHONE_COLUMN, "")
    if not raw_number.strip():
        return rejections.BLANK_NUMBER.at(row_number, raw_number)
    if number is None:
        return rejections.INVALID_NUMBER.at(row_number, raw_number)

    def lookup(name: str) -> str | None:
        for column in sources.get(name, ()):
            value = values.get(column)
            if value and not value.isspace():
                return value
        value = defaults.get(name)
        return value if value and not value.isspace() else None

    template = values.get(MESSAGE_COLUMN, "")
    if not template.strip():
        template = rules.agent_message or ""
    if not template.strip():
        return rejections.MISSING_MESSAGE.at(row_number, raw_number)
    body, missing = render(template, lookup)
    if missing is not None:
        return rejections.MISSING_VARIABLE.at(row_number, raw_number, variable=missing)
    if len(body) > rules.max_message_chars:
        return rejections.MESSAGE_TOO_LONG.at(
            row_number, raw_number, length=len(body), limit=rules.max_message_chars
        )
    encoding, segments = classify(body)
    return Recipient(row_number, number, body, encoding, segments)


def strict_failure(issue: Rejected | None, tally: Tally) -> str | None:
    """Why a strict batch fails, naming its first problems; None when there is none."""
    problems = ([issue] if issue else []) + tally.first_rejected
    if not problems:
        return None
    listed = "; ".join(_describe(problem) for problem in problems[:STRICT_EXAMPLES])
    return rejections.STRICT.template.format(rejected=tally.rejected, first=listed)


def _describe(problem: Rejected) -> str:
    where = "header" if problem.row_number == 0 else f"row {problem.row_number}"
    value = f" ({problem.value!r})" if problem.value else ""
    return f"{where} {problem.code}{value}"
