"""One log stream per process: structlog's lines and the standard library's (temporalio,
uvicorn, asyncpg, twilio, warnings) go through the same processors, as JSON lines, or
readable ones on a terminal. Lines carry `request_id` (API), `batch_id`, `workflow_id` and
`activity` (worker, activities/log_context.py) where known."""

import logging
import re
import sys
from typing import Any

import structlog

# uvicorn sets up its own handlers before it loads the app; its lines are sent to the root.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


# A conversation's workflow id ends with its user's number (conversation_workflow_id): a log
# line keeps its last four digits only, as it keeps no user's number whole.
_CONVERSATION_USER = re.compile(r"(sms-conversation-[0-9a-f-]{36}-[^-\s'\"]*-)(\d+)(\d{4})")


def _masked(text: str) -> str:
    """`text` with the user's number of each conversation workflow id in it masked."""
    return _CONVERSATION_USER.sub(lambda m: m[1] + "*" * len(m[2]) + m[3], text)


def _mask_user_numbers(
    _logger: Any, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Every value of the line (its event text, `workflow_id`, a formatted exception) with
    conversation workflow ids masked."""
    for key, value in event.items():
        if isinstance(value, str) and "sms-conversation-" in value:
            event[key] = _masked(value)
    return event


def _temporal_fields(
    _logger: Any, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """The workflow or activity that temporalio's own loggers (workflow.logger,
    activity.logger) put on a record, as the same keys structlog's lines have."""
    record = event.get("_record")
    for attribute in ("temporal_workflow", "temporal_activity"):
        details = getattr(record, attribute, None)
        if isinstance(details, dict):
            event.setdefault("workflow_id", details.get("workflow_id"))
            if "activity_type" in details:
                event.setdefault("activity", details["activity_type"])
    return event


def configure_logging(level: str = "INFO") -> None:
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            _mask_user_numbers,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _temporal_fields],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _mask_user_numbers,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        # `--no-access-log` leaves the access logger with no handler and not propagating; sent
        # to the root, it would have one, and uvicorn writes a line per request when it has.
        off = name == "uvicorn.access" and not logger.handlers and not logger.propagate
        logger.handlers = []
        logger.propagate = not off
        # uvicorn sets its own levels: at WARNING, an access line per request is still made.
        logger.setLevel(numeric)
    logging.captureWarnings(True)
    # twilio logs every request and response at INFO: one line per message sent; httpx (and
    # httpcore) every request with its URL: a webhook's, credentials and query included.
    for name in ("twilio", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric))
