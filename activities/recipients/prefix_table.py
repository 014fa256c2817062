"""A calling code's numbers decided by the first digits of their national number.

`phone_columns` walks each calling code's plan (`phones.code_plans`) with a regex pass per
region over a file's cells. Most numbers of a region are told valid or not by their length
and first few digits, so the plans are read once per process into a table: for each calling
code, national length and first `DEPTH` digits (fewer where fewer settle it), whether every
such number is valid, none is, or the digits after them matter (the plan's walk decides those).

A set of numbers is written as its known digits and an `X` for each digit still unknown, and
each pattern of the plan is matched against it twice, rewritten: with `X` taken only where the
pattern takes any digit (`\\d`, `[0-9]`), a match means that every number of the set matches;
with `X` taken wherever the pattern takes some digit, no match means that none does. The plan's
walk (national prefix, then each region's leading digits and validity) is then followed with
those three answers, and a set it cannot decide is split by its next digit.
"""

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from activities.recipients.phones import CodePlan, Desc, RegionPlan, code_plans

# What a set of numbers is: every one valid, none, or not known from these digits.
INVALID, VALID, UNDECIDED = 0, 1, 2
# Not known whatever digits follow: parsing might strip a national prefix from every one.
_STRIPPED = 3
# National digits a set is split to at most: 10**4 entries a table at most.
DEPTH = 4
# The longest national number phonenumbers knows.
LONGEST = 17
_UNKNOWN = "X"

# Whether every number of a set matches a pattern (ALL), none (NONE), or some (SOME).
NONE, SOME, ALL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Table:
    """The verdict of each set of national numbers of one length: `verdicts[p]` for those whose
    first `depth` digits, read as an integer, are `p`."""

    depth: int
    verdicts: bytes


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A pattern rewritten both ways (None: a construct the rewriting does not cover, so the
    answer is always SOME)."""

    every: re.Pattern[str] | None
    some: re.Pattern[str] | None

    def test(self, text: str, *, whole: bool) -> int:
        if self.every is None or self.some is None:
            return SOME
        match: Callable[[re.Pattern[str], str], re.Match[str] | None] = (
            re.Pattern.fullmatch if whole else re.Pattern.match
        )
        if match(self.every, text):
            return ALL
        return SOME if match(self.some, text) else NONE


@functools.cache
def code_tables(code: str) -> tuple[Table, ...]:
    """The calling code's table for each national length 0 to `LONGEST`."""
    plan = code_plans()[code]
    return tuple(_length_table(plan, length) for length in range(LONGEST + 1))


def verdict(plan: CodePlan, length: int, digits: str) -> int:
    """The verdict for the national numbers of `length` digits that start with `digits`, as
    `phone_columns._decide` would reach it for each (`_STRIPPED`: undecided, and no digits
    after these would decide it)."""
    if plan.shortest is not None and length < plan.shortest:
        return INVALID  # too short, national prefix or not
    text = digits + _UNKNOWN * (length - len(digits))
    if plan.national_prefix:
        # Parsing might strip a national prefix: the plan's walk does not decide these.
        stripped = _pattern(plan.national_prefix).test(text, whole=False)
        if stripped != NONE:
            return _STRIPPED if stripped == ALL else UNDECIDED
    return _walk(plan.regions, length, text)


def _walk(regions: tuple[RegionPlan, ...], length: int, text: str) -> int:
    """phonenumbers' choice of region, then validity for it: the first region whose leading
    digits match, or, without leading digits, that the numbers are valid for. Where only
    some numbers pick a region, the verdict stands only if the regions after give it too."""
    for index, region in enumerate(regions):
        if region.leading is not None:
            picked = _pattern(region.leading).test(text, whole=False)
            if picked == NONE:
                continue
            valid = _region(region, length, text)
        else:
            picked = valid = _region(region, length, text)
            if picked == NONE:
                continue
        found = {ALL: VALID, NONE: INVALID, SOME: UNDECIDED}[valid]
        if region.leading is None:
            found = VALID  # picked for being valid
        if picked == ALL or found == UNDECIDED:
            return found
        return found if _walk(regions[index + 1 :], length, text) == found else UNDECIDED
    return INVALID


def _length_table(plan: CodePlan, length: int) -> Table:
    """The sets split digit by digit while undecided, down to `DEPTH` digits."""
    decided: dict[str, int] = {}
    deepest = 0
    pending = [""]
    while pending:
        digits = pending.pop()
        found = verdict(plan, length, digits)
        if found == UNDECIDED and len(digits) < min(DEPTH, length):
            pending += [digits + str(digit) for digit in range(10)]
            deepest = max(deepest, len(digits) + 1)
        else:
            decided[digits] = UNDECIDED if found == _STRIPPED else found
    verdicts = bytearray(10**deepest)
    for digits, found in decided.items():
        spread = 10 ** (deepest - len(digits))
        start = int(digits or "0") * spread
        verdicts[start : start + spread] = bytes([found]) * spread
    return Table(deepest, bytes(verdicts))


def _region(region: RegionPlan, length: int, text: str) -> int:
    """Whether the numbers are valid for the region: its general description and one type."""
    if region.general is None:
        return NONE
    general = _desc(region.general, length, text)
    types = [_desc(desc, length, text) for desc in region.types]
    kind = ALL if ALL in types else SOME if SOME in types else NONE
    return min(general, kind)


def _desc(desc: Desc, length: int, text: str) -> int:
    if desc.lengths is not None and length not in desc.lengths:
        return NONE
    return _pattern(desc.pattern).test(text, whole=True)


@functools.cache
def _pattern(pattern: str) -> _Pattern:
    every, some = _rewritten(pattern, every=True), _rewritten(pattern, every=False)
    if every is None or some is None:
        return _Pattern(None, None)
    return _Pattern(re.compile(every), re.compile(some))


_CLASS = re.compile(r"\[((?:[0-9]-[0-9]|[0-9]|\\d)+)\]")
_QUANTIFIER = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")
_DIGITS = frozenset("0123456789")


def _rewritten(pattern: str, *, every: bool) -> str | None:
    """`pattern` with `X` taken for a digit as `every` says (see the module); None when it
    has anything but digits, `\\d`, classes of digits, groups, alternatives, quantifiers and
    `$`: a lookaround or a negated class would turn the answer round."""
    out = []
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if pattern.startswith(r"\d", at):
            out.append(rf"[\d{_UNKNOWN}]")
            at += 2
        elif char == "[":
            found = _CLASS.match(pattern, at)
            if found is None:
                return None
            digits = _class_digits(found.group(1))
            wide = digits == _DIGITS if every else bool(digits)
            out.append(f"[{found.group(1)}{_UNKNOWN}]" if wide else found.group(0))
            at = found.end()
        elif char == "{":
            found = _QUANTIFIER.match(pattern, at)
            if found is None:
                return None
            out.append(found.group(0))
            at = found.end()
        elif char == "(":
            if pattern.startswith("(?:", at):
                out.append("(?:")
                at += 3
            elif pattern.startswith("(?", at):
                return None
            else:
                out.append("(")
                at += 1
        elif char in "0123456789":
            out.append(char if every else f"[{char}{_UNKNOWN}]")
            at += 1
        elif char in ")|?*+$":
            out.append(char)
            at += 1
        else:
            return None
    return "".join(out)


def _class_digits(body: str) -> frozenset[str]:
    if r"\d" in body:
        return _DIGITS
    digits = set()
    for first, last in re.findall(r"([0-9])(?:-([0-9]))?", body):
        digits |= {str(digit) for digit in range(int(first), int(last or first) + 1)}
    return frozenset(digits)
