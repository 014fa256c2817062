"""The column path's encodings and segments, told from a template's text and each row's
values, are `classify`'s of the rendered body; a row `classify` would have to pack is
settled one by one instead."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from activities.recipients import columns
from activities.recipients.frames import pl
from activities.recipients.rows import (
    Recipient,
    RecipientRules,
    request_defaults,
    row_outcome,
    variable_sources,
)
from activities.recipients.segments import GSM7, GSM7_EXTENSION, UCS2, classify

HEADER = ["phone_number", "first_name", "code"]
VALUE = st.text(
    alphabet=st.sampled_from("aZ09 @£€[]^{}~|\\\f\nЖé😀\u00a0ÇΔ"), max_size=90
) | st.sampled_from(["Ann", "Жанна", "€", "😀", "", "  "])
TEMPLATE = st.sampled_from(
    [
        "Hi {{first_name}}, your code is {{code}}.",
        "{{first_name}}{{code}}",
        "Привет {{first_name}} {{code}}",
        "€ {{code}} {{first_name}} ~",
        "😀 {{first_name}}",
        "No variables at all",
        "{{first_name}} " + "x" * 150,
        "€{{first_name}}{{code}}",
        "Zoë 😀{{code}}",
    ]
)
# Values of GSM-7's default alphabet, not blank, their lengths spread over the limits of
# one and of several segments: when every row has such values, all are rendered at once
# and the template's text alone decides their encoding and the characters to count.
BASIC = st.builds(
    lambda spaces, solid, rest, length: spaces + solid + rest + "a" * length,
    st.text(alphabet=st.sampled_from(" \n\r"), max_size=2),
    st.sampled_from("aZ09@£$Ç_Δ!?ñ"),
    st.text(alphabet=st.sampled_from("aZ09 @£$Ç_Δ!?ñ\n"), max_size=10),
    st.integers(min_value=0, max_value=170),
)


def outcomes(template: str, cells: list[tuple[str, str]], max_chars: int) -> list[tuple]:
    rules = RecipientRules(max_rows=1000, max_message_chars=max_chars, agent_message=template)
    frame = pl.DataFrame(
        [("+14155552671", name, code) for name, code in cells],
        schema=dict.fromkeys(HEADER, pl.String),
        orient="row",
    ).with_row_index(columns._ROW, offset=1)
    table = columns._rendered(
        frame,
        template,
        rules,
        variable_sources(HEADER, rules.column_mapping),
        request_defaults(rules),
    )
    return list(table.iter_rows())


def expected(body: str, max_chars: int) -> tuple[str, int, bool]:
    """`classify`'s encoding and segments, and whether the row is settled one by one: over
    the length limit, or packed (GSM-7 with an extension character over one segment, UCS-2
    with a character beyond the BMP)."""
    encoding, segments = classify(body)
    gsm7 = encoding == GSM7
    extensions = sum(char in GSM7_EXTENSION for char in body)
    astral = any(ord(char) > 0xFFFF for char in body)
    packed = (gsm7 and extensions > 0 and len(body) + extensions > 160) or (not gsm7 and astral)
    return encoding, segments, len(body) > max_chars or packed


@settings(max_examples=300, deadline=None)
@given(
    template=TEMPLATE,
    cells=st.lists(st.tuples(VALUE, VALUE), min_size=1, max_size=25)
    | st.lists(st.tuples(BASIC, BASIC), min_size=1, max_size=25),
    max_chars=st.sampled_from([1600, 100]),
)
def test_encodings_are_classify_s_of_the_body(
    template: str, cells: list[tuple[str, str]], max_chars: int
) -> None:
    for body, encoding, segments, settle in outcomes(template, cells, max_chars):
        if body == "":
            continue  # a value missing: `_settle_rows` settles an empty body one by one
        want_encoding, want_segments, want_settle = expected(body, max_chars)
        assert settle == want_settle, body
        if not settle:
            assert (encoding, segments) == (want_encoding, want_segments), body


@pytest.mark.parametrize(
    ("name", "encoding"),
    [("Ann", GSM7), ("Ann€", GSM7), ("Жанна", UCS2), ("A" + GSM7_EXTENSION, GSM7), ("Zoë", UCS2)],
)
def test_a_value_s_characters_decide_the_encoding(name: str, encoding: str) -> None:
    [(body, found, segments, settle)] = outcomes("Hi {{first_name}} {{code}}", [(name, "1")], 1600)
    assert (body, found, segments, settle) == (f"Hi {name} 1", encoding, 1, False)


SOURCED_HEADER = ["phone_number", "request_data.name", "name", "code"]
SOURCED_TEMPLATE = st.sampled_from(
    [
        "Hi {{name}}, your code is {{code}}; {{sign}}",
        "{{name}}{{sign}}{{code}}",
        "Привет {{name}} {{sign}}",
        "{{sign}} € {{name}}",
        # Braces in the text are text (`pl.format`'s own placeholders are escaped).
        "{} {{name}} }{ {0} {x} {{code}} {{{sign}}}",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    template=SOURCED_TEMPLATE,
    cells=st.lists(st.tuples(VALUE, VALUE, VALUE), min_size=1, max_size=25),
    defaults=st.fixed_dictionaries({}, optional={"name": VALUE, "code": VALUE, "sign": VALUE}),
)
def test_values_from_several_sources_and_defaults_render_as_row_outcome(
    template: str, cells: list[tuple[str, str, str]], defaults: dict[str, str]
) -> None:
    """A variable's value from its first non-blank source column, else its default (`sign`
    has no column): each row's body, encoding and segments are `row_outcome`'s, and a row
    with a value missing has no body, to be settled one by one."""
    assert_renders_as_row_outcome(template, cells, defaults)


# Values that are never blank, many outside GSM-7's default alphabet: the rows not rendered
# at once are then each their first sources' cells (`_slow_rows` only tells encodings).
SOLID = st.text(
    alphabet=st.sampled_from("aZ09 @£€[]^{}~|\\\f\nЖéç😀\u00a0ÇΔ"), min_size=1, max_size=90
).filter(lambda value: not value.isspace()) | st.sampled_from(["François", "Жанна", "€", "😀"])


@settings(max_examples=300, deadline=None)
@given(
    template=SOURCED_TEMPLATE,
    cells=st.lists(st.tuples(SOLID, VALUE, SOLID), min_size=1, max_size=25),
    sign=SOLID,
)
# Extension characters in a value: over one segment, a GSM-7 body `classify` must pack.
@example(
    template="{{name}}{{sign}}{{code}}", cells=[("Ann", "", "1"), ("€" * 90, "", "a")], sign="x"
)
def test_rows_of_non_blank_first_values_render_as_row_outcome(
    template: str, cells: list[tuple[str, str, str]], sign: str
) -> None:
    assert_renders_as_row_outcome(template, cells, {"sign": sign})


def assert_renders_as_row_outcome(
    template: str, cells: list[tuple[str, str, str]], defaults: dict[str, str]
) -> None:
    rules = RecipientRules(
        max_rows=1000, max_message_chars=1600, agent_message=template, request_data=defaults
    )
    rows = [("+14155552671", *row) for row in cells]
    frame = pl.DataFrame(
        rows, schema=dict.fromkeys(SOURCED_HEADER, pl.String), orient="row"
    ).with_row_index(columns._ROW, offset=1)
    sources = variable_sources(SOURCED_HEADER, rules.column_mapping)
    table = columns._rendered(frame, template, rules, sources, request_defaults(rules))
    for row, (body, encoding, segments, settle) in zip(rows, table.iter_rows(), strict=True):
        values = dict(zip(SOURCED_HEADER, row, strict=True))
        outcome = row_outcome(1, values, "+14155552671", rules, sources, request_defaults(rules))
        if not isinstance(outcome, Recipient):
            assert body == "", outcome
            continue
        assert body == outcome.body
        if not settle:
            assert (encoding, segments) == (outcome.encoding, outcome.segments), body
