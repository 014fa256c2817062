"""The Postman dialect: a campaign's CSV checked whole, then turned into a file of Herald's
own (each row's number, its language's template and its parameters) and started as a batch
on the same pipeline. The engine renders the templates, as it does any batch's. The batch's
messages are its ledger's rows, and its retry is the batch's retry of its failed rows."""

import csv
import io
import ipaddress
import math
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TextIO, cast

import asyncpg
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from activities.recipients.phones import possible_e164s, valid_e164s
from activities.recipients.quoting import record_end, records_alike
from activities.recipients.rows import (
    MESSAGE_COLUMN,
    PHONE_COLUMN,
    REQUEST_DATA_PREFIX,
)
from api.errors import HeraldError

if TYPE_CHECKING:
    # polars is imported where an upload is converted, not with the API (its memory).
    from activities.recipients.frames import pl
from api.limits import RateLimited
from api.models import BatchRequest
from api.postman_models import (
    LatestStatus,
    PostmanBatchAccepted,
    PostmanMessage,
    PostmanMessagePage,
    PostmanPageData,
)
from api.services import batches
from api.services.batches import TooManyRecipients, start_batch
from api.services.campaigns import get_campaign
from settings import Settings
from store import buckets, files, messages
from workflows.statuses import LedgerStatus

RECIPIENT = "recipient"
LANGUAGE = "language"
DIGITS = re.compile(r"[0-9]+")
# Rows a refused file's reply names; the message counts them all.
LISTED_ROWS = 100
READ_BLOCK = 1024 * 1024
# Rows whose numbers are checked in one pass.
CHECK_ROWS = 10_000
# The dialect's words for a header that does not match the campaign.
HEADER_MISMATCH = "Validation failed (expected type is object)"


# Each ledger status as the dialect's `latestStatus`: an `uncertain` row may have reached the
# carrier, whose answer never came back, as Postman's `sent`.
LATEST_STATUS: dict[str, LatestStatus] = {
    LedgerStatus.PENDING: "enqueued",
    LedgerStatus.SENDING: "sending",
    LedgerStatus.SENT: "sent",
    LedgerStatus.UNCERTAIN: "sent",
    LedgerStatus.DELIVERED: "success",
    LedgerStatus.UNDELIVERED: "failure",
    LedgerStatus.FAILED: "failure",
    LedgerStatus.SKIPPED: "failure",
    LedgerStatus.CANCELLED: "failure",
    LedgerStatus.EXPIRED: "failure",
}
# The rows the dialect's retry sends again: those the carrier refused or that errored. Rows
# skipped (duplicates, opted out), cancelled or expired stay as they are.
RETRIED_STATUSES = [LedgerStatus.FAILED.value]


class IpNotAllowed(HeraldError):
    status_code = 401
    code = "IP_NOT_ALLOWED"


class BatchNotRetryable(HeraldError):
    code = "BATCH_NOT_RETRYABLE"


class NoFailedMessages(HeraldError):
    code = "NO_FAILED_MESSAGES"


class HeaderMismatch(HeraldError):
    code = "INVALID_HEADER"

    def __init__(self, reason: str) -> None:
        super().__init__(HEADER_MISMATCH)
        self.reason = reason

    def problems(self) -> list[dict[str, Any]]:
        return [*super().problems(), {"error": self.code, "message": self.reason}]


@dataclass(frozen=True)
class RowProblem:
    row: int
    column: str | None
    reason: str


class InvalidRows(HeraldError):
    """Rows in error: the whole file is refused, and each row is named with its reason."""

    code = "INVALID_ROWS"

    def __init__(self, problems: list[RowProblem], rows_in_error: int) -> None:
        super().__init__(
            f"{rows_in_error} row(s) in error; nothing was sent. Fix them all and upload the"
            " file again"
        )
        self.rows = problems

    def problems(self) -> list[dict[str, Any]]:
        return [
            *super().problems(),
            *(
                {"error": self.code, "message": p.reason, "row": p.row, "column": p.column}
                for p in self.rows
            ),
        ]


class NotText(HeraldError):
    code = "INVALID_FILE"


