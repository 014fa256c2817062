"""Validation of a batch's recipient file: read it, apply the recipient rules, COPY the ledger."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import structlog
from temporalio import activity

from activities.heartbeats import ValidationHeartbeat
from activities.recipients.columns import NotPlain, PlainCsv, plain_csv
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
from store import batches, files, messages, opt_outs
from workflows.contracts import ValidateInput, ValidationOptions, ValidationResult

log = structlog.get_logger(__name__)

COPY_BATCH = 10_000


class ValidationActivities(WorkerResources):
    """Validates a batch's file into its ledger."""

    @activity.defn
    async def validate_recipients(self, input: ValidateInput) -> ValidationResult:
        batch_id = uuid.UUID(input.batch_id)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        account_id = batch["account_id"]
        _, content = await files.file_content(self._pool, account_id, batch_id)
        request: dict[str, Any] = batch["request"]
        options = ValidationOptions.from_request(request)
        opted_out: set[str] = set()
        if options.exclude_opt_outs:
            opted_out = await opt_outs.opted_out_numbers(self._pool, account_id)
        rules = RecipientRules.from_request(request, input.limits, opted_out)
        try:
            # A plain CSV file is validated by columns, a block at a time; any other file,
            # or one that turns out not to be plain, row by row (a JSON file is parsed
            # whole). Either way off the event loop.
            plain = plain_csv(content, rules)
            async with self._pool.acquire() as conn, conn.transaction():
                await messages.clear_validation(conn, batch_id)
                tally = None
                if plain is not None:
                    try:
                        # A savepoint: the blocks before one that is not plain are undone.
                        async with conn.transaction():
                            tally = await _copy_blocks(
                                conn, batch_id, account_id, plain, with_ledger=not options.strict
                            )
                        header = plain.header
                    except NotPlain as error:
                        log.info("file not plain after all", batch_id=str(batch_id), why=str(error))
                if tally is None:
                    header, rows = await asyncio.to_thread(read_rows, content)
                    tally = await self._copy_rows(
                        conn,
                        batch_id,
                        account_id,
                        build_recipients(header, rows, rules),
                        stop_ledger_at_rejection=options.strict,
                    )
                if any(name in header for name in CONTENT_COLUMNS):
                    await _copy_contents(conn, batch_id, content)
                issue = header_issue(header)
                if issue is not None:
                    await messages.copy_rejected(
                        conn, [_rejected_record(batch_id, account_id, issue)]
                    )
                failure = strict_failure(issue, tally) if options.strict else None
                if failure is not None:
                    await messages.clear_ledger(conn, batch_id)
                    tally = tally.without_ledger()
                await batches.set_validation_counts(
                    conn,
                    batch_id,
                    rows_total=tally.rows,
                    recipients=tally.recipients,
                    rejected=tally.rejected,
                    segments_total=tally.segments,
                    messages_gsm7=tally.gsm7,
                    messages_ucs2=tally.ucs2,
                )
            await messages.refresh_statistics(self._pool)
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
        return ValidationResult(
            rows_total=tally.rows,
            recipients=tally.recipients,
            rejected=tally.rejected,
            skipped=tally.skipped,
            code=None if failure is None else Code.VALIDATION_FAILED.value,
            reason=failure,
        )

    async def _copy_rows(
        self,
        conn: asyncpg.Connection,
        batch_id: uuid.UUID,
        account_id: uuid.UUID,
        outcomes: Iterator[Recipient | Rejected],
        *,
        stop_ledger_at_rejection: bool,
    ) -> Tally:
        """COPY rows in blocks; parsing runs in a thread so the worker's loop stays free.

        With `stop_ledger_at_rejection` (strict), a rejected row dooms the batch: from then on
        only rejected rows are written, and the pass goes on so that every one is reported.
        """
        tally = Tally()
        while block := await asyncio.to_thread(list, itertools.islice(outcomes, COPY_BATCH)):
            ledger: list[tuple] = []
            refused: list[tuple] = []
            for item in block:
                tally.count(item)
                if isinstance(item, Rejected):
                    refused.append(_rejected_record(batch_id, account_id, item))
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
                    )
                )
            if not (stop_ledger_at_rejection and tally.rejected):
                await messages.copy_recipients(conn, ledger)
            await messages.copy_rejected(conn, refused)
            ValidationHeartbeat(rows=tally.rows).send()
        return tally

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [self.validate_recipients]


async def _copy_blocks(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    account_id: uuid.UUID,
    plain: PlainCsv,
    *,
    with_ledger: bool,
) -> Tally:
    """COPY a plain file's outcomes block by block, the next block validated (in a thread)
    while this one is COPYed; a strict batch writes no ledger once a row is rejected."""
    blocks = plain.blocks()
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, blocks, None))
    try:
        while (block := await upcoming) is not None:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, blocks, None))
            if with_ledger or not plain.tally.rejected:
                parts = block.ledger_csv(batch_id, account_id)
                while part := await asyncio.to_thread(next, parts, b""):
                    await messages.copy_recipients_csv(conn, part)
            await messages.copy_rejected(
                conn, [_rejected_record(batch_id, account_id, row) for row in block.rejected]
            )
            ValidationHeartbeat(rows=plain.tally.rows).send()
    finally:
        upcoming.cancel()
    return plain.tally


async def _copy_contents(conn: asyncpg.Connection, batch_id: uuid.UUID, content: bytes) -> None:
    """The rows' own content templates, read in a thread, COPYed a block at a time."""
    contents = row_contents(content)
    while block := await asyncio.to_thread(list, itertools.islice(contents, COPY_BATCH)):
        await messages.copy_contents(conn, [(batch_id, *row) for row in block])


def _rejected_record(batch_id: uuid.UUID, account_id: uuid.UUID, row: Rejected) -> tuple:
    return (batch_id, row.row_number, account_id, row.code, row.reason, row.value)
