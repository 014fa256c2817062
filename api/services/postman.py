"""The Postman dialect: a campaign's CSV checked whole, then turned into a file of Herald's
own (each row's number, its language's template and its parameters) and started as a batch
on the same pipeline. The engine renders the templates, as it does any batch's. The batch's
messages are its ledger's rows, and its retry is the batch's retry of its failed rows."""

import csv
import dataclasses
import functools
import io
import ipaddress
import itertools
import math
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import asyncpg
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from activities.recipients.phones import POSSIBLE, possible_e164s, valid_e164s
from activities.recipients.quoting import record_end, records_alike
from activities.recipients.rows import (
    MESSAGE_COLUMN,
    PHONE_COLUMN,
    REQUEST_DATA_PREFIX,
    RecipientRules,
    Tally,
)
from api.errors import HeraldError

if TYPE_CHECKING:
    # polars is imported where an upload is converted, not with the API (its memory).
    from activities.recipients.frames import pl
from api.limits import RateLimited, spend_key_rate
from api.models import BatchRequest
from api.postman_models import (
    LatestStatus,
    PostmanBatchAccepted,
    PostmanMessage,
    PostmanMessagePage,
    PostmanPageData,
)
from api.services import batches
from api.services.batches import (
    CampaignNotFound,
    TooManyRecipients,
    start_batch,
    validation_limits,
)
from api.services.campaigns import LANGUAGE, RECIPIENT, get_campaign
from settings import Settings
from store import buckets, files, messages, opt_outs
from store.accounts import KeyGrant
from workflows.contracts import ValidationOptions
from workflows.statuses import LedgerStatus

DIGITS = re.compile(r"[0-9]+")
# What a cell cannot hold: PostgreSQL stores no NUL (a CSV decoded as UTF-8 holds no lone
# surrogate), so such a cell is a row in error, not a batch whose load fails.
NUL = "\x00"
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
# skipped (opted out), cancelled or expired stay as they are.
RETRIED_STATUSES = [LedgerStatus.FAILED.value]
# Postman's limit: a message is retried at most this many times (then it has been sent once
# more than that, by the ledger's `attempts`).
RETRIES_PER_MESSAGE = 3


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
    """The file as the ledger's rows, validated (`columns.write_ledger`): a temporary file
    at its start."""

    content: BinaryIO
    size: int
    # The batch's own message: the template of the first row's language, whose rows leave
    # their `agent_message` blank (the engine renders one template for them all).
    message: str
    # The rows' counts, as the engine's validation gives them.
    tally: Tally


def convert(
    upload: BinaryIO, templates: dict[str, str], parameters: list[str], rules: RecipientRules
) -> Converted:
    """Check every row of the dialect's CSV by the batch engine's rules and write the ledger's
    rows for it, one pass; on HeaderMismatch, InvalidRows, TooManyRecipients or NotText
    nothing is kept. `rules` are the batch's (its number check, limits, duplicates kept and
    the account's opt-outs); their message is set here, to the first row's language's.

    Each row becomes a row of Herald's columns (`phone_number` with `+`, its language's
    template as its `agent_message`, its parameters as `request_data.<name>`) and goes
    through the engine's column validation (`columns.frame_blocks`: the number check, the
    template rendered, the message's length, encoding and segments, opt-outs skipped), which
    gives the ledger's rows; a row it would reject fails the file, as a row of the dialect's
    own errors does (an empty parameter, a language the campaign has not).

    A file with no row in error whose quoting the csv module and polars read alike
    (`records_alike`: quotes only around whole cells, Excel's cells with commas and line
    breaks, LF or CRLF line ends) is read by columns, a block of records at a time; at
    anything else the block path gives up and the row path, which names every problem,
    takes the whole file from its start. tests/test_postman_quoting.py holds both paths to
    the same answer on well-formed and malformed quoting alike."""
    rules = dataclasses.replace(rules, agent_message=templates[_main_language(upload, templates)])
    out = cast(BinaryIO, tempfile.TemporaryFile())
    try:
        run = _Pass(templates, parameters, rules, out)
        try:
            _convert_columns(upload, run)
        except _NotPlain:
            upload.seek(0)
            out.seek(0)
            out.truncate()
            run = _Pass(templates, parameters, rules, out)
            _convert(upload, run)
    except BaseException:
        out.close()
        raise
    out.flush()
    size = out.tell()
    out.seek(0)
    return Converted(content=out, size=size, message=rules.agent_message or "", tally=run.tally)


