"""The receipts listener's signature check (api/carrier_signature.py UrlSignatures, an HMAC
seeded with the token and the URL once and copied for each callback) agrees with twilio's own
RequestValidator, and with `signed_with`, for any form."""

import hmac

from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from api.carrier_signature import UrlSignatures, signed_with
from api.seeded_hmac import SeededHmac

TOKEN = "12345678901234567890123456789012"
URL = "https://herald.example:8443/v1/webhooks/twilio/status"

text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=24)
forms = st.dictionaries(text, text, max_size=12)


@settings(max_examples=300, deadline=None)
@given(forms, st.sampled_from([URL, URL + "?source=sms", "http://127.0.0.1:9/status"]))
def test_a_signature_twilio_computes_is_accepted(params: dict[str, str], url: str) -> None:
    # A token longer than SHA-1's block is hashed first (RFC 2104).
    for token in (TOKEN, "", TOKEN * 3):
        signature = RequestValidator(token).compute_signature(url, params)
        assert UrlSignatures(token, url).signed(params, signature)
        assert signed_with(token, url, params, signature)


@settings(max_examples=300, deadline=None)
@given(forms, st.from_regex(r"m=[0-9a-f-]{36}\.[0-9]{1,18}\.[0-9]{1,9}", fullmatch=True))
def test_a_signature_over_the_url_with_a_query_is_checked_with_it(
    params: dict[str, str], query: str
) -> None:
    # A batch message's callback: its URL's query holds the message's key (receipts.keyed_url).
    signature = RequestValidator(TOKEN).compute_signature(f"{URL}?{query}", params)
    signatures = UrlSignatures(TOKEN, URL)
    assert signatures.signed(params, signature, query.encode())
    assert not signatures.signed(params, signature)
    assert not signatures.signed(params, signature, query.encode() + b"0")


@settings(max_examples=300, deadline=None)
@given(forms, forms)
def test_a_signature_of_another_form_url_or_token_is_refused(
    params: dict[str, str], other: dict[str, str]
) -> None:
    signatures = UrlSignatures(TOKEN, URL)
    for signature in (
        RequestValidator(TOKEN).compute_signature(URL + "?x=1", params),
        RequestValidator(TOKEN[::-1]).compute_signature(URL, params),
        RequestValidator(TOKEN).compute_signature(URL, other),
    ):
        expected = signature == RequestValidator(TOKEN).compute_signature(URL, params)
        assert signatures.signed(params, signature) is expected
        assert signed_with(TOKEN, URL, params, signature) is expected
    # The seeded HMAC is copied, never updated: a check leaves the next one as it was.
    good = RequestValidator(TOKEN).compute_signature(URL, params)
    assert signatures.signed(params, good)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=130), st.binary(max_size=100), st.lists(st.binary(max_size=100)))
def test_a_seeded_hmac_is_the_hmac_of_its_prefix_and_each_message(
    key: bytes, prefix: bytes, messages: list[bytes]
) -> None:
    # Keys shorter than SHA-1's block, of it, and longer (hashed first); the seeded states are
    # copied, never changed, by each message.
    for key_of_size in (key, key[:64].ljust(64, b"k"), key.ljust(65, b"k")):
        seeded = SeededHmac(key_of_size, prefix)
        for message in [*messages, b""]:
            expected = hmac.new(key_of_size, prefix + message, "sha1").digest()
            assert seeded.digest(message) == expected
