"""Validation of a batch's recipient file: read it, apply the recipient rules, COPY the ledger."""

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from tempfile import TemporaryFile
from typing import Any, BinaryIO, TypeVar, cast

import asyncpg
import structlog
from temporalio import activity

from activities import heap
from activities.heartbeats import ValidationHeartbeat, heartbeat_until_cancelled
from activities.outages import outages_uncounted
from activities.recipients.columns import (
    NotPlain,
    PlainCsv,
    in_thread,
    ledger_copies,
    loaded_ledger,
    plain_csv,
    plain_csv_file,
    rejected_record,
)
from activities.recipients.contacts import ListSource, with_lists
from activities.recipients.links import Codes, shorten_recipients
from activities.recipients.rejections import Code, Rejected, SourceInvalid
from activities.recipients.rows import (
    CONTENT_COLUMNS,
    Recipient,
    RecipientRules,
    Tally,
    build_recipients,
    header_issue,
    read_rows,
    row_contents,
    strict_failure,
)
from activities.resources import WorkerResources
from store import batches, files, links, mailing_lists, messages, opt_outs
from workflows.contracts import (
    ValidateInput,
    ValidationLimits,
    ValidationOptions,
    ValidationResult,
)
from workflows.retries import VALIDATE_ATTEMPTS
from workflows.statuses import LedgerStatus

log = structlog.get_logger(__name__)

COPY_BATCH = 10_000
# The file `warm_up` validates: a plain CSV with a row of each kind a real list has (numbers
# without `+` or of another country, numbers not valid or blank, a repeat, names outside
# GSM-7's default alphabet or with its extension characters, a blank row), so that the column
# path's passes for each have run once before the first batch. A process's first 10,000-row
# validation took about 45 ms after the warm-up's earlier 8 plain rows, 13 ms after this.
WARM_UP_FILE = (
    "phone_number,first_name,request_data.code\n"
    "+12015550100,Ann,100001\n"
    "12015550101,Bob,100002\n"
    "+447400123456,Chloé,100003\n"
    "+12015550102,Жанна,100004\n"
    "+12015550103,François,100005\n"
    "+12015550104,[Eve],100006\n"
    "+12015550105,Grace 😀,100007\n"
    "+12015550100,Ann,100008\n"
    "+1201555,Hideo,100009\n"
    ",Ivan,100010\n"
    ",,\n"
).encode()
WARM_UP_REQUEST = {
    "global": {
        "agent_number": "+15005550006",
        "agent_message": "Hello {{first_name}}, your code is {{code}}.",
    }
}

T = TypeVar("T")


