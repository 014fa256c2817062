"""Phone numbers to E.164, the one form Herald stores and sends.

`phonenumbers` takes ~30 us a number. Most numbers of a recipient file already are E.164
(perhaps without the `+`), so for files one pattern built from phonenumbers' own metadata
decides those: a country calling code, then a national number that no national prefix
could be stripped from, that is valid for the region phonenumbers picks for it. Such a
number is valid and its own E.164 form; a number of digits whose national part no prefix
could be stripped from and that fails the pattern is invalid. Anything else goes to
phonenumbers, as a single number always does: building the pattern takes 0.2-0.5 s.
"""

import functools
import itertools
import operator
import re
from collections.abc import Sequence

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


def to_e164(raw: str, *, require_valid: bool = True) -> str | None:
    """E.164 form of `raw`, adding the leading `+` when missing; None when it is not a number.

    `require_valid` checks the number against the numbering plan (recipients); without it a
    number only needs a possible length for its country (senders, including test numbers).
    """
    return _parsed_e164(_candidate(raw), require_valid=require_valid)


def valid_e164s(raws: Sequence[str]) -> list[str | None]:
    """`to_e164(raw)` (a valid number) of each: those the pattern decides in C-level passes,
    the others one by one."""
    candidates: list[str | None] = list(
        map("+".__add__, map(str.removeprefix, map(str.strip, raws), itertools.repeat("+")))
    )
    matched = list(map(_patterns().valid.fullmatch, candidates))
    for index in itertools.compress(itertools.count(), map(operator.not_, matched)):
        candidate = _candidate(raws[index])
        if _surely_invalid(candidate):
            candidates[index] = None
        else:
            candidates[index] = _parsed_e164(candidate, require_valid=True)
    return candidates


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


class _Patterns:
    """Compiled from phonenumbers' metadata once, at first use (0.2-0.5 s)."""

    def __init__(self) -> None:
        branches = {str(code): _code_pattern(code) for code in COUNTRY_CODE_TO_REGION_CODE}
        body = _trie(sorted(code for code, branch in branches.items() if branch), branches, "")
        self.valid = re.compile(rf"\+(?:{body})")
        self.national_prefixes = {
            str(code): re.compile(_main_metadata(code).national_prefix_for_parsing or "(?!)")
            for code in COUNTRY_CODE_TO_REGION_CODE
        }


@functools.cache
def _patterns() -> _Patterns:
    return _Patterns()


def _main_metadata(code: int) -> PhoneMetadata:
    """The metadata phonenumbers parses a number with this calling code by."""
    return PhoneMetadata.metadata_for_region_or_calling_code(
        code, COUNTRY_CODE_TO_REGION_CODE[code][0]
    )


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


def _code_pattern(code: int) -> str:
    """National numbers after `code` that parse unchanged and are valid; "" for none.

    phonenumbers validates against the first region (of those sharing the code) whose
    leading digits match, or, when a region has none, that the number is valid for. So a
    region with leading digits keeps the regions after it from being picked; one without
    is picked only when the number is valid for it, and then the number is valid anyway.
    """
    regions = COUNTRY_CODE_TO_REGION_CODE[code]
    prefix = _main_metadata(code).national_prefix_for_parsing
    alternatives = []
    not_chosen = ""
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None:
            continue
        valid = _valid_pattern(metadata)
        if metadata.leading_digits is not None:
            chosen = f"(?={metadata.leading_digits})"
            if valid:
                alternatives.append(not_chosen + chosen + valid)
            not_chosen += f"(?!{metadata.leading_digits})"
        elif valid:
            alternatives.append(not_chosen + valid)
    if not alternatives:
        return ""
    unstripped = f"(?!{prefix})" if prefix else ""
    return unstripped + "(?:" + "|".join(alternatives) + ")"


def _valid_pattern(metadata: PhoneMetadata) -> str:
    """phonenumbers' `_number_type_helper(...) != UNKNOWN` as one anchored pattern."""
    general = _desc_pattern(metadata.general_desc, None)
    if not general:
        return ""
    lengths = metadata.general_desc.possible_length
    types = [
        name
        for name in _NUMBER_TYPES
        if not (name == "mobile" and metadata.same_mobile_and_fixed_line_pattern)
    ]
    alternatives = [
        pattern
        for name in types
        if (pattern := _desc_pattern(getattr(metadata, name), lengths or None))
    ]
    if not alternatives:
        return ""
    return f"(?={general})(?:" + "|".join(alternatives) + ")"


def _desc_pattern(desc: PhoneNumberDesc | None, within: Sequence[int] | None) -> str:
    """`_is_number_matching_desc`: a possible length (the general description already
    checked `within`), then the whole national number matching; "" when nothing can."""
    if desc is None or not desc.national_number_pattern:
        return ""
    lengths = set(desc.possible_length)
    if lengths and within is not None:
        if lengths.isdisjoint(within):
            return ""
        length_check = "" if lengths.issuperset(within) else _length_pattern(lengths)
    else:
        length_check = _length_pattern(lengths) if lengths else ""
    return f"{length_check}(?:{desc.national_number_pattern})\\Z"


def _length_pattern(lengths: set[int]) -> str:
    return "(?=" + "|".join(f"[0-9]{{{length}}}\\Z" for length in sorted(lengths)) + ")"
