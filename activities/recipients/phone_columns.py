"""`phones.valid_e164s` over a whole polars column, for recipient files of a million rows.

The per-number pattern of `phones` runs in Python's regex engine, a number at a time. Here a
cell of plain digits (perhaps after a `+`) is decided by its calling code's `CodePlan`:
one pass tests the national prefix and the first region (which settles most rows), a
number of a length no region has is not valid, and the other regions are walked one pass
each (a region without leading digits takes the rows valid for it, one with leading
digits the rows they match, valid or not) when enough rows are left. Polars' regexes have
no lookarounds, which is why the plan is walked rather than matched as one pattern. Every
other cell, and a number a national prefix might be stripped from, goes to
`valid_e164s`, so the answer is the same.

Before any pass, a cell of plain digits is looked up, by arithmetic on it as an integer, in
its calling code's `prefix_table` (built when a process first meets the code): the plan's
answer for every number of its national length and first digits. Only the cells the table
leaves undecided are walked."""

import functools
import threading
from dataclasses import dataclass

from activities.recipients import prefix_table
from activities.recipients.frames import pl
from activities.recipients.phones import (
    CodePlan,
    Desc,
    RegionPlan,
    code_plans,
    possible_e164s,
    valid_e164s,
)

_RAW = pl.col("raw")
# Rows a calling code's other regions are walked for, one pass each; fewer go to
# `valid_e164s`, a number at a time, which then costs less than a pass per region.
_WALK_MIN = 5000


def valid_e164_column(raws: pl.Series) -> pl.Series:
    """`valid_e164s(raws)` as a String column: E.164, or null where not a valid number."""
    frame = pl.DataFrame({"raw": raws.fill_null("")}).with_row_index("at")
    frame = frame.with_columns_seq(_table_verdicts(frame["raw"]).alias("verdict"))
    verdict = pl.col("verdict")
    # A valid cell is its E.164 form, with a `+` added to the few without one (those alone:
    # `"+" + cell` over every row made a new string for each). An empty cell is not valid;
    # the others the tables leave undecided are walked.
    valid = verdict == prefix_table.VALID
    result = frame.select_seq(
        pl.when(valid).then(_RAW).alias("e164"),
        ((verdict == prefix_table.UNDECIDED).fill_null(value=True) & (_RAW != "")).alias("walk"),
        (valid & ~_RAW.str.starts_with("+")).alias("bare"),
    )
    e164 = _with_plus(result["e164"], frame, result["bare"])
    if result["walk"].any():
        walk = frame.filter(result["walk"])
        e164 = e164.scatter(walk["at"], _walked(walk["raw"]))
    return e164


def _with_plus(e164: pl.Series, frame: pl.DataFrame, bare: pl.Series | pl.Expr) -> pl.Series:
    """`e164` with the E.164 form of the valid cells of `frame` (its "at" and "raw") that
    lack their `+` (`bare`): the cell with one added. Only those few get a new string."""
    rows = frame.filter(bare)
    if rows.is_empty():
        return e164
    return e164.scatter(rows["at"], rows.select_seq("+" + _RAW).to_series())


def _walked(raws: pl.Series) -> pl.Series:
    """`valid_e164_column` by the calling codes' plans alone."""
    heads, codes = _code_heads()
    frame = pl.DataFrame({"raw": raws.fill_null("")}).with_row_index("at")
    head = frame.select_seq(_RAW.str.slice(0, 4).cast(heads, strict=False)).to_series()
    frame = frame.with_columns_seq(codes.gather(head.to_physical()).alias("code"))
    valid = pl.repeat(False, len(raws), dtype=pl.Boolean, eager=True)
    # What no plan decides goes to phonenumbers: no calling code, not plain digits (the
    # plans' patterns match ASCII digits only), a national prefix that might be stripped.
    # An empty cell is not valid.
    settle = [frame.filter(pl.col("code").is_null() & (_RAW != "")).select_seq("at", "raw")]
    for code in frame["code"].drop_nulls().unique():
        found, rejected, undecided = _decide(str(code), frame.filter(pl.col("code") == code))
        if len(found):
            valid.scatter(found, True)
        settle += [undecided, rejected.filter(~_RAW.str.contains(r"^\+?[0-9]+$"))]
    # A valid cell is its E.164 form, with a `+` added to the few without one.
    result = _with_plus(
        frame.select_seq(pl.when(valid).then(_RAW).alias("e164")).to_series(),
        frame,
        valid & ~_RAW.str.starts_with("+"),
    )
    unsettled = pl.concat(settle)
    if len(unsettled):
        result.scatter(unsettled["at"], pl.Series(valid_e164s(unsettled["raw"].to_list())))
    return result


