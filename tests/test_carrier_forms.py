"""The carrier's form bodies are read as the standard library reads them: the status path's
own parser (api/carrier_signature.py) against `urllib.parse.parse_qsl`."""

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.carrier_signature import MAX_FIELDS, urlencoded_params
from api.errors import InvalidRequest

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