@dataclass
class Converted:
    """The file in Herald's columns: a temporary text file, its bytes read from its
    `buffer`, which is at their start."""

    content: TextIO
    size: int
    # The batch's own message: the template of the first row's language, whose rows leave
    # their `agent_message` cell blank (the engine renders one template for them all).
    message: str


def convert(
    upload: BinaryIO, templates: dict[str, str], parameters: list[str], max_rows: int
) -> Converted:
    """Check every row of the dialect's CSV and write Herald's file for it, one pass; on
    HeaderMismatch, InvalidRows, TooManyRecipients or NotText nothing is kept. Rows after
    the first in error are only checked.

    A file with no row in error whose quoting the csv module and polars read alike
    (`records_alike`: quotes only around whole cells, Excel's cells with commas and line
    breaks, LF or CRLF line ends) is checked by columns, a block of records at a time; at
    anything else the block path gives up and the row path, which names every problem,
    takes the whole file from its start. tests/test_postman_quoting.py holds both paths to
    the same answer on well-formed and malformed quoting alike."""
    out = cast(TextIO, tempfile.TemporaryFile(mode="w+", encoding="utf-8", newline=""))
    try:
        try:
            message = _convert_columns(upload, out, templates, parameters, max_rows)
        except _NotPlain:
            upload.seek(0)
            out.seek(0)
            out.truncate()
            message = _convert(upload, out, templates, parameters, max_rows)
    except BaseException:
        out.close()
        raise
    out.flush()
    size = out.buffer.tell()
    out.buffer.seek(0)
    return Converted(content=out, size=size, message=message)


class _NotPlain(Exception):
    """The file, or a row of it, is not one the column path settles: the row path decides."""


# Bytes read for a block of records, so memory stays flat whatever the file's size.
PLAIN_BLOCK_BYTES = 4 << 20
_BOM = b"\xef\xbb\xbf"


def _convert_columns(
    upload: BinaryIO, out: IO[str], templates: dict[str, str], parameters: list[str], max_rows: int
) -> str:
    """`_convert` by columns for a file in which every row is right and whose quoting
    `records_alike` takes; _NotPlain as soon as that is not so."""
    data = upload.read(PLAIN_BLOCK_BYTES).removeprefix(_BOM)
    end = data.find(b"\n")
    header_line = data[: end + 1]
    names = header_line.removesuffix(b"\n").removesuffix(b"\r")
    if end < 0 or not names or records_alike(names) != 1:
        raise _NotPlain
    try:
        header = _checked_header(next(csv.reader([names.decode()])), parameters)
    except UnicodeDecodeError as error:
        raise _NotPlain from error
    # Lines end as polars ends them.
    csv.writer(out, lineterminator="\n").writerow(
        [PHONE_COLUMN, MESSAGE_COLUMN, *(REQUEST_DATA_PREFIX + name for name in header[2:])]
    )
    rest, rows = data[end + 1 :], 0
    main_language: str | None = None
    while True:
        more = upload.read(PLAIN_BLOCK_BYTES)
        data = rest + more
        cut = record_end(data) if more else len(data)
        if more and not cut:
            # No record ends yet: read on, up to a few blocks (a quoted cell of megabytes,
            # or a quote never closed, is the row path's).
            if len(data) > 4 * PLAIN_BLOCK_BYTES:
                raise _NotPlain
            rest = data
            continue
        block, rest = data[:cut], data[cut:]
        if block:
            frame = _plain_block(header_line, block, header, templates)
            rows += frame.height
            if rows > max_rows:
                raise TooManyRecipients(f"more than {max_rows} rows; a batch holds at most that")
            main_language = main_language or str(frame[LANGUAGE][0])
            out.write(_herald_rows(frame, header, templates, main_language))
        if not more:
            break
    if main_language is None:
        raise _NotPlain
    return templates[main_language]


