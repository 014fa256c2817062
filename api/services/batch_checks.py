"""What a batch request can be refused for before it is accepted: what its message comes
from, and what the header and the size of its file show. Rows are still validated by the
batch, as before; these checks read only the file's header and its stored line count (the
whole file only when that count says it may be over the limit)."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from activities.recipients import rejections
from activities.recipients.rejections import Code, SourceInvalid
from activities.recipients.rows import (
    JSON_START,
    MESSAGE_COLUMN,
    RecipientRules,
    Tally,
    batch_message,
    header_issue,
    is_blank_row,
    phone_column_issue,
    read_rows,
    request_defaults,
    strict_failure,
    template_parts,
    variable_sources,
)
from api.errors import HeraldError
from store import files


class MissingAgentMessage(HeraldError):
    code = "MISSING_AGENT_MESSAGE"


class TooManyRecipients(HeraldError):
    code = "TOO_MANY_RECIPIENTS"


class FileRefused(HeraldError):
    """The batch would fail at validation with this file-level code, known from the request:
    its code upper-cased, with its text as `activities/recipients/rejections.py` has it."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code.upper()


@dataclass(frozen=True, kw_only=True)
class FileShape:
    """What a request can cheaply know of its file: its header (None when its first bytes
    do not tell it, e.g. a large JSON file, or a file validation will refuse as unreadable)
    and an upper bound of its rows (None when unknown: a JSON file, or an old upload)."""

    header: list[str] | None
    rows_at_most: int | None = None


def shape_of_content(content: bytes) -> FileShape:
    """The shape of rows given inline, whose number is checked as they are stored."""
    return FileShape(header=_header(content))


async def shape_of_file(pool: asyncpg.Pool, account_id: uuid.UUID, file_id: uuid.UUID) -> FileShape:
    stored = await files.file_head(pool, account_id, file_id)
    head: bytes = stored["head"]
    lines: int | None = stored["line_count"]
    is_json = bool(JSON_START.match(head))
    if stored["size_bytes"] > len(head):
        # A CSV header ends at a line break within the first bytes; a JSON file's keys may
        # be anywhere in it.
        cut = max(head.rfind(b"\n"), head.rfind(b"\r"))
        head = b"" if is_json or cut < 0 else head[: cut + 1]
    header = _header(head) if head else None
    rows_at_most = None if is_json or lines is None else max(lines - 1, 0)
    return FileShape(header=header, rows_at_most=rows_at_most)


def _header(content: bytes) -> list[str] | None:
    try:
        header, _ = read_rows(content)
    except SourceInvalid:
        return None  # validation says why, as it always has
    return header


async def require_file_within_limit(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    file_id: uuid.UUID,
    shape: FileShape,
    max_rows: int,
    *,
    lists_rows: int = 0,
) -> None:
    """Refuse a file of more than `max_rows` rows, less the `lists_rows` contacts of the
    mailing lists the batch names. Its line count bounds its rows: only a file with more
    lines than that is read, and its rows counted, to be sure."""
    room = max_rows - lists_rows
    if shape.rows_at_most is None or shape.rows_at_most <= room:
        return
    _, content = await files.file_content(pool, account_id, file_id)
    if await asyncio.to_thread(count_rows, content, room) > room:
        if lists_rows:
            raise too_many_with_lists(f"the file's more than {room} rows", lists_rows, max_rows)
        raise TooManyRecipients(rejections.TOO_MANY_ROWS.template.format(limit=max_rows))


def too_many_with_lists(rows: str, lists_rows: int, max_rows: int) -> TooManyRecipients:
    return TooManyRecipients(
        f"{rows} and the {lists_rows} contacts of the lists named; a batch holds at most {max_rows}"
    )


def count_rows(content: bytes, at_most: int) -> int:
    """Rows of a file as validation counts them (a row of blank cells is none), counted to
    `at_most + 1` at most; 0 for a file validation will refuse as unreadable."""
    try:
        _, rows = read_rows(content)
        counted = itertools.filterfalse(is_blank_row, rows)
        return sum(1 for _ in itertools.islice(counted, at_most + 1))
    except SourceInvalid:
        return 0


def require_message(request: Mapping[str, Any], header: Sequence[str] | None) -> None:
    """A batch needs a message for its rows: its own, its sender's opening message, a
    WhatsApp content template, or a message column in the file; a batch of mailing lists
    alone (`header` None), a message of each list's own."""
    message = batch_message(request)
    if message and message.strip():
        return
    if header is None:
        lists = request.get("lists") or []
        if all((source.get("agent_message") or "").strip() for source in lists):
            return
        missing = "not every list has an agent_message of its own"
    elif MESSAGE_COLUMN in header:
        return
    else:
        missing = "the file has no agent_message column"
    raise MissingAgentMessage(
        "global.agent_message is required: the sender has no opening message configured"
        f" (PATCH /v1/sms/numbers/{{number}} with opening_message) and {missing}"
    )


def require_phone_column(header: Sequence[str] | None) -> None:
    """Refuse a header without one `phone_number` column."""
    issue = None if header is None else phone_column_issue(header)
    if issue is not None:
        raise FileRefused(issue.code, issue.reason)


def require_usable_header(
    header: Sequence[str] | None, rules: RecipientRules, strict: bool, with_lists: bool
) -> None:
    """Refuse a template variable that no column and no default gives (unless rows carry
    their own message, or mailing lists come with the rows: their contacts' fields are known
    at validation, which then rejects each row without a value), and with `strict` any header
    problem."""
    if header is None:
        return
    unknown = [] if with_lists else list(_unknown_variables(header, rules))
    if unknown:
        names = ", ".join("{{" + name + "}}" for name in unknown)
        refused = rejections.UNKNOWN_VARIABLE.error(variables=names)
        raise FileRefused(refused.code, refused.reason)
    problem = header_issue(header, rules.column_mapping)
    if strict and problem is not None:
        raise FileRefused(Code.VALIDATION_FAILED, strict_failure(problem, Tally()) or "")


def _unknown_variables(header: Sequence[str], rules: RecipientRules) -> Iterator[str]:
    if MESSAGE_COLUMN in header or not rules.agent_message:
        return
    sources = variable_sources(header, rules.column_mapping)
    defaults = request_defaults(rules)
    for name in dict.fromkeys(template_parts(rules.agent_message)[1::2]):
        if not sources.get(name) and not defaults.get(name, "").strip():
            yield name