@dataclass
class _Pass:
    """A pass of `convert` over the file, by either path: the campaign's templates and
    parameters, the batch's rules (its message set), the file the ledger's rows go to, and
    the rows' counts so far."""

    templates: dict[str, str]
    parameters: list[str]
    rules: RecipientRules
    out: IO[bytes]
    tally: Tally = field(default_factory=Tally)


def _main_language(upload: BinaryIO, templates: dict[str, str]) -> str:
    """The first row's language, when it is one of the campaign's (else its first): its
    rows are rendered from the batch's own message, the rest each from their own."""
    head = upload.read(PLAIN_BLOCK_BYTES)
    upload.seek(0)
    try:
        records = csv.reader(io.StringIO(head.decode("utf-8-sig", errors="replace"), newline=""))
        next(records, None)
        first = next(records, [])
    except csv.Error:
        first = []
    return first[1] if first[1:2] and first[1] in templates else next(iter(templates))


class _NotPlain(Exception):
    """The file, or a row of it, is not one the column path settles: the row path decides."""


# Bytes read for a block of records, so memory stays flat whatever the file's size: 1 MiB,
# as the engine's own blocks (`columns.BLOCK_BYTES`), since it validates two at once.
PLAIN_BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


def _engine_header(parameters: list[str]) -> list[str]:
    """The columns of Herald's recipient file a row becomes, as the engine reads them."""
    return [PHONE_COLUMN, MESSAGE_COLUMN, *(REQUEST_DATA_PREFIX + name for name in parameters)]


def _ledger(
    reads: Iterator[Callable[[], "pl.DataFrame"]], header: list[str], run: _Pass
) -> list[RowProblem]:
    """The engine's validation of Herald's rows of each read, its ledger written to `out`
    while no row is rejected; the rejected rows as problems."""
    from activities.recipients.columns import LANGUAGE_COLUMN, frame_blocks, write_ledger
    from activities.recipients.frames import pl

    carried = [pl.col(name) for name in (LANGUAGE_COLUMN, *header[2:])]
    problems: list[RowProblem] = []
    for block in frame_blocks(reads, header, run.rules, run.tally, carried):
        problems += (RowProblem(row.row_number, None, row.reason) for row in block.rejected)
        if not problems:
            write_ledger(block, run.out)
    return problems


def _convert_columns(upload: BinaryIO, run: _Pass) -> None:
    """`_convert` by columns for a file in which every row is right and whose quoting
    `records_alike` takes; _NotPlain as soon as that is not so."""
    data = upload.read(PLAIN_BLOCK_BYTES).removeprefix(_BOM)
    end = data.find(b"\n")
    header_line = data[: end + 1]
    names = header_line.removesuffix(b"\n").removesuffix(b"\r")
    if end < 0 or not names or records_alike(names) != 1:
        raise _NotPlain
    try:
        header = _checked_header(next(csv.reader([names.decode()])), run.parameters)
    except (UnicodeDecodeError, csv.Error) as error:
        # Not UTF-8, or a name over the csv module's cell limit: the row path says which.
        raise _NotPlain from error
    engine = _engine_header(header[2:])
    own = _own_messages(run.templates, run.rules)
    max_rows = run.rules.max_rows

    def reads(rest: bytes) -> Iterator[Callable[[], "pl.DataFrame"]]:
        first_row = 1
        while True:
            more = upload.read(PLAIN_BLOCK_BYTES)
            data = rest + more
            cut = record_end(data) if more else len(data)
            if more and not cut:
                # No record ends yet: read on, up to a few blocks (a quoted cell of
                # megabytes, or a quote never closed, is the row path's).
                if len(data) > 4 * PLAIN_BLOCK_BYTES:
                    raise _NotPlain
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            if block:
                records = records_alike(block)
                if records is None:
                    raise _NotPlain
                if first_row - 1 + records > max_rows:
                    raise _too_many(max_rows)
                yield functools.partial(
                    _plain_block, header_line, block, records, header, own, first_row
                )
                first_row += records
            if not more:
                if first_row == 1:
                    raise _NotPlain
                return

    if _ledger(reads(data[end + 1 :]), engine, run):
        raise _NotPlain