def possible_e164_column(raws: pl.Series, valid: pl.Series) -> pl.Series:
    """`possible_e164s(raws, valid)` as a String column: only the cells without a valid
    number (few, in most files) go to phonenumbers."""
    left = pl.DataFrame({"raw": raws.fill_null(""), "e164": valid}).with_row_index("at")
    left = left.filter(pl.col("e164").is_null() & (_RAW != ""))
    if left.is_empty():
        return valid
    found = possible_e164s(left["raw"].to_list(), left["e164"].to_list())
    return valid.clone().scatter(left["at"], pl.Series(found, dtype=pl.String))


# Digits of a number the table reaches at most: an integer of 19 digits fits in 64 bits.
_MOST_DIGITS = 19
# A table's place by the first three digits of a number and its count of digits.
_PLACES = 1000 * (_MOST_DIGITS + 1)


@dataclass(frozen=True)
class _Tables:
    """The tables of the calling codes met so far, one after the other in `verdicts`; by
    `head * (_MOST_DIGITS + 1) + digits` (`head`: the first three digits of a number of
    `digits` digits), where its table starts (null: none), and what to divide the number by,
    then take the remainder of, for its place in it."""

    codes: frozenset[str]
    start: pl.Series
    divisor: pl.Series
    modulus: pl.Series
    verdicts: pl.Series

    @functools.cached_property
    def verdict(self) -> pl.Expr:
        """A number's verdict by these tables, from its `number` and `place`: built once for
        each set of tables."""
        place, number = pl.col("place"), pl.col("number")
        divisor, modulus = pl.lit(self.divisor).gather(place), pl.lit(self.modulus).gather(place)
        at = pl.lit(self.start).gather(place) + number // divisor % modulus
        return pl.lit(self.verdicts).gather(at).alias("verdict")


_tables_lock = threading.Lock()
_tables = _Tables(
    frozenset(),
    pl.Series([None] * _PLACES, dtype=pl.UInt64),
    pl.Series([1] * _PLACES, dtype=pl.UInt64),
    pl.Series([1] * _PLACES, dtype=pl.UInt64),
    pl.Series([], dtype=pl.UInt8),
)


# A cell as an integer (null unless plain digits, perhaps after a `+`) and its place in the
# tables (null where too short or too long for them): built once, not for each block.
_NUMBER = _RAW.cast(pl.UInt64, strict=False)
_DIGITS = _RAW.str.len_bytes() - _RAW.str.starts_with("+").cast(pl.UInt32)
_POWERS = pl.Series([10**size for size in range(_MOST_DIGITS + 1)], dtype=pl.UInt64)
_PLACE = (
    pl.when(pl.col("number").is_not_null() & pl.col("digits").is_between(4, _MOST_DIGITS))
    .then(
        pl.col("number")
        // pl.lit(_POWERS).gather(pl.col("digits").clip(4, _MOST_DIGITS) - 3)
        * (_MOST_DIGITS + 1)
        + pl.col("digits")
    )
    .alias("place")
)


