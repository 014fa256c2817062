"""Short links: every http(s) URL of a rendered message replaced by `<base>/s/<code>`.

Pure but for the randomness of the codes: validation calls `shorten_recipients` on each
block of messages and records the links with the ledger (store/links.py).
"""

import base64
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from activities.recipients.rows import Recipient
from activities.recipients.segments import classify_all

SHORT_LINK_PATH = "/s/"
# 9 random bytes, 12 URL-safe characters (no padding): 72 bits, so a code cannot be guessed
# (with a billion links recorded, a guess has a chance of one in 2**42).
CODE_BYTES = 9
CODE_CHARS = 12
# Codes made at a time: one read of the system's randomness and one encoding for them all.
CODES_AT_ONCE = 1024
# A URL runs to the next whitespace or a character that cannot be in one unescaped; the
# punctuation that usually ends the sentence around it is not part of it.
URL = re.compile(r"""https?://[^\s<>"'`{}|\\^]+""", re.IGNORECASE)
_TRAILING = ".,;:!?)]"
# A closing bracket stays when the URL opened one (as in a Wikipedia link).
_PAIRS = {")": "(", "]": "["}


@dataclass(frozen=True, slots=True)
class ShortLink:
    code: str
    url: str


class Codes:
    """New codes, one per call, made `CODES_AT_ONCE` at a time."""

    def __init__(self) -> None:
        self._made: list[str] = []

    def __call__(self) -> str:
        if not self._made:
            text = base64.urlsafe_b64encode(secrets.token_bytes(CODE_BYTES * CODES_AT_ONCE))
            self._made = [
                text[start : start + CODE_CHARS].decode()
                for start in range(0, len(text), CODE_CHARS)
            ]
        return self._made.pop()


def is_code(text: str) -> bool:
    """Whether `text` has a code's shape (length and alphabet), before looking it up."""
    return len(text) == CODE_CHARS and re.fullmatch(r"[A-Za-z0-9_-]+", text) is not None


def shorten(body: str, base_url: str, make_code: Callable[[], str]) -> tuple[str, list[ShortLink]]:
    """`body` with each URL replaced by its short link, and the links, in order; a URL that
    appears twice gets a code each time (one code per place in the message)."""
    if "://" not in body:
        return body, []
    prefix = base_url.rstrip("/") + SHORT_LINK_PATH
    links: list[ShortLink] = []

    def replace(match: re.Match[str]) -> str:
        url = _trimmed(match.group())
        if "://" not in url or url.endswith("://"):
            return match.group()
        code = make_code()
        links.append(ShortLink(code, url))
        return prefix + code + match.group()[len(url) :]

    return URL.sub(replace, body), links


def shorten_recipients(
    recipients: Sequence[Recipient], base_url: str, codes: Codes
) -> list[tuple[int, ShortLink]]:
    """Shorten the messages' URLs in place, their encodings and segments those of the
    shortened texts; the links made, each with its message's index in `recipients`."""
    made: list[tuple[int, ShortLink]] = []
    changed: list[Recipient] = []
    for index, recipient in enumerate(recipients):
        recipient.body, links = shorten(recipient.body, base_url, codes)
        if links:
            changed.append(recipient)
            made += [(index, link) for link in links]
    kinds = classify_all([recipient.body for recipient in changed])
    for recipient, (encoding, segments) in zip(changed, kinds, strict=True):
        recipient.encoding, recipient.segments = encoding, segments
    return made


def _trimmed(url: str) -> str:
    """The URL without the sentence punctuation that follows it."""
    while url and url[-1] in _TRAILING:
        last = url[-1]
        opener = _PAIRS.get(last)
        if opener is not None and url.count(opener) >= url.count(last):
            break
        url = url[:-1]
    return url
