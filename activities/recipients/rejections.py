"""Every code a recipient file's validation gives, with its text and limit: the one table
the row engine (`rows`) and the column engine (`columns`) both read, and docs/API.md lists.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    """A code of the file as a whole (the batch fails), of its header (row 0), of a rejected
    row (`GET .../errors`), or of a ledger row that is skipped."""

    SOURCE_INVALID = "source_invalid"
    DUPLICATE_PHONE_COLUMN = "duplicate_phone_column"
    INVALID_ENCODING = "invalid_encoding"
    INVALID_FORMAT = "invalid_format"
    TOO_MANY_ROWS = "too_many_rows"
    VALIDATION_FAILED = "validation_failed"
    INVALID_COLUMN_NAME = "invalid_column_name"
    BLANK_NUMBER = "blank_number"
    INVALID_NUMBER = "invalid_number"
    MISSING_MESSAGE = "missing_message"
    MISSING_VARIABLE = "missing_variable"
    MESSAGE_TOO_LONG = "message_too_long"
    DUPLICATE = "duplicate"
    OPTED_OUT = "opted_out"


# The batch's failure when validation leaves no row to send (every one rejected or skipped),
# and its reason: the batch's own code, not one of the table of its rows' and file's.
NO_VALID_RECIPIENTS = "no_valid_recipients"
NOTHING_TO_SEND = "no row of the file can be sent"


# Codes of ledger rows that are kept but not sent; they carry no text.
SKIP_CODES = (Code.DUPLICATE, Code.OPTED_OUT)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that will not be sent (row 0: a problem with the header), and why."""

    row_number: int
    code: str
    reason: str
    value: str | None


class SourceInvalid(Exception):
    """The file as a whole cannot be read as recipients; `code` says why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Text:
    """One reason a code is given: its `str.format` template and, when a limit decides it,
    the setting that holds the limit."""

    code: Code
    template: str
    limit: str | None = None

    def at(self, row_number: int, value: str | None, **fields: object) -> Rejected:
        return Rejected(row_number, self.code, self.template.format(**fields), value)

    def error(self, **fields: object) -> SourceInvalid:
        return SourceInvalid(self.code, self.template.format(**fields))


def at_rows(texts: Sequence[Text], rows: Iterable[tuple[int, int, str | None]]) -> list[Rejected]:
    """`texts[kind].at(row_number, value)` for each `(kind, row_number, value)`, of texts
    whose reasons have no fields: each is formatted once, not once a row (a file may
    reject many)."""
    made = [(text.code, text.template.format()) for text in texts]
    return [Rejected(row_number, *made[kind], value) for kind, row_number, value in rows]


_SAVE_AS_UTF8 = 'save it as UTF-8 (e.g. "CSV UTF-8")'

NO_PHONE_COLUMN = Text(
    Code.SOURCE_INVALID, "the header has no column named phone_number (found {found})"
)
DUPLICATE_PHONE_COLUMNS = Text(
    Code.DUPLICATE_PHONE_COLUMN,
    "the header has {count} columns named phone_number (columns {where}); keep one",
)
DUPLICATE_PHONE_KEY = Text(
    Code.DUPLICATE_PHONE_COLUMN,
    "an object of the JSON array has phone_number more than once; keep one",
)
UTF16 = Text(Code.INVALID_ENCODING, f"the file is UTF-16; {_SAVE_AS_UTF8}")
NOT_UTF8 = Text(
    Code.INVALID_ENCODING,
    "the file is not UTF-8: byte 0x{byte:02X} at offset {offset} (line {line});"
    f" {_SAVE_AS_UTF8}",
)
BINARY = Text(
    Code.INVALID_FORMAT,
    "the file holds NUL bytes, so it is binary (a spreadsheet?), not CSV or JSON text",
)
BAD_CSV = Text(Code.INVALID_FORMAT, "the file is not valid CSV: {error} (line {line})")
BAD_JSON = Text(
    Code.INVALID_FORMAT, "the file is not valid JSON: {error} at line {line} column {column}"
)
JSON_TOO_DEEP = Text(Code.INVALID_FORMAT, "the file's JSON nests arrays and objects too deep")
JSON_LONG_INTEGER = Text(
    Code.INVALID_FORMAT, "the file's JSON holds an integer of more than {digits} digits"
)
NOT_AN_ARRAY = Text(Code.INVALID_FORMAT, "a JSON file must be an array of objects")
TOO_MANY_ROWS = Text(
    Code.TOO_MANY_ROWS,
    "the file has more than {limit} rows; split it into several batches",
    limit="HERALD_MAX_ROWS_PER_BATCH",
)
STRICT = Text(
    Code.VALIDATION_FAILED, "strict mode: {rejected} rows rejected, nothing sent; first: {first}"
)
SPACED_COLUMNS = Text(
    Code.INVALID_COLUMN_NAME, "column names with spaces cannot be template variables: {names}"
)
BLANK_NUMBER = Text(Code.BLANK_NUMBER, "phone_number is blank")
INVALID_NUMBER = Text(Code.INVALID_NUMBER, "not a valid phone number in E.164 form")
MISSING_MESSAGE = Text(
    Code.MISSING_MESSAGE, "no message: set global.agent_message or this row's agent_message"
)
MISSING_VARIABLE = Text(
    Code.MISSING_VARIABLE,
    "no value for {{{{{variable}}}}} in this row and no default in global.request_data",
)
UNKNOWN_VARIABLE = Text(
    Code.MISSING_VARIABLE,
    "the message uses {variables}, which no column of the file and no default in"
    " global.request_data gives",
)
MESSAGE_TOO_LONG = Text(
    Code.MESSAGE_TOO_LONG,
    "the message has {length} characters; at most {limit}",
    limit="HERALD_MAX_MESSAGE_CHARS",
)

TEXTS = (
    NO_PHONE_COLUMN,
    DUPLICATE_PHONE_COLUMNS,
    DUPLICATE_PHONE_KEY,
    UTF16,
    NOT_UTF8,
    BINARY,
    BAD_CSV,
    BAD_JSON,
    JSON_TOO_DEEP,
    JSON_LONG_INTEGER,
    NOT_AN_ARRAY,
    TOO_MANY_ROWS,
    STRICT,
    SPACED_COLUMNS,
    BLANK_NUMBER,
    INVALID_NUMBER,
    MISSING_MESSAGE,
    MISSING_VARIABLE,
    UNKNOWN_VARIABLE,
    MESSAGE_TOO_LONG,
)
