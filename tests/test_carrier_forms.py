"""The carrier's form bodies are read as the standard library reads them: the status path's
own parser (api/carrier_signature.py) against `urllib.parse.parse_qsl`; and checked whole
(`storable_params`) as field by field."""

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.carrier_signature import MAX_FIELDS, storable_params, urlencoded_params
from api.errors import HeraldError, InvalidRequest
from api.input_checks import InvalidText, require_storable_fields

fields = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=24)), max_size=12)
raw = st.text(alphabet="ab=&%+2BE9D0é \x00", max_size=40)


def standard(body: bytes) -> dict[str, str]:
    text = body.decode("latin-1")
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS))


@settings(max_examples=300, deadline=None)
@given(fields)
def test_a_form_the_carrier_encodes_reads_as_parse_qsl_reads_it(
    form: list[tuple[str, str]],
) -> None:
    body = urlencode(form).encode()
    assert urlencoded_params(body) == standard(body)


@settings(max_examples=300, deadline=None)
@given(raw)
def test_any_body_reads_as_parse_qsl_reads_it(text: str) -> None:
    body = text.encode("latin-1")
    assert urlencoded_params(body) == standard(body)


def test_a_form_of_more_fields_than_the_limit_is_refused() -> None:
    assert len(urlencoded_params(b"&".join([b"a=1"] * MAX_FIELDS))) == 1
    with pytest.raises(InvalidRequest):
        urlencoded_params(b"&".join([b"a=1"] * (MAX_FIELDS + 1)))


def old_storable(body: bytes) -> dict[str, str] | str:
    """What the listener did before `storable_params`: read, then check each field."""
    try:
        params = urlencoded_params(body)
        require_storable_fields(params.items())
    except HeraldError as error:
        return error.code
    return params


@settings(max_examples=300, deadline=None)
@given(st.one_of(raw, fields.map(urlencode)))
def test_a_body_checked_whole_is_refused_or_read_as_field_by_field(text: str) -> None:
    body = text.encode("latin-1")
    try:
        got: dict[str, str] | str = storable_params(body)
    except HeraldError as error:
        got = error.code
    assert got == old_storable(body)


def test_a_nul_in_a_plain_body_is_refused_as_invalid_text() -> None:
    with pytest.raises(InvalidText):
        storable_params(b"From=%2B1555\x00&To=%2B1666")
    assert storable_params(b"From=%2B1555&To=%2B1666") == {"From": "+1555", "To": "+1666"}
