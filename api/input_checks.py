"""The checks every request passes before any route sees it, so that no route can hand
PostgreSQL a value it refuses: text without NUL characters or lone surrogates (in the path,
the query, the headers, a JSON or form body), and in a JSON body numbers that are finite and
fit in 64 bits, and arrays and objects nested no deeper than `MAX_JSON_DEPTH`. Integers in
queries and headers are bounded where each is declared, with the limits below."""

import itertools
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import HeraldError, InvalidRequest, herald_error_response, http_error_response
from store.messages import UNSTORABLE

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Columns of type `int` (a batch's event `seq`) hold less than a query's bigint.
INT32_MAX = 2**31 - 1
# Levels of arrays and objects a JSON body may nest (the body itself is the first): far more
# than any request needs, far fewer than pydantic serializes (a request's hash, its jsonb).
MAX_JSON_DEPTH = 64


class InvalidText(HeraldError):
    code = "INVALID_TEXT"


class InvalidNumber(HeraldError):
    code = "INVALID_NUMBER"


def require_storable(text: str, where: str) -> None:
    """400 `INVALID_TEXT` if `text` holds a NUL character or a lone surrogate."""
    if UNSTORABLE.search(text):
        raise InvalidText(f"{where} holds a NUL character or a lone surrogate")


def media_type(content_type: str) -> str:
    """A `Content-Type`'s media type, without its parameters, in lower case."""
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of this content type as JSON (it does without one, or with
    an empty one: `strict_content_type` is off, api/app.py)."""
    if not content_type:
        return True
    media = media_type(content_type)
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def too_deep(where: str) -> InvalidRequest:
    return InvalidRequest(f"{where} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")


# Where a value is in a JSON document: the place of what holds it and its own part (`.key`,
# `[3]`), or the document's name. Its text is made only for an error: made for every value,
# a long key's text was copied into each item under it (a 1 MB body took gigabytes).
Place: TypeAlias = tuple["Place | None", str | int]
# The characters of a key an error names: the caller's own text, echoed back.
SHOWN_KEY_CHARS = 64


def _where(place: Place) -> str:
    parts: list[str] = []
    node: Place | None = place
    while node is not None:
        node, part = node
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(part if node is None else f".{_shown(part)}")
    return "".join(reversed(parts))


def _shown(key: str) -> str:
    return key if len(key) <= SHOWN_KEY_CHARS else key[:SHOWN_KEY_CHARS] + "..."


def _json_values(document: Any, root: str) -> Iterator[tuple[Place, bool, Any]]:
    """Every key and value of a JSON document with where it is (a key: in what holds it, the
    flag set), without recursion; 400 `INVALID_REQUEST` for arrays and objects nested deeper
    than `MAX_JSON_DEPTH`."""
    pending: list[tuple[Place, Any, int]] = [((None, root), document, 1)]
    while pending:
        place, value, depth = pending.pop()
        if isinstance(value, dict | list) and depth > MAX_JSON_DEPTH:
            raise too_deep(_where(place))
        if isinstance(value, dict):
            for key, item in value.items():
                yield place, True, key
                pending.append(((place, key), item, depth + 1))
        elif isinstance(value, list):
            pending.extend(((place, i), item, depth + 1) for i, item in enumerate(value))
        else:
            yield place, False, value


def check_json(document: Any, root: str = "body") -> None:
    """400 for what no route could store or serialize in `document` (a JSON body, or a JSON
    value a body gives as a string, `root` naming it): `INVALID_TEXT`, `INVALID_NUMBER`, or
    `INVALID_REQUEST` for nesting deeper than `MAX_JSON_DEPTH`."""
    for place, is_key, value in _json_values(document, root):
        # The keys on the way are checked before their values.
        if isinstance(value, str):
            if UNSTORABLE.search(value):
                where = _where(place)
                require_storable(value, f"a key in {where}" if is_key else where)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidNumber(f"{_where(place)} is not a finite number")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidNumber(f"{_where(place)} is beyond a 64-bit integer")


def check_form(body: bytes) -> None:
    require_storable_fields(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def require_storable_fields(fields: Iterable[tuple[str, str]]) -> None:
    """`require_storable` for each form field's name and value: one search when all are."""
    fields = list(fields)
    if not UNSTORABLE.search("".join(itertools.chain.from_iterable(fields))):
        return
    for name, value in fields:
        require_storable(name, "a form field's name")
        require_storable(value, f"form field {name!r}")


class InputChecks:
    """An ASGI middleware: 400 `INVALID_TEXT`, `INVALID_NUMBER` or `INVALID_REQUEST` (nesting)
    for what no route could store. A JSON or form body is read whole to be checked (the body
    size limit, outside this middleware, bounds it) and handed on as it came; any other body
    streams through."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        media = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"content-type"),
            None,
        )
        form = (media or "").lower().startswith("application/x-www-form-urlencoded")
        try:
            require_storable(scope["path"], "the path")
            query = scope["query_string"].decode("latin-1")
            for name, value in parse_qsl(query, keep_blank_values=True):
                require_storable(name, "a query parameter's name")
                require_storable(value, f"query parameter {name!r}")
            for name, value in scope["headers"]:
                if b"\x00" in value:
                    raise InvalidText(f"header {name.decode('latin-1')!r} holds a NUL byte")
            if not (_is_json(media) or form):
                await self._app(scope, receive, send)
                return
            body = await _read_body(receive)
            if form:
                check_form(body)
            elif body:
                _check_json_body(body)
        except HeraldError as error:
            await herald_error_response(scope["path"], error)(scope, receive, send)
            return
        except HTTPException as error:
            await http_error_response(scope["path"], error)(scope, receive, send)
            return
        await self._app(scope, _replaying(body, receive), send)


def _check_json_body(body: bytes) -> None:
    """`check_json` of a body, parsed here: the document is let go before the route parses
    the body again (held through the request, it doubled the memory a large body costs)."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError:
        return  # Not JSON: FastAPI's own parsing says why.
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not JSON in UTF-8") from None
    except ValueError:
        # The json module's limit on an integer's digits (4,300): past 64 bits.
        raise InvalidNumber("the body holds an integer beyond 64 bits") from None
    except RecursionError:
        raise too_deep("body") from None
    check_json(document)


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` that gives `body` whole first, then whatever the client sends next."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