def _plain_block(
    header_line: bytes, block: bytes, header: list[str], templates: dict[str, str]
) -> "pl.DataFrame":
    """The block's rows, once each is known right: _NotPlain otherwise."""
    from activities.recipients.frames import pl
    from activities.recipients.phone_columns import possible_e164_column, valid_e164_column

    records = records_alike(block)
    if records is None:
        raise _NotPlain
    try:
        frame = pl.read_csv(
            header_line + block, has_header=True, infer_schema=False, quote_char='"'
        )
    except pl.exceptions.PolarsError as error:
        raise _NotPlain from error
    # An empty cell is null; a short row's missing cells too.
    if frame.width != len(header) or frame.height != records or sum(frame.null_count().row(0)):
        raise _NotPlain
    frame.columns = header
    checks = [
        pl.col(RECIPIENT).str.contains(r"^[0-9]+$").all(),
        pl.col(LANGUAGE).is_in(list(templates)).all(),
        *((pl.col(name).str.strip_chars() != "").all() for name in header[2:]),
        pl.max_horizontal(pl.all().str.len_bytes().max()) <= csv.field_size_limit(),
    ]
    right = frame.select(check.alias(str(index)) for index, check in enumerate(checks)).row(0)
    if not all(right):
        raise _NotPlain
    raws = "+" + frame[RECIPIENT]
    if possible_e164_column(raws, valid_e164_column(raws)).null_count():
        raise _NotPlain
    return frame


def _herald_rows(
    frame: "pl.DataFrame", header: list[str], templates: dict[str, str], main_language: str
) -> str:
    from activities.recipients.frames import pl

    # Null, not "": written without quotes, so a file of one language is plain CSV, which
    # the batch's validation reads by columns.
    messages = {
        language: None if language == main_language else template
        for language, template in templates.items()
    }
    return frame.select(
        ("+" + pl.col(RECIPIENT)).alias(PHONE_COLUMN),
        pl.col(LANGUAGE).replace_strict(messages, return_dtype=pl.String).alias(MESSAGE_COLUMN),
        *(pl.col(name).alias(REQUEST_DATA_PREFIX + name) for name in header[2:]),
    ).write_csv(include_header=False)


def _convert(
    upload: BinaryIO, out: IO[str], templates: dict[str, str], parameters: list[str], max_rows: int
) -> str:
    text = io.TextIOWrapper(upload, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text)
        header = next(reader, None)
        header = _checked_header(header, parameters)
        writer = csv.writer(out)
        writer.writerow(
            [PHONE_COLUMN, MESSAGE_COLUMN, *(REQUEST_DATA_PREFIX + name for name in header[2:])]
        )
        check = _Check(header, templates, writer)
        block: list[list[str]] = []
        rows = 0
        for record in reader:
            if not record:
                continue
            rows += 1
            if rows > max_rows:
                raise TooManyRecipients(f"more than {max_rows} rows; a batch holds at most that")
            block.append(record)
            if len(block) == CHECK_ROWS:
                check.block(rows - len(block) + 1, block)
                block = []
        check.block(rows - len(block) + 1, block)
    except (UnicodeDecodeError, csv.Error) as error:
        raise NotText(f"the file is not CSV text in UTF-8 ({error})") from error
    finally:
        # The upload stays open for its owner, the request.
        text.detach()
    if rows == 0:
        raise InvalidRows([RowProblem(0, None, "the file has no rows")], 1)
    if check.rows_in_error:
        raise InvalidRows(check.problems, check.rows_in_error)
    return templates[check.main_language or next(iter(templates))]


@dataclass
class _Check:
    """The rows checked so far: the problems listed, the rows in error, and, until the
    first row in error, Herald's rows written."""

    header: list[str]
    templates: dict[str, str]
    writer: Any
    problems: list[RowProblem] = field(default_factory=list)
    rows_in_error: int = 0
    main_language: str | None = None

    def block(self, first_row: int, records: list[list[str]]) -> None:
        """Check rows `first_row`... at once: their numbers in one pass of the batch
        engine's number check (`valid_e164s`, then `possible_e164s`), the rest row by row."""
        possible = _possible_numbers([record[0] for record in records])
        cells = len(self.header)
        if self.main_language is None and records:
            first = records[0]
            # (A first row of one cell has no language: found in error below.)
            self.main_language = first[1] if first[1:2] and first[1] in self.templates else None
        templates = {
            language: "" if language == self.main_language else template
            for language, template in self.templates.items()
        }
        good = []
        for row, (record, number_ok) in enumerate(zip(records, possible, strict=True), first_row):
            # Most rows are right: told so without building their problems.
            if (
                number_ok
                and len(record) == cells
                and record[1] in templates
                and all(map(str.strip, record[2:]))
            ):
                if not self.rows_in_error:
                    good.append(["+" + record[0], templates[record[1]], *record[2:]])
                continue
            found = _row_problems(row, record, self.header, templates, number_ok)
            self.rows_in_error += 1
            self.problems.extend(found[: max(0, LISTED_ROWS - len(self.problems))])
        self.writer.writerows(good)


