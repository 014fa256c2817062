"""Errors as types, and the handlers that turn every failure into the `{data, errors}` envelope."""

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)


# The sentences the Bland SMS documents give for their error codes: an error with one of
# these codes says the sentence, and after it, the detail of this request.
DOCUMENTED_MESSAGES = {
    "MISSING_FILE_ID": "file_id is required",
    "FILE_NOT_FOUND": "File not found or invalid file type for SMS batches",
    "AGENT_NUMBER_NOT_FOUND": "Agent number not found or not configured for SMS",
}


def documented(code: str, detail: str) -> str:
    """`detail` after the documented sentence of `code`, if it has one."""
    sentence = DOCUMENTED_MESSAGES.get(code)
    return detail if sentence is None else f"{sentence}: {detail}"


class HeraldError(Exception):
    status_code = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers

    def problems(self) -> list[dict[str, Any]]:
        """The error's items in the envelope: itself, and any details a subclass adds."""
        return [{"error": self.code, "message": documented(self.code, self.message)}]


class Unauthorized(HeraldError):
    status_code = 401
    code = "UNAUTHORIZED"


class Forbidden(HeraldError):
    """A known key without the permission the route needs."""

    status_code = 403
    code = "FORBIDDEN"


class InvalidRequest(HeraldError):
    code = "INVALID_REQUEST"


# A request-validation error at a body location (prefix) maps to a stable code; the first
# matching row wins, so specific rows come first. `None` as the error type matches any.
FIELD_ERROR_CODES: Sequence[tuple[tuple[str, ...], str | None, str]] = (
    (("body",), "missing_file_id", "MISSING_FILE_ID"),
    (("body",), "file_id_and_recipients", "FILE_ID_AND_RECIPIENTS"),
    (("body", "recipients"), None, "INVALID_RECIPIENTS"),
    # Mobivate's other name for `recipients`.
    (("body", "messages"), None, "INVALID_RECIPIENTS"),
    (("body", "file_id"), "string_too_short", "MISSING_FILE_ID"),
    (("body", "global", "agent_number"), "missing", "MISSING_AGENT_NUMBER"),
    (("body", "global", "agent_number"), "string_too_short", "MISSING_AGENT_NUMBER"),
    (("body", "global"), "missing", "MISSING_AGENT_NUMBER"),
    (("body", "global"), None, "INVALID_GLOBAL_FORMAT"),
    (("body", "column_mapping"), None, "INVALID_COLUMN_MAPPING_FORMAT"),
    (("body", "status_webhook"), None, "INVALID_WEBHOOK_URL"),
    (("body", "statusWebhook"), None, "INVALID_WEBHOOK_URL"),
    (("body", "schedule_at"), None, "INVALID_SCHEDULE"),
    (("body", "spread_hours"), None, "INVALID_SCHEDULE"),
    (("body", "expire_at"), None, "INVALID_SCHEDULE"),
    (("body", "scheduleDateTime"), None, "INVALID_SCHEDULE"),
    (("body", "spreadHours"), None, "INVALID_SCHEDULE"),
    (("body", "send_window"), None, "INVALID_SEND_WINDOW"),
    (("body", "user_number"), None, "INVALID_USER_NUMBER"),
    (("body", "agent_number"), "missing", "MISSING_AGENT_NUMBER"),
    (("body", "agent_number"), "string_too_short", "MISSING_AGENT_NUMBER"),
    (("body", "webhook"), None, "INVALID_WEBHOOK_URL"),
    (("body", "mps"), None, "INVALID_MPS"),
    (("body", "time_out"), None, "INVALID_TIMEOUT_CONFIG"),
    (("query", "cursor"), None, "INVALID_CURSOR"),
    (("body", "warning_time"), None, "INVALID_TIMEOUT_CONFIG"),
)


def envelope_error(
    status_code: int, errors: list[dict[str, Any]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"data": None, "errors": errors}, headers=headers
    )


