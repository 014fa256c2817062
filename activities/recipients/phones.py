"""Phone numbers to E.164, the one form Herald stores and sends.

`phonenumbers` is slow for a file of a million numbers. Most numbers of a recipient file
already are E.164 (perhaps without the `+`), so for files one pattern built from
phonenumbers' own metadata decides those: a country calling code, then a national number
that no national prefix could be stripped from, that is valid for the region phonenumbers
picks for it. Such a number is valid and its own E.164 form; a number of digits whose
national part no prefix could be stripped from and that fails the pattern is invalid.
Anything else goes to phonenumbers, as a single number always does. The pattern is built
once per process.
"""

import functools
import itertools
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata
from phonenumbers.phonemetadata import PhoneNumberDesc

# The order phonenumbers tests number types in does not change whether one matches;
# fixed-line and mobile come first as the most common.
_NUMBER_TYPES = (
    "fixed_line",
    "mobile",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)
_DIGITS = re.compile(r"\+[0-9]*")

# How strict a batch is with its recipients' numbers: `valid` takes a number only in a range
# its numbering plan assigns; `possible` takes one of a possible length for its calling
# code, and leaves the rest to the carrier.
NumberCheck = Literal["valid", "possible"]
VALID: NumberCheck = "valid"
POSSIBLE: NumberCheck = "possible"


def to_e164(raw: str, *, require_valid: bool = True) -> str | None:
    """E.164 form of `raw`, adding the leading `+` when missing; None when it is not a number.

    `require_valid` checks the number against the numbering plan (recipients); without it a
    number only needs a possible length for its country (senders, including test numbers).
    """
    return _parsed_e164(_candidate(raw), require_valid=require_valid)


def valid_e164s(raws: Sequence[str]) -> list[str | None]:
    """`to_e164(raw)` (a valid number) of each: those the pattern decides in C-level passes,
    the others one by one."""
    prefixed = list(
        map("+".__add__, map(str.removeprefix, map(str.strip, raws), itertools.repeat("+")))
    )
    matched = list(map(_patterns().valid.fullmatch, prefixed))
    candidates: list[str | None] = list(prefixed)
    for index in itertools.compress(itertools.count(), map(operator.not_, matched)):
        candidate = _candidate(raws[index])
        if _surely_invalid(candidate):
            candidates[index] = None
        else:
            candidates[index] = _parsed_e164(candidate, require_valid=True)
    return candidates


def possible_e164s(raws: Sequence[str], valid: Sequence[str | None]) -> list[str | None]:
    """Each number under the `possible` check: its `valid` E.164 form (from `valid_e164s`)
    where it has one, else `to_e164(raw, require_valid=False)`; a valid number is possible."""
    return [
        number if number is not None else to_e164(raw, require_valid=False)
        for raw, number in zip(raws, valid, strict=True)
    ]


def _candidate(raw: str) -> str:
    candidate = raw.strip()
    return candidate if candidate.startswith("+") else "+" + candidate


def _parsed_e164(candidate: str, *, require_valid: bool) -> str | None:
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException:
        return None
    check = phonenumbers.is_valid_number if require_valid else phonenumbers.is_possible_number
    if not check(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _surely_invalid(candidate: str) -> bool:
    """Whether phonenumbers rejects a `candidate` that the valid pattern does not match:
    true for `+` and digits, unless a national prefix might be stripped from it."""
    if not _DIGITS.fullmatch(candidate):
        return False
    digits = candidate[1:]
    if digits.startswith("0"):
        return True  # no country calling code starts with 0
    for size in (1, 2, 3):
        prefix = _patterns().national_prefixes.get(digits[:size])
        if prefix is not None:
            return prefix.match(digits[size:]) is None
    return True  # no country calling code


@dataclass(frozen=True, slots=True)
class Desc:
    """A national number matches when its length is one of `lengths` (None: any length)
    and `pattern` matches it whole: phonenumbers' `_is_number_matching_desc`."""

    lengths: tuple[int, ...] | None
    pattern: str


@dataclass(frozen=True, slots=True)
class RegionPlan:
    """A number of this region is valid when it matches `general` and one of `types`
    (general None: no number is). `leading`: the leading digits that pick the region
    among those sharing its code."""

    leading: str | None
    general: Desc | None
    types: tuple[Desc, ...]


@dataclass(frozen=True, slots=True)
class CodePlan:
    """How phonenumbers validates a number after one calling code, read off its metadata.

    phonenumbers validates against the first region (of those sharing the code) whose
    leading digits match, or, when a region has none, that the number is valid for. So a
    region with leading digits keeps the regions after it from being picked; one without
    is picked only when the number is valid for it, and then the number is valid anyway.
    A national number that `national_prefix` matches at its start might lose that prefix
    when parsed: the plan does not decide it.
    """

    national_prefix: str | None
    regions: tuple[RegionPlan, ...]
    # The lengths a valid national number can have, in any region (None: not known).
    lengths: frozenset[int] | None = None
    # A national number shorter than this is not valid, prefix or not (None: not known, as
    # a transform rule can lengthen a number while stripping its prefix).
    shortest: int | None = None


@functools.cache
def code_plans() -> dict[str, CodePlan]:
    """Every calling code's plan; a code no number can be valid after has no regions."""
    return {str(code): _code_plan(code) for code in COUNTRY_CODE_TO_REGION_CODE}


class _Patterns:
    """Compiled from phonenumbers' metadata once, at first use."""

    def __init__(self) -> None:
        branches = {code: _code_pattern(plan) for code, plan in code_plans().items()}
        body = _trie(sorted(code for code, branch in branches.items() if branch), branches, "")
        self.valid = re.compile(rf"\+(?:{body})")
        self.national_prefixes = {
            code: re.compile(plan.national_prefix or "(?!)") for code, plan in code_plans().items()
        }


@functools.cache
def _patterns() -> _Patterns:
    return _Patterns()


def _main_metadata(code: int) -> PhoneMetadata:
    """The metadata phonenumbers parses a number with this calling code by."""
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        code, COUNTRY_CODE_TO_REGION_CODE[code][0]
    )
    # phonenumbers has metadata for the main region of every code it maps to regions.
    assert metadata is not None
    return metadata


