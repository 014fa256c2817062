"""Turns a raw recipient file into ledger rows and rejected rows, one streaming pass.

Pure functions, no I/O: the validation activity feeds bytes in and COPYs the rows out.
"""

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from phones import to_e164

PHONE_COLUMN = "phone_number"
MESSAGE_COLUMN = "agent_message"
REQUEST_DATA_PREFIX = "request_data."
TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


class SourceInvalid(Exception):
    """The file as a whole cannot be read as recipients (code `source_invalid`)."""


@dataclass(frozen=True, slots=True)
class Recipient:
    row_number: int
    to_number: str
    body: str
    skip_code: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    row_number: int
    code: str
    reason: str
    value: str | None


@dataclass(kw_only=True)
class RecipientRules:
    agent_message: str | None = None
    request_data: Mapping[str, Any] = field(default_factory=dict)
    column_mapping: Mapping[str, str] = field(default_factory=dict)
    exclude_duplicates: bool = True
    opted_out: frozenset[str] | set[str] = frozenset()


def read_rows(content: bytes) -> tuple[list[str], Iterator[list[str] | dict[str, Any]]]:
    """The header and an iterator over rows, for CSV or a JSON array of objects."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceInvalid(f"file is not UTF-8 (byte {error.start})") from error
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise SourceInvalid(f"invalid JSON: {error.msg} at line {error.lineno}") from error
        if not all(isinstance(item, dict) for item in items):
            raise SourceInvalid("a JSON file must be an array of objects")
        header = list(dict.fromkeys(key for item in items for key in item))
        return header, iter(items)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise SourceInvalid("file is empty")
    return [name.strip() for name in header], reader


def render(template: str, variables: Mapping[str, Any]) -> tuple[str, str | None]:
    """The template with every `{{name}}` replaced; or the first name without a value."""
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = variables.get(name)
        if value is None or value == "":
            missing.append(name)
            return ""
        return str(value)

    body = TEMPLATE_VARIABLE.sub(substitute, template)
    return body, (missing[0] if missing else None)


def build_recipients(
    header: list[str], rows: Iterator[list[str] | dict[str, Any]], rules: RecipientRules
) -> Iterator[Recipient | Rejected]:
    """One Recipient or one Rejected per input row, in file order (rows count from 1).

    Checks the header at once; `csv.Error` may still surface while iterating.
    """
    if PHONE_COLUMN not in header:
        raise SourceInvalid(f"missing column {PHONE_COLUMN}")
    return _iter_recipients(rows, header, rules)


def _iter_recipients(
    rows: Iterator[list[str] | dict[str, Any]], header: list[str], rules: RecipientRules
) -> Iterator[Recipient | Rejected]:
    mapped = {
        column: target.removeprefix(REQUEST_DATA_PREFIX)
        for column, target in rules.column_mapping.items()
    }
    seen: set[str] = set()
    for row_number, row in enumerate(rows, start=1):
        values = row if isinstance(row, dict) else dict(zip(header, row, strict=False))
        if not any(str(v).strip() for v in values.values() if v is not None):
            continue
        yield _recipient(row_number, values, rules, mapped, seen)


def _recipient(
    row_number: int,
    values: dict[str, Any],
    rules: RecipientRules,
    mapped: dict[str, str],
    seen: set[str],
) -> Recipient | Rejected:
    raw_number = str(values.get(PHONE_COLUMN) or "").strip()
    if not raw_number:
        return Rejected(row_number, "blank_number", "phone_number is blank", raw_number)
    number = to_e164(raw_number)
    if number is None:
        return Rejected(row_number, "invalid_number", "not a valid E.164 number", raw_number)
    variables: dict[str, Any] = dict(rules.request_data)
    for column, value in values.items():
        if column.startswith(REQUEST_DATA_PREFIX):
            variables[column.removeprefix(REQUEST_DATA_PREFIX)] = value
        elif column in mapped:
            variables[mapped[column]] = value
        elif column not in variables or value not in (None, ""):
            variables[column] = value
    template = str(values.get(MESSAGE_COLUMN) or rules.agent_message or "")
    if not template:
        return Rejected(row_number, "missing_message", "no agent_message for this row", None)
    body, missing = render(template, variables)
    if missing is not None:
        return Rejected(row_number, "missing_variable", f"no value for {{{{{missing}}}}}", None)
    skip = None
    if rules.exclude_duplicates and number in seen:
        skip = "duplicate"
    elif number in rules.opted_out:
        skip = "opted_out"
    seen.add(number)
    return Recipient(row_number, number, body, skip)
