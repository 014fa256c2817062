"""The one pagination style of Herald's own list endpoints (`/v1/...`): `limit` and an opaque
`cursor` in the query, `next_cursor` in the answer (null on the last page). A cursor is the
name of its list and the last item's sort key, as a JSON array in URL-safe base64; the store
reads the page after it by that key (keyset pagination, no OFFSET). The name (with the batch or
mailing list the list is within) makes a cursor of one list no cursor of another whose key has
the same shape. The dialects (Postman's `pageData`, Mobivate) keep
their own documented styles."""

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from api.errors import HeraldError
from api.input_checks import INT64_MAX, INT64_MIN, InvalidText, require_storable

# A cursor Herald gives is well under this; a longer one is not one of its own.
MAX_CURSOR_CHARS = 512
MAX_LIMIT = 1000
# What `encode` gives: URL-safe base64 without its padding.
_CURSOR = re.compile("[A-Za-z0-9_-]+")

Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        description="The `next_cursor` of the page before; none for the first page.",
    ),
]


# Each route gives its own default page size.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, 1 to {MAX_LIMIT}.")]


# The kinds of value a sort key holds, in the store's own types.
KeyKind = type[int] | type[str] | type[datetime] | type[uuid.UUID]
Key = tuple[Any, ...]
Row = TypeVar("Row")


class InvalidCursor(HeraldError):
    code = "INVALID_CURSOR"


class CursorPage(BaseModel):
    """What every list endpoint's page has besides its items."""

    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


def encode(key: Key, *, of: str) -> str:
    """The cursor of the page after `key` in the list named `of`."""
    values = [of] + [str(value) if isinstance(value, uuid.UUID) else value for value in key]
    values = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    text = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _value(kind: KeyKind, value: Any) -> Any:
    if kind is int:
        if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("not a 64-bit integer")
        return value
    if not isinstance(value, str):
        raise ValueError("not a string")
    require_storable(value, "the cursor")
    if kind is datetime:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a time without its offset")
        # As PostgreSQL is given it, in UTC: 0001-01-01T00:00+14:00 is before year 1 there.
        moment.astimezone(UTC)
        return moment
    if kind is uuid.UUID:
        return uuid.UUID(value)
    return value


def decode(cursor: str | None, kinds: Sequence[KeyKind], *, of: str) -> Key | None:
    """The sort key a cursor of the list named `of` holds (None: the first page); 400
    `INVALID_CURSOR` for anything that is not a cursor of that list."""
    if cursor is None:
        return None
    try:
        if len(cursor) > MAX_CURSOR_CHARS or not _CURSOR.fullmatch(cursor):
            raise ValueError("not unpadded URL-safe base64, or too long")
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        values = json.loads(raw)
        if not isinstance(values, list) or values[:1] != [of] or len(values) != len(kinds) + 1:
            raise ValueError("not a key of this list")
        return tuple(_value(kind, value) for kind, value in zip(kinds, values[1:], strict=True))
    except (
        ValueError,
        OverflowError,
        binascii.Error,
        UnicodeDecodeError,
        RecursionError,
        InvalidText,
    ):
        raise InvalidCursor(
            "cursor is not a `next_cursor` this endpoint gave; leave it out for the first page"
        ) from None


def page(
    rows: Sequence[Row], limit: int, key: Callable[[Row], Key], *, of: str
) -> tuple[list[Row], str | None]:
    """The page of `rows`, which the store read as up to `limit + 1` after the cursor, and
    the cursor of the next page: the key of its last item, if a further row came."""
    if len(rows) <= limit:
        return list(rows), None
    kept = list(rows[:limit])
    return kept, encode(key(kept[-1]), of=of)
