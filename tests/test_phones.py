"""valid_e164s, which decides most numbers by a pattern, and valid_e164_column, which decides
them by vectorised passes, give exactly phonenumbers' answer."""

from unittest import mock

import phonenumbers
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from activities.recipients import phone_columns
from activities.recipients.frames import pl
from activities.recipients.phone_columns import possible_e164_column, valid_e164_column
from activities.recipients.phones import possible_e164s, to_e164, valid_e164s
from tests.support.builders import example_numbers

CODES = sorted(str(code) for code in COUNTRY_CODE_TO_REGION_CODE)


def reference(raw: str) -> str | None:
    """Herald's rule written with phonenumbers alone: strip, add `+`, parse, validate."""
    candidate = raw.strip()
    if not candidate.startswith("+"):
        candidate = "+" + candidate
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


EXAMPLES = example_numbers()


def mutations(number: str) -> list[str]:
    """Near misses: each digit changed, one digit dropped or added, national prefixes put
    back after the calling code, the `+` dropped."""
    digits = number[1:]
    near = [digits, digits[:-1], digits + "0", digits + "9"]
    for index in range(1, len(digits)):
        near.append(digits[:index] + "0" + digits[index:])
        near.append(digits[:index] + "1" + digits[index:])
        near.append(digits[:index] + digits[index + 1 :])
        near.append(digits[:index] + str((int(digits[index]) + 1) % 10) + digits[index + 1 :])
    return [f"+{variant}" for variant in near] + near


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("+14155552671", "+14155552671"),
        ("14155552671", "+14155552671"),
        ("  +14155552671\t", "+14155552671"),
        ("+114155552671", "+14155552671"),  # the US national prefix 1, stripped
        ("+1 415 555 2671", "+14155552671"),
        ("+12423570000", "+12423570000"),  # Bahamas, sharing +1
        ("+447911123456", "+447911123456"),
        ("+4407911123456", "+447911123456"),  # the UK national prefix 0, stripped
        ("+447624123456", "+447624123456"),  # Isle of Man, sharing +44
        ("+390612345678", "+390612345678"),  # Italy keeps its leading zero
        ("+79123456789", "+79123456789"),
        ("+77012345678", "+77012345678"),  # Kazakhstan, sharing +7
        ("+٠١٢", None),
        ("+١٤١٥٥٥٥٢٦٧١", "+14155552671"),  # Arabic-Indic digits
        ("+0014155552671", None),
        ("++14155552671", "+14155552671"),
        ("+1415555267", None),
        ("+1", None),
        ("+", None),
        ("", None),
        ("call me", None),
        ("+80012345678", "+80012345678"),  # international freephone, no region
    ],
)
def test_known_numbers(raw: str, expected: str | None) -> None:
    assert reference(raw) == expected
    assert to_e164(raw) == expected
    assert valid_e164s([raw]) == [expected]


def test_every_example_number_and_its_near_misses() -> None:
    numbers = [variant for number in EXAMPLES for variant in [number, *mutations(number)]]
    assert len(EXAMPLES) > 1000
    expected = [reference(number) for number in numbers]
    assert valid_e164s(numbers) == expected
    assert sum(result is not None for result in expected) > len(EXAMPLES)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=st.sampled_from(CODES),
    national=st.text(alphabet="0123456789", max_size=17),
    plus=st.booleans(),
)
@example(code="1", national="14155552671", plus=True)
@example(code="54", national="91123456789", plus=True)
def test_digits_after_every_calling_code(code: str, national: str, plus: bool) -> None:
    raw = ("+" if plus else "") + code + national
    assert valid_e164s([raw]) == [reference(raw)]


@settings(max_examples=1000, deadline=None)
@given(
    number=st.sampled_from(EXAMPLES),
    edits=st.lists(st.tuples(st.integers(1, 16), st.sampled_from("0123456789 -()+.x")), max_size=3),
)
def test_edited_example_numbers(number: str, edits: list[tuple[int, str]]) -> None:
    raw = number
    for position, char in edits:
        raw = raw[:position] + char + raw[position:]
    assert valid_e164s([raw]) == [reference(raw)]


def test_senders_need_only_a_possible_number() -> None:
    assert to_e164("+19995550100", require_valid=False) == "+19995550100"
    assert to_e164("+19995550100") is None
    assert to_e164("+1999555010", require_valid=False) is None


def column(raws: list[str]) -> list[str | None]:
    """valid_e164_column's answer, the same whether a calling code's regions are walked by
    polars passes or the rows left after its first region go to valid_e164s."""
    answers = []
    for walk_min in (0, len(raws) + 1):
        with mock.patch.object(phone_columns, "_WALK_MIN", walk_min):
            answers.append(valid_e164_column(pl.Series(raws, dtype=pl.String)).to_list())
    assert answers[0] == answers[1]
    return answers[0]


def test_the_column_form_agrees_on_every_example_number_and_its_near_misses() -> None:
    numbers = [variant for number in EXAMPLES for variant in [number, *mutations(number)]]
    # Cells the plans leave to phonenumbers: other digits, spaces, a prefix to strip.
    numbers += ["+١٤١٥٥٥٥٢٦٧١", " +14155552671", "+1 415 555 2671", "+114155552671", "", "x"]
    assert column(numbers) == valid_e164s(numbers)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.lists(
        st.tuples(
            st.sampled_from(CODES),
            st.text(alphabet="0123456789", max_size=17),
            st.sampled_from(["+", "", "++", " "]),
        ).map(lambda cell: cell[2] + cell[0] + cell[1]),
        min_size=1,
        max_size=60,
    )
)
def test_the_column_form_agrees_on_digits_after_every_calling_code(cells: list[str]) -> None:
    assert column(cells) == [reference(cell) for cell in cells]


@settings(max_examples=200, deadline=None)
@given(
    numbers=st.lists(st.sampled_from(EXAMPLES), min_size=1, max_size=30),
    edits=st.lists(
        st.tuples(st.integers(1, 16), st.sampled_from("0123456789 -()+.x٣")), max_size=3
    ),
)
def test_the_column_form_agrees_on_edited_example_numbers(
    numbers: list[str], edits: list[tuple[int, str]]
) -> None:
    edited = []
    for number in numbers:
        for position, char in edits:
            number = number[:position] + char + number[position:]
        edited.append(number)
    assert column(edited) == [reference(number) for number in edited]


# What each `number_check` refuses: `valid` the numbers in unassigned ranges (the Bland and
# Postman documents' examples among them), `possible` only wrong lengths and no number.
NUMBER_CHECKS = [
    ("+14155552671", "+14155552671", "+14155552671"),
    ("+10987654321", None, "+10987654321"),
    ("6599999999", None, "+6599999999"),
    ("+1415555267", None, None),
    ("+0123456789", None, None),
    ("not a number", None, None),
    ("", None, None),
]


@pytest.mark.parametrize(("raw", "valid", "possible"), NUMBER_CHECKS)
def test_what_each_number_check_takes(raw: str, valid: str | None, possible: str | None) -> None:
    valid_form = valid_e164s([raw])

    assert valid_form == [valid]
    assert possible_e164s([raw], valid_form) == [possible]
    cells = pl.Series([raw], dtype=pl.String)
    assert possible_e164_column(cells, valid_e164_column(cells)).to_list() == [possible]