def _own_messages(templates: dict[str, str], rules: RecipientRules) -> dict[str, str]:
    """Each language's `agent_message` cell: blank for the batch's own message's."""
    return {
        language: "" if template == rules.agent_message else template
        for language, template in templates.items()
    }


def _too_many(max_rows: int) -> TooManyRecipients:
    return TooManyRecipients(f"more than {max_rows} rows; a batch holds at most that")


def _plain_block(
    header_line: bytes,
    block: bytes,
    records: int,
    header: list[str],
    own: dict[str, str],
    first_row: int,
) -> "pl.DataFrame":
    """The block's rows in Herald's columns, once each is known right by the dialect's own
    rules: _NotPlain otherwise."""
    from activities.recipients.frames import pl

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
        pl.col(LANGUAGE).is_in(list(own)).all(),
        *((pl.col(name).str.strip_chars() != "").all() for name in header[2:]),
        *(~pl.col(name).str.contains(NUL, literal=True).any() for name in header[2:]),
        pl.max_horizontal(pl.all().str.len_bytes().max()) <= csv.field_size_limit(),
    ]
    right = frame.select(check.alias(str(index)) for index, check in enumerate(checks)).row(0)
    if not all(right):
        raise _NotPlain
    return _herald_rows(frame, header, own, first_row)


def _herald_rows(
    frame: "pl.DataFrame", header: list[str], own: dict[str, str], rows: int | list[int]
) -> "pl.DataFrame":
    """The dialect's rows in Herald's columns, numbered (`columns.numbered`), with their
    language beside them."""
    from activities.recipients.columns import numbered
    from activities.recipients.frames import pl

    herald = frame.select(
        ("+" + pl.col(RECIPIENT)).alias(PHONE_COLUMN),
        pl.col(LANGUAGE).replace_strict(own, return_dtype=pl.String).alias(MESSAGE_COLUMN),
        *(pl.col(name).alias(REQUEST_DATA_PREFIX + name) for name in header[2:]),
        pl.col(LANGUAGE),
    )
    return numbered(herald, rows)


def _convert(upload: BinaryIO, run: _Pass) -> None:
    text = io.TextIOWrapper(upload, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text)
        header = next(reader, None)
        header = _checked_header(header, run.parameters)
        check = _Check(header, _own_messages(run.templates, run.rules))
        reads = check.reads(reader, run.rules.max_rows)
        engine_problems = _ledger(reads, _engine_header(header[2:]), run)
    except (UnicodeDecodeError, csv.Error) as error:
        raise NotText(f"the file is not CSV text in UTF-8 ({error})") from error
    finally:
        # The upload stays open for its owner, the request.
        text.detach()
    if check.rows == 0:
        raise InvalidRows([RowProblem(0, None, "the file has no rows")], 1)
    if check.rows_in_error or engine_problems:
        problems = sorted(check.problems + engine_problems, key=lambda problem: problem.row)
        in_error = check.rows_in_error + len({problem.row for problem in engine_problems})
        raise InvalidRows(problems[:LISTED_ROWS], in_error)