def _possible_numbers(recipients: list[str]) -> list[bool]:
    """Whether each is digits that make a possible number with its country code."""
    digits = [index for index, value in enumerate(recipients) if DIGITS.fullmatch(value)]
    candidates = ["+" + recipients[index] for index in digits]
    found = possible_e164s(candidates, valid_e164s(candidates))
    possible = [False] * len(recipients)
    for index, number in zip(digits, found, strict=True):
        possible[index] = number is not None
    return possible


def _checked_header(header: list[str] | None, parameters: list[str]) -> list[str]:
    if not header or header[:2] != [RECIPIENT, LANGUAGE]:
        raise HeaderMismatch(f"the first columns must be {RECIPIENT!r} and {LANGUAGE!r}")
    given = header[2:]
    if len(set(given)) != len(given):
        raise HeaderMismatch("a column is named twice")
    if set(given) != set(parameters):
        missing = sorted(set(parameters) - set(given))
        extra = sorted(set(given) - set(parameters))
        raise HeaderMismatch(
            f"the columns after {LANGUAGE!r} must be the template's parameters"
            f" {parameters}; missing {missing}, not parameters {extra}"
        )
    return header


def _row_problems(
    row: int, record: list[str], header: list[str], templates: dict[str, str], number_ok: bool
) -> list[RowProblem]:
    if len(record) != len(header):
        return [RowProblem(row, None, f"{len(record)} cells where the header has {len(header)}")]
    problems = []
    recipient, language = record[0], record[1]
    if not number_ok:
        problems.append(
            RowProblem(
                row,
                RECIPIENT,
                f"{recipient!r} is not a phone number with its country code, digits only without +",
            )
        )
    if language not in templates:
        problems.append(
            RowProblem(
                row,
                LANGUAGE,
                f"{language!r} is not a language of this campaign ({', '.join(templates)})",
            )
        )
    problems.extend(
        RowProblem(row, name, f"{name} is empty")
        for name, value in zip(header[2:], record[2:], strict=True)
        if not value.strip()
    )
    return problems


async def _blocks(content: IO[bytes]) -> AsyncIterator[bytes]:
    while block := content.read(READ_BLOCK):
        yield block


async def campaign(
    pool: asyncpg.Pool,
    settings: Settings,
    account_id: uuid.UUID,
    campaign_id: str,
    client_ip: str | None,
) -> dict:
    """The account's campaign of this id, once the caller's address is one it allows and a
    request of its rate is spent; CampaignNotFound if the account has none, IpNotAllowed if
    the address is not on its allow-list, RateLimited if its rate is used up. A refused
    address spends nothing: it cannot use up the rate of the campaign's own clients."""
    found = await get_campaign(pool, account_id, campaign_id)
    _require_allowed(found["allowed_ips"], client_ip)
    rate = settings.campaign_rate_limit_per_second
    wait = await buckets.take(pool, "campaigns", found["id"], per_second=rate, burst=max(1.0, rate))
    if wait is not None:
        raise RateLimited(
            f"more than {rate:g} requests a second for this campaign; retry later",
            headers={"retry-after": str(math.ceil(wait))},
        )
    return found


def _require_allowed(
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None, client_ip: str | None
) -> None:
    if networks is None:
        return
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        address = None
    if address is None or not any(address in network for network in networks):
        raise IpNotAllowed(f"this campaign's requests may not come from {client_ip}")


async def _campaign_batch(
    pool: asyncpg.Pool, account_id: uuid.UUID, campaign: dict, batch_id: str
) -> dict:
    """The campaign's batch of this id; BatchNotFound for any other."""
    batch = await batches.batch_or_404(pool, account_id, batch_id)
    if batch["campaign_id"] != campaign["id"]:
        raise batches.BatchNotFound(f"no batch {batch_id!r} in this campaign")
    return batch


