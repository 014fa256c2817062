"""Short links: every http(s) URL of a rendered message replaced by `<base>/s/<code>`.

Pure but for the randomness of the codes: validation calls `shorten` on each message and
records the codes with the ledger (store/links.py).
"""

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from activities.recipients.rows import Recipient
from activities.recipients.segments import classify

SHORT_LINK_PATH = "/s/"
# 8 random bytes, 11 URL-safe characters: 64 bits, so a code cannot be guessed (a batch of
# a million links leaves a guess a chance of one in 2**44).
CODE_BYTES = 8
CODE_CHARS = 11
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


def new_code() -> str:
    return secrets.token_urlsafe(CODE_BYTES)


def is_code(text: str) -> bool:
    """Whether `text` has a code's shape (length and alphabet), before looking it up."""
    return len(text) == CODE_CHARS and re.fullmatch(r"[A-Za-z0-9_-]+", text) is not None


def shorten(
    body: str, base_url: str, make_code: Callable[[], str] = new_code
) -> tuple[str, list[ShortLink]]:
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


def shorten_recipient(recipient: Recipient, base_url: str) -> list[ShortLink]:
    """Shorten a message's URLs in place, its encoding and segments those of the shortened
    text; the links made."""
    recipient.body, made = shorten(recipient.body, base_url)
    if made:
        recipient.encoding, recipient.segments = classify(recipient.body)
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