@dataclass
class _Check:
    """The rows checked so far by the dialect's own rules: the problems listed and the rows
    in error; the rows that pass go on to the engine."""

    header: list[str]
    # Each language's `agent_message` cell.
    own: dict[str, str]
    problems: list[RowProblem] = field(default_factory=list)
    rows_in_error: int = 0
    rows: int = 0

    def reads(
        self, reader: Iterator[list[str]], max_rows: int
    ) -> Iterator[Callable[[], "pl.DataFrame"]]:
        """The rows that pass, `CHECK_ROWS` at a time, each block as Herald's rows."""
        block: list[list[str]] = []
        for record in reader:
            # An empty line, or a line of blank cells alone (Excel's `,,,` for cleared rows):
            # no row, as Herald's own upload skips one.
            if not "".join(record).strip():
                continue
            self.rows += 1
            if self.rows > max_rows:
                raise _too_many(max_rows)
            block.append(record)
            if len(block) == CHECK_ROWS:
                yield self.block(self.rows - len(block) + 1, block)
                block = []
        yield self.block(self.rows - len(block) + 1, block)

    def block(self, first_row: int, records: list[list[str]]) -> Callable[[], "pl.DataFrame"]:
        """The block's rows that pass the dialect's rules (the number is the engine's), as
        Herald's rows; the others' problems counted."""
        from activities.recipients.frames import pl

        possible = _possible_numbers([record[0] for record in records])
        cells = len(self.header)
        # Most blocks hold no NUL: told so at once, not row by row.
        nul = NUL in "".join(itertools.chain.from_iterable(records))
        good: list[list[str]] = []
        rows: list[int] = []
        for row, (record, number_ok) in enumerate(zip(records, possible, strict=True), first_row):
            # Most rows are right: told so without building their problems.
            if (
                number_ok
                and len(record) == cells
                and record[1] in self.own
                and all(map(str.strip, record[2:]))
                and not (nul and NUL in "".join(record))
            ):
                good.append(record)
                rows.append(row)
                continue
            found = _row_problems(row, record, self.header, self.own, number_ok)
            self.rows_in_error += 1
            self.problems.extend(found[: max(0, LISTED_ROWS - len(self.problems))])
        frame = pl.DataFrame(good, schema=dict.fromkeys(self.header, pl.String), orient="row")
        herald = _herald_rows(frame, self.header, self.own, rows)
        return lambda: herald


def _possible_numbers(recipients: list[str]) -> list[bool]:
    """Whether each is digits that make a possible number with its country code (the batch
    engine's check, `possible_e164s`), so that the row path names the cell."""
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
    if len(set(header)) != len(header):
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
    for name, value in zip(header[2:], record[2:], strict=True):
        if not value.strip():
            problems.append(RowProblem(row, name, f"{name} is empty"))
        elif NUL in value:
            problems.append(
                RowProblem(row, name, f"{name} holds a NUL character, which cannot be stored")
            )
    return problems


async def _blocks(content: IO[bytes]) -> AsyncIterator[bytes]:
    while block := content.read(READ_BLOCK):
        yield block


async def campaign(
    pool: asyncpg.Pool,
    settings: Settings,
    grant: KeyGrant,
    campaign_id: str,
    client_ip: str | None,
) -> dict:
    """The key's account's campaign of this id, once the caller's address is one it allows
    and a request of its rate is spent; CampaignNotFound if the account has none,
    IpNotAllowed if the address is not on its allow-list, RateLimited if its rate is used
    up. A request refused so spends the key's rate instead (as any other route's): it cannot
    use up the rate of the campaign's own clients, nor go unlimited."""
    try:
        found = await get_campaign(pool, grant.account_id, campaign_id)
        _require_allowed(found["allowed_ips"], client_ip)
    except (CampaignNotFound, IpNotAllowed):
        await spend_key_rate(pool, settings, grant.key_id)
        raise
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
            # A page read back to before the first row has no cursor to go on from.
            has_next_page=bool(rows) if backwards else more,
            # `after=-1` reads from the first row (seqs count from 0).
            has_previous_page=more if backwards else after is not None and after >= 0,
        ),
    )