async def list_batch_messages(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    campaign: dict,
    batch_id: str,
    *,
    limit: int,
    after: int | None,
    before: int | None,
    search: str | None,
) -> PostmanMessagePage:
    """A page of the batch's ledger in `seq` order: the first rows after the cursor `after`,
    or the last before `before`; with `search`, only numbers holding it."""
    batch = await _campaign_batch(pool, account_id, campaign, batch_id)
    rows = await messages.list_messages(
        pool,
        account_id,
        batch["id"],
        status=None,
        limit=limit + 1,
        after_seq=-1 if after is None else after,
        before_seq=before,
        search=search or None,
    )
    more = len(rows) > limit
    backwards = before is not None
    rows = rows[1:] if backwards and more else rows[:limit]
    return PostmanMessagePage(
        data=[_message(row, campaign, batch) for row in rows],
        page_data=PostmanPageData(
            start_cursor=str(rows[0]["seq"]) if rows else None,
            end_cursor=str(rows[-1]["seq"]) if rows else None,
            has_next_page=backwards or more,
            has_previous_page=more if backwards else after is not None,
        ),
    )


def _message(row: dict, campaign: dict, batch: dict) -> PostmanMessage:
    return PostmanMessage(
        id=f"{batch['id']}:{row['seq']}",
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        recipient=row["to_number"].removeprefix("+"),
        full_message=row["body"],
        latest_status=LATEST_STATUS[row["status"]],
        campaign_id=str(campaign["id"]),
        batch_id=str(batch["id"]),
        herald_status=row["status"],
        error_code=row["error_code"],
        error_message=row["error_message"],
    )


async def retry_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    campaign: dict,
    batch_id: str,
) -> None:
    """Send the finished batch's failed rows again, as Herald's retry does; the dialect's
    errors for a batch that is missing or still running, and for one with no failed rows."""
    try:
        await _campaign_batch(pool, account_id, campaign, batch_id)
        await batches.retry_batch(pool, temporal, settings, account_id, batch_id, RETRIED_STATUSES)
    except (batches.BatchNotFound, batches.BatchNotFinished) as error:
        raise BatchNotRetryable(error.message) from error
    except batches.NothingToRetry as error:
        raise NoFailedMessages(error.message) from error


async def send_batch(
    pool: asyncpg.Pool,
    temporal: Client,
    settings: Settings,
    account_id: uuid.UUID,
    campaign: dict,
    upload: BinaryIO,
) -> PostmanBatchAccepted:
    """Check the whole file, store Herald's file for it and start the batch, whose workflow
    builds the ledger from that file.

    The answer waits for the whole-file check only (`convert`: every row's number, language
    and parameters, numbers by the batch engine's own column check), never for the ledger:
    at a million rows the engine's rendering pass and the ledger's COPY take tens of seconds
    on this hardware, against the dialect's 5 s answer. A file that passes the check has no
    row the engine refuses for its number, language or a missing parameter, so the upload's
    400 and the batch's own outcomes agree; the engine then runs once, in the workflow's
    validation, as for any batch (a row it still refuses, a message too long, is a
    rejected row of the batch, as before)."""
    converted = await run_in_threadpool(
        convert,
        upload,
        campaign["templates"],
        list(campaign["parameters"]),
        settings.max_rows_per_batch,
    )
    with converted.content:
        stored = await files.insert_file(
            pool,
            account_id,
            filename=f"campaign-{campaign['id']}.csv",
            content_type="text/csv",
            size_bytes=converted.size,
            content=_blocks(converted.content.buffer),
        )
    request = BatchRequest.model_validate(
        {
            "file_id": str(stored["id"]),
            "global": {"agent_number": campaign["sender"], "agent_message": converted.message},
            "name": campaign["name"],
            # As the upload's own check: the right length for the country code; the carrier
            # decides the rest (Postman's documented numbers are in unassigned ranges).
            "number_check": "possible",
        }
    )
    started = await start_batch(
        pool, temporal, settings, account_id, request, campaign_id=campaign["id"]
    )
    return PostmanBatchAccepted(batch_id=started.batch_id)
