"""Request limits: body size (an ASGI middleware, so nothing reads an oversized body) and the
per-key request rate (a token bucket on the key's row, `store/buckets.py`, spent as the key
is checked in `api/deps.py`; the Postman dialect's routes spend their campaign's instead)."""

import math
import re
import uuid

import asyncpg
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import HeraldError, InvalidRequest, error_reply
from settings import Settings
from store import buckets

# Multipart adds boundaries and headers around the file; the upload limit is on the file.
MULTIPART_OVERHEAD = 64 * 1024


class PayloadTooLarge(HeraldError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class RateLimited(HeraldError):
    status_code = 429
    code = "RATE_LIMITED"


async def spend_key_rate(pool: asyncpg.Pool, settings: Settings, key_id: uuid.UUID) -> None:
    """Spend one request of the key's rate, on its row, so that the limit holds across API
    processes; RateLimited when it is used up."""
    wait = await buckets.take(
        pool,
        "api_keys",
        key_id,
        per_second=settings.rate_limit_per_second,
        burst=settings.rate_limit_burst,
    )
    if wait is not None:
        raise RateLimited(
            f"more than {settings.rate_limit_per_second:g} requests a second with this key;"
            " retry later",
            headers={"retry-after": str(math.ceil(wait))},
        )


# Requests whose JSON body may hold a batch's recipients inline: uploads in all but form.
BATCH_PATHS = frozenset({"/v1/sms/batch", "/send/batch"})
# The routes that take a file (multipart): only their bodies may be as large as an upload,
# since every body is read (and a form parsed) before the key or signature is checked.
UPLOAD_PATHS = re.compile(
    r"/v1/files/attach|/v1/lists/[^/]+/contacts/(upload|remove)|/campaigns/[^/]+/batch/messages"
)


class BodySizeLimit:
    """413 `PAYLOAD_TOO_LARGE` for a body over `max_body` bytes (`max_batch_body` for a batch
    request, `max_upload` plus framing for a multipart upload to a route that takes a file):
    at once from Content-Length, or as soon as a chunked body passes it."""

    def __init__(
        self, app: ASGIApp, *, max_body: int, max_batch_body: int, max_upload: int
    ) -> None:
        self._app = app
        self._max_body = max_body
        self._max_batch_body = max_batch_body
        self._max_upload = max_upload + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if sum(name == b"content-type" for name, _ in scope["headers"]) > 1:
            # Each reader would take its own: this limit the last (an upload's 40 MiB), the
            # body check and the route the first (JSON, read whole before any key).
            refused = error_reply(
                scope["path"],
                400,
                [
                    {
                        "error": InvalidRequest.code,
                        "message": "a request has at most one Content-Type header",
                    }
                ],
            )
            await refused(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # Media types are case-insensitive (RFC 9110), as Starlette reads them.
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        if multipart and UPLOAD_PATHS.fullmatch(scope["path"]):
            limit = self._max_upload
        elif scope["path"] in BATCH_PATHS:
            limit = self._max_batch_body
        else:
            limit = self._max_body
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            too_large = error_reply(
                scope["path"],
                413,
                [
                    {
                        "error": PayloadTooLarge.code,
                        "message": f"bodies are limited to {limit} bytes",
                    }
                ],
            )
            await too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # Raised inside the app's body read; the error handlers make it the envelope.
                raise HTTPException(413, f"bodies are limited to {limit} bytes")
            return message

        await self._app(scope, counted, send)
