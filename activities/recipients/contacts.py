"""Mailing-list contacts: read from an upload, and expanded into a batch's rows. Pure."""

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from activities.recipients import rejections
from activities.recipients.phones import possible_e164s, valid_e164s
from activities.recipients.rejections import Rejected
from activities.recipients.rows import (
    MESSAGE_COLUMN,
    PHONE_COLUMN,
    REQUEST_DATA_PREFIX,
    Row,
    cell_text,
    phone_column_issue,
    read_rows,
)

# Rows read, checked and stored at a time: an upload's memory is a block's, whatever the
# file's size (3 million rows fit the upload limit; read whole, they took gigabytes).
CONTACT_BLOCK_ROWS = 50_000


@dataclass(kw_only=True)
class Contacts:
    """A block of an upload's contacts, E.164 number -> fields (the last row of a number
    wins), and its rows that are not contacts."""

    contacts: dict[str, dict[str, str]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def contact_blocks(content: bytes, block_rows: int = CONTACT_BLOCK_ROWS) -> Iterator[Contacts]:
    """The contacts of a CSV or JSON file (a `phone_number` column, the other columns its
    fields), `block_rows` rows at a time, numbered through the file; raises SourceInvalid as
    a batch's file would (at the first block for its header, later for a CSV's quoting or
    decoding). Numbers need only a possible length for their country, as a sender's do: the
    batch checks them when it sends."""
    header, rows = read_rows(content)
    issue = phone_column_issue(header)
    if issue is not None:
        raise issue
    first = 1
    while block := list(itertools.islice(rows, block_rows)):
        yield _block_contacts(header, block, first)
        first += len(block)


def _block_contacts(header: list[str], rows: list[Row], first: int) -> Contacts:
    found = Contacts()
    values = [r if isinstance(r, dict) else dict(zip(header, r, strict=False)) for r in rows]
    raws = [row.get(PHONE_COLUMN, "") for row in values]
    # A valid number is possible: the C-level check of valid ones first, phonenumbers after.
    numbers = possible_e164s(raws, valid_e164s(raws))
    for row_number, (row, raw, number) in enumerate(zip(values, raws, numbers, strict=True), first):
        if not raw.strip():
            if "".join(row.values()).strip():
                found.rejected.append(rejections.BLANK_NUMBER.at(row_number, raw))
        elif number is None:
            found.rejected.append(rejections.INVALID_NUMBER.at(row_number, raw))
        else:
            found.contacts[number] = contact_fields(row)
    return found


def contact_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """A contact's fields: every column but the number, as text, `request_data.` dropped
    from a name that has it; blank values are left out, so a batch's default applies."""
    fields: dict[str, str] = {}
    for name, value in values.items():
        text = cell_text(value)
        if name != PHONE_COLUMN and text.strip():
            fields[name.removeprefix(REQUEST_DATA_PREFIX)] = text
    return fields


@dataclass(kw_only=True)
class ListSource:
    """A mailing list named by a batch, its contacts read, with the overrides the batch gave
    it: its own message, its own sender, and defaults of its contacts' fields."""

    contacts: Sequence[tuple[str, Mapping[str, Any]]]
    agent_message: str | None = None
    agent_number: str | None = None
    request_data: Mapping[str, Any] = field(default_factory=dict)


def with_lists(
    content: bytes, sources: Sequence[ListSource], senders: dict[int, str]
) -> tuple[list[str], Iterator[Row]]:
    """The batch's rows: the file's (its inline rows), then each list's contacts in turn, as
    rows of the same file: a contact's fields are `request_data.` columns, so they are the
    template tags, and duplicates and opt-outs apply to the whole as to one file. `senders`
    (row number -> sender) gains the rows of a list that has its own sender."""
    header, file_rows = read_rows(content)
    inline = list(file_rows)
    columns = dict.fromkeys([*header, PHONE_COLUMN])
    row_number = len(inline)
    added: list[Row] = []
    for source in sources:
        defaults = {
            REQUEST_DATA_PREFIX + name: cell_text(value)
            for name, value in source.request_data.items()
        }
        for number, fields in source.contacts:
            row_number += 1
            row = {
                PHONE_COLUMN: number,
                **defaults,
                **{REQUEST_DATA_PREFIX + name: cell_text(value) for name, value in fields.items()},
            }
            if source.agent_message is not None:
                row[MESSAGE_COLUMN] = source.agent_message
            if source.agent_number is not None:
                senders[row_number] = source.agent_number
            columns.update(dict.fromkeys(row))
            added.append(row)
    return list(columns), _chain(header, inline, added)


def _chain(header: list[str], inline: list[Row], added: list[Row]) -> Iterator[Row]:
    """The inline rows as dicts (a CSV file's are lists, read against its own header), then
    the lists' rows."""
    for row in inline:
        yield row if isinstance(row, dict) else dict(zip(header, row, strict=False))
    yield from added