def _trie(codes: list[str], branches: dict[str, str], prefix: str) -> str:
    """Alternatives for `codes`, nested by digit: calling codes are prefix-free, and a
    regex alternation is tried branch by branch."""
    by_digit: dict[str, list[str]] = {}
    for code in codes:
        by_digit.setdefault(code[len(prefix)], []).append(code)
    alternatives = []
    for digit, group in by_digit.items():
        head = prefix + digit
        inner = branches[head] if head in group else _trie(group, branches, head)
        alternatives.append(f"{digit}(?:{inner})")
    return "|".join(alternatives)


def _code_pattern(plan: CodePlan) -> str:
    """The plan as one pattern of national numbers that parse unchanged and are valid;
    "" for none."""
    alternatives = []
    not_chosen = ""
    for region in plan.regions:
        valid = _region_pattern(region)
        if region.leading is not None:
            if valid:
                alternatives.append(not_chosen + f"(?={region.leading})" + valid)
            not_chosen += f"(?!{region.leading})"
        elif valid:
            alternatives.append(not_chosen + valid)
    if not alternatives:
        return ""
    unstripped = f"(?!{plan.national_prefix})" if plan.national_prefix else ""
    return unstripped + "(?:" + "|".join(alternatives) + ")"


def _region_pattern(region: RegionPlan) -> str:
    if region.general is None:
        return ""
    types = "|".join(map(_desc_pattern, region.types))
    return f"(?={_desc_pattern(region.general)})(?:{types})"


def _desc_pattern(desc: Desc) -> str:
    length_check = "" if desc.lengths is None else _length_pattern(desc.lengths)
    return f"{length_check}(?:{desc.pattern})\\Z"


def _length_pattern(lengths: Sequence[int]) -> str:
    return "(?=" + "|".join(f"[0-9]{{{length}}}\\Z" for length in lengths) + ")"


def _code_plan(code: int) -> CodePlan:
    metadatas = [
        metadata
        for region_code in COUNTRY_CODE_TO_REGION_CODE[code]
        if (metadata := PhoneMetadata.metadata_for_region_or_calling_code(code, region_code))
    ]
    regions = [_region_plan(metadata) for metadata in metadatas]
    if all(region.general is None for region in regions):
        regions = []
    lengths = [_general_lengths(metadata) for metadata in metadatas]
    known = frozenset(itertools.chain(*lengths)) if lengths and all(lengths) else None
    main = _main_metadata(code)
    shortest = None if main.national_prefix_transform_rule or not known else min(known)
    return CodePlan(main.national_prefix_for_parsing, tuple(regions), known, shortest)


def _region_plan(metadata: PhoneMetadata) -> RegionPlan:
    """phonenumbers' `_number_type_helper(...) != UNKNOWN` for the region."""
    general = _desc(metadata.general_desc, None)
    lengths = _general_lengths(metadata)
    types = [
        name
        for name in _NUMBER_TYPES
        if not (name == "mobile" and metadata.same_mobile_and_fixed_line_pattern)
    ]
    descs = tuple(
        desc for name in types if (desc := _desc(getattr(metadata, name), lengths or None))
    )
    if general is None or not descs:
        return RegionPlan(metadata.leading_digits, None, ())
    return RegionPlan(metadata.leading_digits, general, descs)


def _general_lengths(metadata: PhoneMetadata) -> tuple[int, ...]:
    """The possible lengths of any number of the region; none known without a general
    description."""
    general = metadata.general_desc
    return () if general is None else general.possible_length


def _desc(desc: PhoneNumberDesc | None, within: Sequence[int] | None) -> Desc | None:
    """The description as a Desc (the general description already checked `within`);
    None when nothing can match it."""
    if desc is None or not desc.national_number_pattern:
        return None
    lengths = set(desc.possible_length)
    if lengths and within is not None:
        if lengths.isdisjoint(within):
            return None
        checked = None if lengths.issuperset(within) else tuple(sorted(lengths))
    else:
        checked = tuple(sorted(lengths)) if lengths else None
    return Desc(checked, desc.national_number_pattern)


# An alphanumeric sender ID as carriers take it: 1 to 11 letters, digits or spaces, at least
# one letter (so it is never read as a number, and no number is read as one).
_SENDER_ID = re.compile(r"(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}")


def is_sender_id(sender: str) -> bool:
    return _SENDER_ID.fullmatch(sender) is not None


def to_sender(raw: str) -> str | None:
    """A sender as Herald stores and sends it: an alphanumeric sender ID as written (outer
    spaces dropped), or a number's E.164 form; None when it is neither. Letters make it an ID
    before phonenumbers could read them as a vanity number's digits."""
    stripped = raw.strip()
    if any(c.isalpha() for c in stripped):
        return stripped if is_sender_id(stripped) else None
    return to_e164(stripped, require_valid=False)