def _message(row: dict, campaign: dict, batch: dict) -> PostmanMessage:
    return PostmanMessage(
        id=f"{batch['id']}:{row['seq']}",
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        recipient=row["to_number"].removeprefix("+"),
        # A Postman upload's rows (they have a language); a batch made with Herald's own API
        # keeps its rows' request data there too, which are no template's parameters.
        values=row["request_data"] if row["language"] is not None else None,
        language=row["language"],
        full_message=row["body"],
        latest_status=LATEST_STATUS[row["status"]],
        num_attempts=row["attempts"],
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
    """Send the finished batch's failed rows again, as Herald's retry does, those retried
    fewer than `RETRIES_PER_MESSAGE` times; the dialect's errors for a batch that is missing
    or still running, and for one with no failed row left to retry."""
    try:
        await _campaign_batch(pool, account_id, campaign, batch_id)
        await batches.retry_batch(
            pool,
            temporal,
            settings,
            account_id,
            batch_id,
            RETRIED_STATUSES,
            attempts_below=1 + RETRIES_PER_MESSAGE,
        )
    except (batches.BatchNotFound, batches.BatchNotFinished, batches.BatchExpired) as error:
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
    """Validate the whole file by the batch engine's rules, store the ledger's rows it gives
    and start the batch, whose workflow loads them (`load_validated`): the engine runs once,
    here, before the answer, and every row it would reject fails the upload.

    The answer waits for that pass and the stored file, never for the ledger: at a million
    rows the ledger's COPY takes tens of seconds on this hardware, against the dialect's
    5 s answer."""
    request: dict[str, Any] = {
        "global": {"agent_number": campaign["sender"]},
        "name": campaign["name"],
        # As the upload's own check: the right length for the country code; the carrier
        # decides the rest (Postman's documented numbers are in unassigned ranges).
        "number_check": POSSIBLE,
        # No pause for the carrier's refusals: the dialect can neither resume nor cancel a
        # batch, and its client retries the failed messages of one that ended.
        "auto_pause_error_rate": None,
        # Every row is a message ("if your CSV has 20 rows, one API call sends 20 messages"):
        # two rows to one number are two notices, each with its own values.
        "exclude_duplicates": False,
    }
    # Before the file is checked (seconds for a big one): a sender the account gave up since
    # the campaign was saved refuses the upload however right its rows are.
    await batches.own_sender(pool, account_id, campaign["sender"], channel="sms")
    opted_out: set[str] = set()
    if ValidationOptions.from_request(request).exclude_opt_outs:
        opted_out = await opt_outs.opted_out_numbers(pool, account_id)
    rules = RecipientRules.from_request(request, validation_limits(settings), opted_out)
    converted = await run_in_threadpool(
        convert, upload, campaign["templates"], list(campaign["parameters"]), rules
    )
    with converted.content:
        stored = await files.insert_file(
            pool,
            account_id,
            filename=f"campaign-{campaign['id']}.ledger",
            content_type=files.LEDGER_FILE_TYPE,
            size_bytes=converted.size,
            content=_blocks(converted.content),
        )
    request["file_id"] = str(stored["id"])
    request["global"]["agent_message"] = converted.message
    try:
        started = await start_batch(
            pool,
            temporal,
            settings,
            account_id,
            BatchRequest.model_validate(request),
            campaign_id=campaign["id"],
            load_validated=True,
        )
    except Exception:
        # Refused before its batch was recorded (one that was keeps its file for a retry):
        # no one can name this file again, so nothing else would ever delete it.
        await files.delete_unused_file(pool, account_id, stored["id"])
        raise
    return PostmanBatchAccepted(batch_id=started.batch_id)