class ValidationActivities(WorkerResources):
    """Validates a batch's file into its ledger."""

    @activity.defn
    async def validate_recipients(self, input: ValidateInput) -> ValidationResult:
        """Validate the file into the ledger in one transaction. A cancellation (the batch
        cancelled meanwhile) reaches it within a second or so, whatever the work in hand,
        and rolls the transaction back: the ledger is left empty. While PostgreSQL is
        unreachable the batch waits for it, attempt after attempt; another error ends the
        batch from attempt VALIDATE_ATTEMPTS on (outages_uncounted)."""
        beating = asyncio.create_task(heartbeat_until_cancelled())
        try:
            return await outages_uncounted(
                lambda: self._kept_or(self._validate, input), attempts=VALIDATE_ATTEMPTS
            )
        finally:
            beating.cancel()

    async def _kept_or(
        self,
        build: Callable[[ValidateInput], Awaitable[ValidationResult]],
        input: ValidateInput,
    ) -> ValidationResult:
        """The outcome of the validation (or load) that made the batch's ledger, when one
        did; else `build` makes it. Made again, the ledger would hold every row `pending`
        once more, sent or not, and the batch would send them all twice: a reset of its
        workflow to before its validation (the web UI's Reset) runs this activity again, as
        does a retry of it whose result was lost. The counts are those that validation kept
        with the ledger."""
        batch_id = uuid.UUID(input.batch_id)
        if not await messages.has_ledger(self._pool, batch_id):
            return await build(input)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        skipped = await batches.validated_skipped(self._pool, batch_id)
        if skipped is None:
            # Validated before the count was kept: the ledger's, which may count rows a
            # slice's claim skipped since.
            skipped = (await messages.count_by_status(self._pool, batch_id)).get(
                LedgerStatus.SKIPPED, 0
            )
        log.warning("ledger already made: kept", batch_id=input.batch_id)
        return ValidationResult(
            rows_total=batch["rows_total"],
            recipients=batch["recipients"],
            rejected=batch["rejected"],
            skipped=skipped,
        )

    async def _validate(self, input: ValidateInput) -> ValidationResult:
        steps = _Steps()
        batch_id = uuid.UUID(input.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        account_id = batch["account_id"]
        source: bytes | BinaryIO
        _, source = await files.file_content(self._pool, account_id, batch_id)
        # asyncpg's buffers for the file's bytes are freed now: give their pages back.
        heap.trim()
        steps.mark("read")
        request: dict[str, Any] = batch["request"]
        options = ValidationOptions.from_request(request)
        opted_out: set[str] = set()
        if options.exclude_opt_outs:
            opted_out = await opt_outs.opted_out_numbers(self._pool, account_id)
        rules = RecipientRules.from_request(request, input.limits, opted_out)
        # A row's own sender, by row number (inline rows, then the lists' contacts).
        senders = {int(row): sender for row, sender in (request.get("senders") or {}).items()}
        sources = await self._list_sources(account_id, request.get("lists") or [])
        try:
            # A plain CSV file is validated by columns, a block at a time; any other file,
            # or one that turns out not to be plain, or one with mailing lists to add, row
            # by row (a JSON file is parsed whole). Either way off the event loop. Links are
            # shortened on the row path, where each message is at hand with its seq.
            by_rows = bool(sources) or options.shorten_urls
            plain = None if by_rows else plain_csv(source, rules)
            steps.mark("prepare")
            async with (
                contextlib.AsyncExitStack() as held,
                self._pool.acquire() as conn,
                conn.transaction(),
            ):
                if plain is not None and not any(name in plain.header for name in CONTENT_COLUMNS):
                    spool = await _on_disk(held, source)
                    if spool is not None:
                        source, plain = spool, plain_csv_file(spool, rules)
                        heap.trim()
                await messages.clear_validation(conn, batch_id)
                steps.mark("clear")
                tally = None
                if plain is not None:
                    try:
                        # A savepoint: the blocks before one that is not plain are undone.
                        async with conn.transaction():
                            tally = await _copy_blocks(
                                conn, batch_id, account_id, plain, with_ledger=not options.strict
                            )
                        header = plain.header
                        steps.mark("columns")
                    except NotPlain as error:
                        log.info("file not plain after all", batch_id=str(batch_id), why=str(error))
                if tally is None:
                    content = await _whole(source)
                    if sources:
                        header, rows = await asyncio.to_thread(
                            with_lists, content, sources, senders
                        )
                    else:
                        header, rows = await asyncio.to_thread(read_rows, content)
                    with _stoppable(build_recipients(header, rows, rules)) as outcomes:
                        tally = await self._copy_rows(
                            conn,
                            batch_id,
                            account_id,
                            outcomes,
                            senders,
                            stop_ledger_at_rejection=options.strict,
                            shorten_urls=options.shorten_urls,
                        )
                    steps.mark("rows")
                if any(name in header for name in CONTENT_COLUMNS):
                    await _copy_contents(conn, batch_id, await _whole(source))
                issue = header_issue(header, rules.column_mapping)
                if issue is not None:
                    await messages.copy_rejected(
                        conn, [rejected_record(batch_id, account_id, issue)]
                    )
                failure = strict_failure(issue, tally) if options.strict else None
                if failure is not None:
                    await messages.clear_ledger(conn, batch_id)
                    tally = tally.without_ledger()
                await batches.set_validation_counts(conn, batch_id, **tally.batch_counts())
                steps.mark("counts")
            steps.mark("commit")
            await messages.refresh_statistics(self._pool, tally.recipients)
            steps.mark("statistics")
        except SourceInvalid as error:
            return ValidationResult(
                rows_total=0,
                recipients=0,
                rejected=0,
                skipped=0,
                code=error.code,
                reason=error.reason,
            )
        self._metrics.validation_rows.labels("accepted").inc(tally.recipients - tally.skipped)
        self._metrics.validation_rows.labels("rejected").inc(tally.rejected)
        self._metrics.validation_rows.labels("skipped").inc(tally.skipped)
        log.info(
            "file validated", batch_id=input.batch_id, recipients=tally.recipients, failure=failure
        )
        log.debug("validation steps", batch_id=input.batch_id, ms=steps.ms)
        return _result(tally, failure)

    @activity.defn
    async def load_recipients(self, input: ValidateInput) -> ValidationResult:
        """Load a file of ledger rows that the API validated by the engine's rules as it took
        it (a Postman upload, `columns.write_ledger`) into the ledger, as they are: no rule
        is applied again. One transaction, as `validate_recipients`."""
        beating = asyncio.create_task(heartbeat_until_cancelled())
        try:
            return await outages_uncounted(
                lambda: self._kept_or(self._load, input), attempts=VALIDATE_ATTEMPTS
            )
        finally:
            beating.cancel()

    async def _load(self, input: ValidateInput) -> ValidationResult:
        batch_id = uuid.UUID(input.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        account_id = batch["account_id"]
        _, content = await files.file_content(self._pool, account_id, batch_id)
        tally = Tally()
        async with self._pool.acquire() as conn, conn.transaction():
            await messages.clear_validation(conn, batch_id)
            async for block, counts in in_thread(loaded_ledger(content)):
                tally.add(counts)
                async for part in in_thread(block.ledger_csv(batch_id, account_id)):
                    await messages.copy_recipients_csv(conn, part, block.copy_columns)
                ValidationHeartbeat(rows=tally.rows).send()
            await batches.set_validation_counts(conn, batch_id, **tally.batch_counts())
        await messages.refresh_statistics(self._pool, tally.recipients)
        log.info("ledger loaded", batch_id=input.batch_id, recipients=tally.recipients)
        return _result(tally)

    async def _list_sources(
        self, account_id: uuid.UUID, named: list[dict[str, Any]]
    ) -> list[ListSource]:
        """The mailing lists the request names, their contacts read now: a list deleted since
        the batch was accepted adds no one."""
        return [
            ListSource(
                contacts=await mailing_lists.contacts_of(
                    self._pool, account_id, uuid.UUID(source["id"])
                ),
                agent_message=source.get("agent_message"),
                agent_number=source.get("agent_number"),
                request_data=source.get("request_data") or {},
            )
            for source in named
        ]

    async def _copy_rows(
        self,
        conn: asyncpg.Connection,
        batch_id: uuid.UUID,
        account_id: uuid.UUID,
        outcomes: Iterator[Recipient | Rejected],
        senders: dict[int, str],
        *,
        stop_ledger_at_rejection: bool,
        shorten_urls: bool,
    ) -> Tally:
        """COPY rows in blocks; parsing runs in a thread so the worker's loop stays free.

        With `stop_ledger_at_rejection` (strict), a rejected row dooms the batch: from then on
        only rejected rows are written, and the pass goes on so that every one is reported.
        With `shorten_urls`, each message's URLs are replaced by short links before its
        segments are counted, and the links are COPYed with the block.
        """
        tally = Tally()
        short_links_base = self._settings.api_url
        codes = Codes()
        while block := await asyncio.to_thread(list, itertools.islice(outcomes, COPY_BATCH)):
            ledger: list[tuple] = []
            refused: list[tuple] = []
            short: list[tuple] = []
            if shorten_urls:
                short = await asyncio.to_thread(
                    _shorten_block,
                    block,
                    tally.recipients,
                    batch_id,
                    account_id,
                    short_links_base,
                    codes,
                )
            for item in block:
                tally.count(item)
                if isinstance(item, Rejected):
                    refused.append(rejected_record(batch_id, account_id, item))
                    continue
                ledger.append(
                    (
                        batch_id,
                        tally.recipients - 1,
                        account_id,
                        item.row_number,
                        item.to_number,
                        item.body,
                        "skipped" if item.skip_code else "pending",
                        item.skip_code,
                        item.encoding,
                        item.segments,
                        senders.get(item.row_number),
                        item.request_data,
                    )
                )
            if not (stop_ledger_at_rejection and tally.rejected):
                await messages.copy_recipients(conn, ledger)
                await links.copy_links(conn, short)
            await messages.copy_rejected(conn, refused)
            ValidationHeartbeat(rows=tally.rows).send()
        return tally

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [self.validate_recipients, self.load_recipients]


def _result(tally: Tally, failure: str | None = None) -> ValidationResult:
    """What a validation (or load) that made the ledger answers: its counts, and its
    `validation_failed` reason (strict mode) if any."""
    return ValidationResult(
        rows_total=tally.rows,
        recipients=tally.recipients,
        rejected=tally.rejected,
        skipped=tally.skipped,
        code=None if failure is None else Code.VALIDATION_FAILED.value,
        reason=failure,
    )


async def _copy_blocks(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    plain: PlainCsv,
    *,
    with_ledger: bool,
) -> Tally:
    """COPY a plain file's outcomes block by block; a strict batch writes no ledger once a
    row is rejected."""
    # Closed on the way out, whatever ends the loop: the block being validated is let go
    # then, not when the generator is collected.
    copies = ledger_copies(plain, batch_id, account_id, with_ledger=with_ledger)
    async with contextlib.aclosing(copies):
        async for block in copies:
            await messages.copy_outcomes(conn, block.ledger, block.rejected, block.columns)
            ValidationHeartbeat(rows=plain.tally.rows).send()
    return plain.tally


def warm_up() -> Tally:
    """Validate a small file by the column path, ledger CSV included, with nothing written:
    done once at a validating worker's start (`worker.prepare_process`), so that the first
    batch of the process does not pay what the engine's first pass sets up (about 0.2 s, a
    third of a 10,000-row batch's way to its first message). Its tally, for a test."""
    rules = RecipientRules.from_request(WARM_UP_REQUEST, ValidationLimits(), set())
    plain = plain_csv(WARM_UP_FILE, rules)
    if plain is None:
        raise NotPlain("the warm-up file is not plain")
    nobody = uuid.UUID(int=0)
    for block in plain.blocks():
        for _ in block.ledger_csv(nobody, nobody):
            pass
    return plain.tally


class _Steps:
    """How long each step of a validation took, in ms, for its `validation steps` debug
    event: the time since the step before, by the name of the step that ends there."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.ms[step] = round((now - self._last) * 1000, 1)
        self._last = now


@contextlib.contextmanager
def _stoppable(items: Iterator[T]) -> Iterator[Iterator[T]]:
    """`items`, ending at the next one once the block is left: a thread still reading them
    when the activity is cancelled stops there, rather than validating its block to the end
    (holding the GIL the worker's other work needs)."""
    ending = threading.Event()
    try:
        yield itertools.takewhile(lambda _: not ending.is_set(), items)
    finally:
        ending.set()


def _shorten_block(
    block: list[Recipient | Rejected],
    first_seq: int,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    base_url: str,
    codes: Codes,
) -> list[tuple]:
    """Shorten the URLs of the block's messages in place, their segments counted again;
    the links as `links.copy_links` records. `first_seq` is the seq of its first Recipient."""
    recipients = [item for item in block if isinstance(item, Recipient)]
    return [
        (link.code, batch_id, first_seq + index, account_id, link.url)
        for index, link in shorten_recipients(recipients, base_url, codes)
    ]


async def _on_disk(held: contextlib.AsyncExitStack, content: bytes) -> BinaryIO | None:
    """The file's bytes in a temporary file (on disk: `TMPDIR`, else `/tmp`), closed with
    `held`, for the column path to read a block at a time: at 1,000,000 rows its 26 MiB are
    not held in memory while the blocks are validated and COPYed (docs/RECIPIENTS.md).
    None when they cannot be written (a full or read-only disk): the file is then
    validated from memory, as before."""
    try:
        spool = held.enter_context(cast(BinaryIO, TemporaryFile()))
        await asyncio.to_thread(_write, spool, content)
    except OSError as error:
        log.warning("recipient file validated from memory", why=str(error))
        return None
    return spool


def _write(file: BinaryIO, content: bytes) -> None:
    file.write(content)
    file.flush()


async def _whole(source: bytes | BinaryIO) -> bytes:
    """The file's bytes, read back from disk if they were put there (`_on_disk`): the row
    path takes a file whole."""
    if isinstance(source, bytes):
        return source
    source.seek(0)
    return await asyncio.to_thread(source.read)


async def _copy_contents(conn: asyncpg.Connection, batch_id: uuid.UUID, content: bytes) -> None:
    """The rows' own content templates, read in a thread, COPYed a block at a time."""
    contents = row_contents(content)
    while block := await asyncio.to_thread(list, itertools.islice(contents, COPY_BATCH)):
        await messages.copy_contents(conn, [(batch_id, *row) for row in block])
