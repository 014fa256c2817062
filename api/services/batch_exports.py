"""A batch's rows as CSV, safe to open in a spreadsheet."""

import csv
import io
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from store import messages
from workflows.statuses import LedgerStatus

# A spreadsheet runs a cell as a formula (CSV injection) when it starts with one of these,
# after any whitespace; some read the full-width forms, and `|` starts a DDE call.
FORMULA_STARTS = ("=", "+", "-", "@", "|", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# A cell that starts with one of these is quoted whatever follows (OWASP's list).
CONTROL_STARTS = ("\t", "\r", "\n")
E164_SHAPE = re.compile(r"\+[0-9]{1,15}")
CSV_PAGE = 1000
REJECTED_CSV_COLUMNS = ("row_number", "value", "code", "message")
MESSAGE_CSV_COLUMNS = (
    "seq",
    "row_number",
    "phone_number",
    "status",
    "error_code",
    "error_message",
    "carrier_sid",
    "encoding",
    "segments",
    "attempts",
    "sent_at",
    "delivered_at",
    "reference",
    "clicks",
    "first_clicked_at",
    "body",
)


def spreadsheet_safe(cell: str) -> str:
    """`cell` with a leading `'` if a spreadsheet would read it as a formula. A number in
    E.164's shape (`+` and up to 15 digits) stays as it is, valid or only possible (the
    Mobivate and Postman dialects send to possible numbers): `+` and digits are no formula,
    and the `'` would be read as part of the number."""
    risky = cell.startswith(CONTROL_STARTS) or cell.lstrip().startswith(FORMULA_STARTS)
    if risky and not E164_SHAPE.fullmatch(cell):
        return "'" + cell
    return cell


def _csv_lines(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([spreadsheet_safe(c) if isinstance(c, str) else c for c in row])
    return out.getvalue()


async def rejected_rows_csv(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID
) -> AsyncIterator[str]:
    """Every rejected row as CSV, read a page at a time; with a BOM, so that spreadsheets
    read it as UTF-8."""
    yield "\ufeff" + _csv_lines([list(REJECTED_CSV_COLUMNS)])
    after = -1
    while rows := await messages.list_rejected(
        pool, account_id, batch_id, limit=CSV_PAGE, after_row=after
    ):
        yield _csv_lines([[r["row_number"], r["value"], r["code"], r["reason"]] for r in rows])
        after = rows[-1]["row_number"]


async def messages_csv(
    pool: asyncpg.Pool, account_id: uuid.UUID, batch_id: uuid.UUID, status: str | None
) -> AsyncIterator[str]:
    """Every ledger row (of `status`, if given) as CSV, in `seq` order, read a page at a
    time so memory stays flat whatever the batch's size; with a BOM, as `rejected_rows_csv`.
    `delivered_at` is when the carrier's `delivered` receipt was recorded."""
    yield "\ufeff" + _csv_lines([list(MESSAGE_CSV_COLUMNS)])
    after = -1
    while rows := await messages.list_messages(
        pool, account_id, batch_id, status=status, limit=CSV_PAGE, after_seq=after
    ):
        yield _csv_lines([_message_cells(r) for r in rows])
        after = rows[-1]["seq"]


def _message_cells(row: dict[str, Any]) -> list[Any]:
    delivered_at = row["updated_at"] if row["status"] == LedgerStatus.DELIVERED else None
    return [
        row["seq"],
        row["row_number"],
        row["to_number"],
        row["status"],
        row["error_code"],
        row["error_message"],
        row["carrier_sid"],
        row["encoding"],
        row["segments"],
        row["attempts"],
        _timestamp(row["sent_at"]),
        _timestamp(delivered_at),
        row["reference"],
        row["clicks"],
        _timestamp(row["first_clicked_at"]),
        row["body"],
    ]


def _timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
