"""Quoted CSV that polars reads as Python's csv module does, so that the column paths (a
Postman upload's check, the batch validation's engine) take Excel's files, whose cells
with commas or line breaks are quoted, instead of leaving them to the row paths.

A block is taken only when every quote in it is around a whole cell (`records_alike`);
anything else, however the csv module would read it, is the row path's, which decides.
"""

import re

# The separators `str.strip` takes for blanks and polars does not: a block with one goes to
# the row path. Each is looked for by `in` (memchr), several times faster than a regular
# expression of them all.
SEPARATORS = (b"\x1c", b"\x1d", b"\x1e", b"\x1f")
# A quoted cell: a quote at a cell's start (the block's or a line's start, or after a comma),
# its text with quotes doubled, and its closing quote at the cell's end, before a comma or
# a line end.
QUOTED_CELL = re.compile(rb'(?:(?<=[,\n])|\A)"(?:[^"]|"")*"(?=,|\r?\n|\Z)')


def records_alike(block: bytes) -> int | None:
    """How many records a block of whole records holds, when polars (with `"` for quotes)
    reads them as the csv module does; None when it may not: a quote anywhere but around a
    whole cell (`a"b`, `"a"b`, one never closed), a CR but in a CRLF line end or a quoted
    cell, an empty line (the csv module skips it), a separator `str.strip` blanks.

    Why a block whose every quote is in a `QUOTED_CELL` is read alike: before the first such
    cell there is no quote, so both readers are outside quotes, and the cell starts a cell
    for both; inside, both read other bytes as they are and a doubled quote as one, and both
    close at its last quote, which a comma or a line end follows; so both are again outside
    quotes after it, and so on to the block's end."""
    if any(mark in block for mark in SEPARATORS):
        return None
    # Each quoted cell as one byte that is no mark: its line breaks are not record ends.
    rest = QUOTED_CELL.sub(b"q", block) if b'"' in block else block
    if b"\r" in rest:
        rest = rest.replace(b"\r\n", b"\n")
    if rest.startswith(b"\n") or b'"' in rest or b"\r" in rest or b"\n\n" in rest:
        return None
    return rest.count(b"\n") + (not rest.endswith(b"\n"))


def record_end(data: bytes) -> int:
    """Where the last whole record of `data` ends: after its last line break outside quotes
    (an even count of quotes before it); 0 if none is. Where the quoting is not one
    `records_alike` takes, any cut will do: that block goes to the row path."""
    cut = data.rfind(b"\n") + 1
    quotes = data.count(b'"', 0, cut)
    while cut and quotes % 2:
        before = data.rfind(b"\n", 0, cut - 1) + 1
        quotes -= data.count(b'"', before, cut)
        cut = before
    return cut


def next_record_end(data: bytes, start: int, at: int) -> int:
    """Where the first record of `data[start:]` that ends at or after `at` ends: after a
    line break outside quotes (an even count of quotes from `start`); `len(data)` if none
    does."""
    cut = data.find(b"\n", at)
    # A search for a quote (memchr) costs a fraction of counting them, and most files
    # have none.
    quotes = data.count(b'"', start, cut + 1) if data.find(b'"', start, cut + 1) >= 0 else 0
    while cut >= 0 and quotes % 2:
        after = data.find(b"\n", cut + 1)
        quotes += data.count(b'"', cut + 1, len(data) if after < 0 else after + 1)
        cut = after
    return len(data) if cut < 0 else cut + 1
