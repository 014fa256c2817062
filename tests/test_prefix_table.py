"""The prefix tables (`prefix_table`) decide a number as the calling codes' plans walked by
regex passes (`phone_columns._walked`) do, and as phonenumbers does; their patterns'
rewriting answers for every number of a set, never for some."""

import random
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from activities.recipients import phone_columns, prefix_table
from activities.recipients.frames import pl
from activities.recipients.phones import code_plans, valid_e164s
from tests.support.builders import example_numbers

CODES = sorted(str(code) for code in COUNTRY_CODE_TO_REGION_CODE)
# The codes most files hold, and codes sharing themselves among regions with leading digits.
BUSY = ["1", "7", "33", "39", "44", "49", "61", "86", "91", "262", "590", "599"]


def table_and_walk(raws: list[str]) -> tuple[list[int | None], list[str | None]]:
    cells = pl.Series(raws, dtype=pl.String)
    return phone_columns._table_verdicts(cells).to_list(), phone_columns._walked(cells).to_list()


def assert_agree(raws: list[str]) -> None:
    verdicts, walked = table_and_walk(raws)
    for raw, verdict, number in zip(raws, verdicts, walked, strict=True):
        if verdict == prefix_table.VALID:
            assert number is not None, raw
        elif verdict == prefix_table.INVALID:
            assert number is None, raw
    assert phone_columns.valid_e164_column(pl.Series(raws, dtype=pl.String)).to_list() == walked


def test_the_tables_decide_most_example_numbers_as_the_walk_does() -> None:
    numbers = example_numbers()
    verdicts, walked = table_and_walk(numbers)
    decided = [v for v in verdicts if v in (prefix_table.VALID, prefix_table.INVALID)]
    # Without the tables deciding, this test would show nothing.
    assert len(decided) > len(numbers) * 0.8
    assert_agree(numbers)
    assert walked == valid_e164s(numbers)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=st.sampled_from(CODES) | st.sampled_from(BUSY),
    national=st.text(alphabet="0123456789", max_size=18),
    plus=st.sampled_from(["+", "", "++", "-", " "]),
)
@example(code="1", national="2015550123", plus="+")
@example(code="1", national="12015550123", plus="")
@example(code="44", national="07400123456", plus="+")
@example(code="1", national="9" * 18, plus="+")
@example(code="7", national="7012345678", plus="")
def test_digits_after_every_calling_code(code: str, national: str, plus: str) -> None:
    assert_agree([plus + code + national])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=st.sampled_from(BUSY),
    length=st.integers(0, prefix_table.LONGEST),
    seed=st.integers(0, 2**32),
)
def test_every_set_a_table_decides_is_decided_alike(code: str, length: int, seed: int) -> None:
    """Numbers drawn from decided cells of a table: the walk gives each the cell's verdict."""
    table = prefix_table.code_tables(code)[length]
    rng = random.Random(seed)
    raws = []
    for _ in range(20):
        place = rng.randrange(len(table.verdicts))
        head = f"{place:0{table.depth}d}" if table.depth else ""
        rest = "".join(rng.choice("0123456789") for _ in range(length - table.depth))
        raws.append(f"+{code}{head}{rest}")
    assert_agree(raws)


def plan_patterns() -> list[tuple[str, bool]]:
    """Every pattern of every plan, and whether it is matched whole (descriptions) or at
    the start (national prefixes, leading digits)."""
    found = set()
    for plan in code_plans().values():
        if plan.national_prefix:
            found.add((plan.national_prefix, False))
        for region in plan.regions:
            if region.leading:
                found.add((region.leading, False))
            for desc in [region.general, *region.types]:
                if desc is not None:
                    found.add((desc.pattern, True))
    return sorted(found)


PATTERNS = plan_patterns()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.sampled_from(PATTERNS),
    known=st.text(alphabet="0123456789", max_size=5),
    unknown=st.integers(0, 12),
    seed=st.integers(0, 2**32),
)
@example(pattern=(r"[2-9]\d{9}|3\d{6}", True), known="20", unknown=8, seed=0)
@example(pattern=("0|180020", False), known="1", unknown=9, seed=0)
def test_a_rewritten_pattern_answers_for_every_number_of_a_set(
    pattern: tuple[str, bool], known: str, unknown: int, seed: int
) -> None:
    text, whole = pattern
    answer = prefix_table._pattern(text).test(known + "X" * unknown, whole=whole)
    compiled = re.compile(text)
    rng = random.Random(seed)
    digits = ["0" * unknown, "9" * unknown]
    digits += ["".join(rng.choice("0123456789") for _ in range(unknown)) for _ in range(30)]
    for rest in digits:
        number = known + rest
        matched = (compiled.fullmatch if whole else compiled.match)(number) is not None
        if answer == prefix_table.ALL:
            assert matched, number
        elif answer == prefix_table.NONE:
            assert not matched, number


def test_patterns_beyond_the_rewriting_answer_some() -> None:
    for pattern in [r"(?=1)\d", r"[^1]2", r"\s1", r"1.", "(?!0)1"]:
        assert prefix_table._pattern(pattern).test("1X", whole=True) == prefix_table.SOME
    assert prefix_table._pattern(r"1\d{2}").test("1XX", whole=True) == prefix_table.ALL
    assert prefix_table._pattern(r"1[0-8]\d").test("1XX", whole=True) == prefix_table.SOME
    assert prefix_table._pattern(r"2[0-8]\d").test("1XX", whole=True) == prefix_table.NONE
