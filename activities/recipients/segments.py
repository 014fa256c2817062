"""How many SMS segments a message body takes, and in which encoding: GSM-7 or UCS-2."""

import itertools
import operator
import re
from collections.abc import Sequence

GSM7 = "gsm7"
UCS2 = "ucs2"

# GSM 03.38: the default alphabet (one septet each) and its extension table (an escape
# septet plus one, so two each). The escape character itself is not text.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = "\f^{}\\[~]|€"

# Units per single message, and per part of a concatenated one (the rest is the UDH).
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

_NOT_GSM7 = re.compile("[^" + re.escape(GSM7_BASIC + GSM7_EXTENSION) + "]")
_EXTENSION = re.compile("[" + re.escape(GSM7_EXTENSION) + "]")
_SINGLE_GSM7 = re.compile("[" + re.escape(GSM7_BASIC) + f"]{{0,{GSM7_SINGLE}}}")
# Not all GSM-7, and no character that takes two UTF-16 units (or cannot be encoded).
_SINGLE_UCS2 = re.compile(
    f"(?s)(?=.*{_NOT_GSM7.pattern})[^\ud800-\udfff\U00010000-\U0010ffff]{{0,{UCS2_SINGLE}}}"
)


def classify(body: str) -> tuple[str, int]:
    """The encoding a carrier must use for `body`, and how many segments it is sent as."""
    if _NOT_GSM7.search(body) is None:
        if _EXTENSION.search(body) is None:
            return GSM7, _segments(len(body), GSM7_SINGLE, GSM7_PART)
        widths = [2 if char in GSM7_EXTENSION else 1 for char in body]
        return GSM7, _packed(widths, GSM7_SINGLE, GSM7_PART)
    units = len(body.encode("utf-16-le")) // 2
    if units == len(body):
        return UCS2, _segments(units, UCS2_SINGLE, UCS2_PART)
    widths = [2 if ord(char) > 0xFFFF else 1 for char in body]
    return UCS2, _packed(widths, UCS2_SINGLE, UCS2_PART)


def classify_all(bodies: Sequence[str]) -> list[tuple[str, int]]:
    """`classify` of each body: single segments, of the GSM-7 default alphabet or of UCS-2
    without surrogate pairs, told by C-level passes, the rest one by one."""
    kinds = [(GSM7, 1)] * len(bodies)
    others = list(
        itertools.compress(
            itertools.count(), map(operator.not_, map(_SINGLE_GSM7.fullmatch, bodies))
        )
    )
    short = map(_SINGLE_UCS2.fullmatch, map(bodies.__getitem__, others))
    for index, match in zip(others, short, strict=True):
        kinds[index] = (UCS2, 1) if match else classify(bodies[index])
    return kinds


def _segments(units: int, single: int, part: int) -> int:
    return 1 if units <= single else -(-units // part)


def _packed(widths: list[int], single: int, part: int) -> int:
    """Segments when some characters take two units: a pair (an escape and its character,
    or a UTF-16 surrogate pair) is never split across two segments, so a part may hold one
    unit less than `part`."""
    if sum(widths) <= single:
        return 1
    segments, used = 1, 0
    for width in widths:
        if used + width > part:
            segments += 1
            used = 0
        used += width
    return segments