# Short links are followed by people in browsers: a link that is not one is this page, for any
# path under LINK_PATHS, never the JSON envelope.
LINK_PATHS = ("/s/",)
LINK_NOT_FOUND_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Link not found</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>Link not found</h1><p>This link does not exist. Check that it was copied
whole.</p></body></html>
"""
# Every click must reach Herald to be counted, so no cache keeps a link's answer.
NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer"}
# Paths of the Mobivate dialect, which answers errors in its own envelope.
MOBIVATE_PATHS = ("/send/",)
MOBIVATE_ERROR_NAMES = {
    400: "ValidationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "PayloadTooLargeError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


def mobivate_error(
    status_code: int, errors: list[dict[str, Any]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The dialect's envelope. A missing or bad key, or a key without the permission, is its
    documented 403, word for word; any other failure keeps its status and names Herald's code
    and every problem."""
    if status_code in (Unauthorized.status_code, Forbidden.status_code):
        error: dict[str, Any] = {"name": "AuthenticationError", "statusCode": 403}
        content = {"success": False, "error": error}
        return JSONResponse(status_code=403, content=content, headers=headers)
    error = {
        "name": MOBIVATE_ERROR_NAMES.get(status_code, "InternalServerError"),
        "statusCode": status_code,
        "code": errors[0]["error"],
        "message": errors[0]["message"],
        "details": [item["message"] for item in errors],
    }
    return JSONResponse(
        status_code=status_code, content={"success": False, "error": error}, headers=headers
    )


# Paths of the Postman dialect, which answers errors in its own envelope.
POSTMAN_PATHS = ("/campaigns/",)
POSTMAN_FILE_TOO_LARGE = "File too large, max file size is 40MB"
# Herald's codes the dialect documents an error of its own for: its status, code and words.
POSTMAN_DOCUMENTED: dict[str, tuple[int, str, str]] = {
    "IP_NOT_ALLOWED": (
        401,
        "invalid_ip_address_error",
        "The IP address used for this request is invalid.",
    ),
    "BATCH_NOT_RETRYABLE": (
        400,
        "batch_not_found_or_is_not_retryable",
        "Batch cannot be retried as it does not exist or is currently not retryable.",
    ),
    "NO_FAILED_MESSAGES": (
        400,
        "no_failed_batch_messages_to_retry",
        "Batch cannot be retried as either all messages are successful or all failed"
        " messages have exceeded the maximum number of attempts.",
    ),
}