def _table_verdicts(raws: pl.Series) -> pl.Series:
    """Each cell's `prefix_table` verdict; null where a cell is not plain digits (perhaps
    after a `+`) of a calling code, or is too short or too long for the tables. Looked up
    again when a cell is of a calling code whose tables are not built yet."""
    frame = pl.DataFrame({"raw": raws})
    places = frame.select_seq(_NUMBER.alias("number"), _DIGITS.alias("digits")).select_seq(
        "number", _PLACE
    )
    tables = _tables
    verdicts = places.select_seq(tables.verdict).to_series()
    # A place without a table (few: numbers not valid, mostly) may be of a calling code
    # not met yet: its tables are built, then looked up again.
    if verdicts.null_count() > places["place"].null_count():
        heads = _head_codes()
        left = places["place"].filter(verdicts.is_null())
        codes = (left // (_MOST_DIGITS + 1)).drop_nulls().unique().to_list()
        if new := {heads[head] for head in codes} - {""} - tables.codes:
            verdicts = places.select_seq(_with_codes(new).verdict).to_series()
    return verdicts


@functools.cache
def _head_codes() -> list[str]:
    """The calling code each three digits start with ("" for none)."""
    codes = code_plans()
    return [
        next((digits[:n] for n in (1, 2, 3) if digits[:n] in codes), "")
        for digits in (f"{head:03d}" for head in range(1000))
    ]


def _with_codes(codes: set[str]) -> _Tables:
    """The tables, those of `codes` built in if not yet."""
    # One set of tables a process, replaced whole (readers keep the one they took).
    global _tables
    with _tables_lock:
        tables = _tables
        if codes <= tables.codes:
            return tables
        known = tables.codes | codes
        start: list[int | None] = [None] * _PLACES
        divisor, modulus = [1] * _PLACES, [1] * _PLACES
        parts: list[bytes] = []
        offsets: dict[tuple[str, int], int] = {}
        size = 0
        for code in sorted(known):
            for length, table in enumerate(prefix_table.code_tables(code)):
                offsets[code, length] = size
                parts.append(table.verdicts)
                size += len(table.verdicts)
        for head, code in enumerate(_head_codes()):
            if code not in known:
                continue
            for digits in range(4, _MOST_DIGITS + 1):
                length = digits - len(code)
                if length > prefix_table.LONGEST:
                    continue
                table = prefix_table.code_tables(code)[length]
                place = head * (_MOST_DIGITS + 1) + digits
                start[place] = offsets[code, length]
                divisor[place] = 10 ** (length - table.depth)
                modulus[place] = 10**table.depth
        _tables = _Tables(
            frozenset(known),
            pl.Series(start, dtype=pl.UInt64),
            pl.Series(divisor, dtype=pl.UInt64),
            pl.Series(modulus, dtype=pl.UInt64),
            pl.Series(b"".join(parts), dtype=pl.UInt8),
        )
        return _tables


def prepare() -> None:
    """Read phonenumbers' metadata into the plans and patterns now, not during the first
    file's validation."""
    valid_e164s(["+12015550123"])
    _code_heads()


@functools.cache
def _code_heads() -> tuple[pl.Enum, pl.Series]:
    """The first four characters of a cell of digits (perhaps after a `+`), when they
    start with a calling code (codes are prefix-free and 1-3 digits long), as an Enum, and
    each one's code by its position: a cast to the Enum and a gather take half the time
    of a lookup by value (`replace_strict`)."""
    heads = {}
    for size in (1, 2, 3, 4):
        for number in range(10**size):
            digits = f"{number:0{size}d}"
            code = next((digits[:n] for n in (1, 2, 3) if digits[:n] in code_plans()), None)
            if code is not None:
                heads[digits] = int(code)
                if size < 4:
                    heads["+" + digits] = int(code)
    return pl.Enum(list(heads)), pl.Series(list(heads.values()), dtype=pl.UInt16)


def _decide(code: str, rows: pl.DataFrame) -> tuple[pl.Series, pl.DataFrame, pl.DataFrame]:
    """Of one calling code's rows (`at`, `raw`): the positions valid by its plan, the rows
    it finds not valid, and those it leaves to `valid_e164s` (a national prefix might be
    stripped, or too few rows are left after the first region).
    Patterns match the whole cell, the calling code written in; the prefix and the first
    region, which decides most rows, are tested in one pass."""
    plan: CodePlan = code_plans()[code]
    national = _National(code)
    if not plan.regions:
        plan = CodePlan(plan.national_prefix, (RegionPlan(None, None, ()),), None, plan.shortest)
    first, *others = plan.regions
    prefixed = national.starts_with(plan.national_prefix) if plan.national_prefix else None
    rows = rows.select_seq(
        "at",
        "raw",
        pl.lit(False).alias("stripped") if prefixed is None else prefixed.alias("stripped"),
        national.valid(first).alias("valid"),
        (national.starts_with(first.leading) if first.leading else pl.lit(True)).alias("taken"),
    )
    undecided = rows.filter(pl.col("stripped"))
    if plan.shortest is not None:
        undecided = undecided.filter(national.length() >= plan.shortest)
    rows = rows.filter(~pl.col("stripped"))
    # A region with leading digits takes the rows they match; one without, the valid rows.
    taken = pl.col("taken") if first.leading else pl.col("valid")
    valid = [rows.filter(taken & pl.col("valid"))["at"]]
    rejected = [rows.filter(taken & ~pl.col("valid")).select_seq("at", "raw")]
    rows = rows.filter(~taken).select_seq("at", "raw")
    if plan.lengths is not None:
        possible = rows.select_seq(national.length().is_in(list(plan.lengths))).to_series()
        rejected.append(rows.filter(~possible))
        rows = rows.filter(possible)
    if rows.height < _WALK_MIN:
        # Few rows left (mostly invalid numbers): a pass per region would cost more.
        return (
            pl.concat(valid),
            pl.concat(rejected),
            pl.concat([undecided.select_seq("at", "raw"), rows]),
        )
    for region in others:
        if rows.is_empty():
            break
        ok = rows.select_seq(national.valid(region)).to_series()
        if region.leading is not None:
            chosen = rows.select_seq(national.starts_with(region.leading)).to_series()
            valid.append(rows.filter(chosen & ok)["at"])
            rejected.append(rows.filter(chosen & ~ok))
            rows = rows.filter(~chosen)
        else:
            valid.append(rows.filter(ok)["at"])
            rows = rows.filter(~ok)
    rejected.append(rows)
    return pl.concat(valid), pl.concat(rejected), undecided.select_seq("at", "raw")


class _National:
    """Tests of the national number of plain cells (`raw`) that start with `code`."""

    def __init__(self, code: str) -> None:
        # ASCII digits only (`\d` is any Unicode digit otherwise): phonenumbers reads other
        # digits too, so a cell with them is left to it.
        self.head = rf"(?-u)^\+?{code}"
        self.code = code

    def length(self) -> pl.Expr:
        plus = _RAW.str.starts_with("+").cast(pl.UInt32)
        return _RAW.str.len_bytes() - plus - len(self.code)

    def starts_with(self, pattern: str) -> pl.Expr:
        if pattern.isascii() and pattern.isdigit():
            # Two literal tests cost a fraction of a regex pass.
            digits = self.code + pattern
            return _RAW.str.starts_with(digits) | _RAW.str.starts_with("+" + digits)
        return _RAW.str.contains(f"{self.head}(?:{pattern})")

    def matches(self, desc: Desc) -> pl.Expr:
        match = _RAW.str.contains(f"{self.head}(?:{desc.pattern})$")
        if desc.lengths is None:
            return match
        return match & self.length().is_in(list(desc.lengths))

    def valid(self, region: RegionPlan) -> pl.Expr:
        """The region's general description and one of its types; types with the same
        lengths are matched as one pattern: one pass over the cells instead of one a type."""
        if region.general is None:
            return pl.lit(False)
        patterns: dict[tuple[int, ...] | None, list[str]] = {}
        for desc in region.types:
            patterns.setdefault(desc.lengths, []).append(f"(?:{desc.pattern})")
        types = [self.matches(Desc(size, "|".join(alike))) for size, alike in patterns.items()]
        return self.matches(region.general) & pl.any_horizontal(types)