def postman_error(
    status_code: int, errors: list[dict[str, Any]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The dialect's `{error: {code, message}}`, with its documented codes and words for a bad
    key (401), too many requests (429), a file too large (400, as it documents, where
    Herald answers 413) and the errors of `POSTMAN_DOCUMENTED`; any other failure keeps its
    status, with Herald's code in lower case. `heraldCode` is Herald's own code, which tells
    apart what the dialect's one code covers; `details` holds each further item (a file's
    rows and their reasons)."""
    documented_error = POSTMAN_DOCUMENTED.get(errors[0]["error"])
    if documented_error is not None:
        status_code, code, message = documented_error
    elif status_code == Unauthorized.status_code:
        status_code, code, message = (
            401,
            "invalid_api_key_provided",
            "The API key provided is invalid.",
        )
    elif status_code == 429:
        code, message = "too_many_requests", "Too many requests"
    elif status_code == 413:
        status_code, code, message = 400, "parameter_invalid", POSTMAN_FILE_TOO_LARGE
    elif status_code == 400:
        code, message = "parameter_invalid", errors[0]["message"]
    else:
        code, message = errors[0]["error"].lower(), errors[0]["message"]
    error: dict[str, Any] = {"code": code, "message": message, "heraldCode": errors[0]["error"]}
    if len(errors) > 1:
        error["details"] = [
            {key: value for key, value in item.items() if key != "error"} for item in errors[1:]
        ]
    return JSONResponse(status_code=status_code, content={"error": error}, headers=headers)


# The longest message an error item carries: one that names the caller's own text (an id, a
# key, a number, as it came, up to the body's megabytes) echoes no more of it than this.
MAX_ERROR_MESSAGE_CHARS = 1000


def _bounded(error: dict[str, Any]) -> dict[str, Any]:
    message = error.get("message")
    if isinstance(message, str) and len(message) > MAX_ERROR_MESSAGE_CHARS:
        return {**error, "message": message[:MAX_ERROR_MESSAGE_CHARS] + "..."}
    return error


def error_reply(
    path: str,
    status_code: int,
    errors: list[dict[str, Any]],
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error for a request to `path`, in the envelope of the dialect it belongs to, each
    message at most MAX_ERROR_MESSAGE_CHARS."""
    errors = [_bounded(error) for error in errors]
    if path.startswith(MOBIVATE_PATHS):
        return mobivate_error(status_code, errors, headers)
    if path.startswith(POSTMAN_PATHS):
        return postman_error(status_code, errors, headers)
    return envelope_error(status_code, errors, headers)


def herald_error_response(path: str, error: HeraldError) -> JSONResponse:
    return error_reply(path, error.status_code, error.problems(), error.headers)


def unexpected_error_response(path: str) -> JSONResponse:
    """The 500 of an error no handler expected, logged with its traceback (called in the
    `except` that caught it)."""
    log.exception("unhandled error", path=path)
    return error_reply(
        path, 500, [{"error": "INTERNAL_ERROR", "message": "unexpected error; it was logged"}]
    )


# How long a client waits before it sends again a request whose database went away under it.
RETRY_AFTER_UNAVAILABLE_SECONDS = 5


def unavailable_response(path: str, error: Exception) -> JSONResponse:
    """The 503 of a request whose database went away under it (store.db.UNAVAILABLE: down,
    restarting, its connection cut): a client may send it again in a few seconds (docs/API.md
    says which requests are the same thing again). No traceback: nothing is wrong with the
    code."""
    log.warning("database unavailable", path=path, error=repr(error))
    return error_reply(
        path,
        503,
        [
            {
                "error": "DATABASE_UNAVAILABLE",
                "message": "the database is unreachable; send the request again in a few seconds",
            }
        ],
        {"retry-after": str(RETRY_AFTER_UNAVAILABLE_SECONDS)},
    )


def http_error_response(path: str, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(
        error.status_code, "HTTP_ERROR"
    )
    return error_reply(
        path, error.status_code, [{"error": code, "message": str(error.detail)}], error.headers
    )


def _code_for(error: dict[str, Any]) -> str:
    loc = tuple(str(part) for part in error.get("loc", ()))
    for prefix, error_type, code in FIELD_ERROR_CODES:
        if loc[: len(prefix)] == prefix and error_type in (None, error.get("type")):
            return code
    return InvalidRequest.code


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HeraldError)
    async def herald_error(request: Request, error: HeraldError) -> JSONResponse:
        return herald_error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        if isinstance(error.body, bytes):
            # A JSON route's body, sent as another type (`curl -d` sends a form's): FastAPI
            # kept it as bytes, and every field would be "missing".
            sent_as = request.headers.get("content-type", "")
            message = (
                "body: not read as JSON: send it with `Content-Type: application/json`"
                f" (it came as `{sent_as}`)"
            )
            code = InvalidRequest.code
            return error_reply(
                request.url.path, 400, [{"error": code, "message": documented(code, message)}]
            )
        errors = []
        for item in error.errors():
            code = _code_for(item)
            errors.append({"error": code, "message": documented(code, _describe(item))})
        return error_reply(request.url.path, 400, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        path = request.url.path
        if error.status_code == 404 and (path == "/s" or path.startswith(LINK_PATHS)):
            return HTMLResponse(LINK_NOT_FOUND_PAGE, status_code=404, headers=NO_STORE)
        return http_error_response(path, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Only what raises outside RequestContext (which answers the rest) comes here.
        return unexpected_error_response(request.url.path)
