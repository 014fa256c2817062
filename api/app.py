"""The FastAPI application: resources from `lifespan`, routes, the error envelope."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from temporalio.client import Client

from api.errors import install_error_handlers
from api.input_checks import InputChecks
from api.limits import BodySizeLimit
from api.models import ClickEvent, ErrorEnvelope, StatusEvent
from api.receipt_lane import ReceiptLane
from api.receipt_listener import ReceiptListener
from api.request_context import RequestContext
from api.request_metrics import RequestMetrics
from api.routes import (
    batches,
    campaigns,
    carrier_account,
    conversations,
    files,
    health,
    links,
    mailing_lists,
    mobivate,
    numbers,
    opt_outs,
    postman,
    receipts,
    send,
    ui,
    webhooks,
)
from api.services.housekeeping import keep_house
from api.services.receipts import ReceiptIntake, apply_receipts
from api.services.stranded_messages import keep_handing_over
from logs import configure_logging
from metrics import ApiMetrics
from settings import Settings, get_settings
from store.db import create_pool, ready_schema
from temporal_client import connect_temporal
from tracing import Tracing, client_interceptors

# Failures any keyed route may answer with, in the error envelope; documented so that clients
# (and the schema fuzzing in the tests) know every status they can meet.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in (
        (400, "The request is invalid (see `errors[].error`)"),
        (401, "Missing, unknown or revoked API key"),
        (403, "Refused: the key lacks this route's permission (`FORBIDDEN`)"),
        (404, "Not found in this account"),
        (409, "Conflicts with the resource's state"),
        (413, "The body is too large"),
        (429, "Too many requests with this key; see `Retry-After`"),
        (503, "A dependency is unavailable; retry"),
    )
}


DOCS_STATIC_PATH = "/docs/static"

# The groups of routes in the schema's pages, in this order.
TAGS: list[dict[str, Any]] = [
    {"name": "files", "description": "Upload a recipient file (CSV or JSON) for a batch."},
    {"name": "batches", "description": "Start a batch, follow it, steer it, read its ledger."},
    {"name": "send", "description": "One message now, in a conversation."},
    {"name": "numbers", "description": "The account's sender numbers and sender IDs."},
    {"name": "campaigns", "description": "Templates by language, for the Postman dialect."},
    {"name": "conversations", "description": "Replies and the messages around them."},
    {"name": "opt-outs", "description": "Numbers no batch or send of the account messages."},
    {"name": "lists", "description": "Mailing lists: contacts a batch can send to."},
    {"name": "links", "description": "Short links in messages, and their clicks."},
    {"name": "webhooks", "description": "The secret that signs status webhooks."},
    {"name": "carrier account", "description": "The account's own Twilio subaccount."},
    {
        "name": "carrier webhooks",
        "description": "What the carrier posts (signed with `X-Twilio-Signature`, no key).",
    },
    {"name": "mobivate", "description": "Mobivate's `POST /send/batch`, in its envelope."},
    {"name": "postman", "description": "Postman's campaign batch send, in its envelope."},
    {"name": "health", "description": "Liveness and readiness, without a key."},
]


def operation_id(route: APIRoute) -> str:
    """The route function's name (`create_batch`, `get_batch`, ...): readable, and what
    generated clients name their methods."""
    return route.name


def _without_validation_errors(app: FastAPI) -> None:
    """The schema without FastAPI's `422`: a request Herald refuses is a `400` in the envelope
    of its dialect (`api/errors.py`), as each route declares."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # kept by the app as `openapi_schema`: changed in place
        for section in ("paths", "webhooks"):
            for path in schema.get(section, {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# How long the API keeps trying to open its Temporal connection early, a try a second.
EARLY_CONNECT_SECONDS = 60


async def _connect_early(temporal: Client) -> None:
    """Open the lazy client's connection now, beside the API's start, so that the first
    `POST /v1/sms/batch` does not wait for it (about 0.15 s, a quarter of a 10,000-row
    batch's way to its first message); while Temporal is not up, the first call opens it,
    as before."""
    for _ in range(EARLY_CONNECT_SECONDS):
        with contextlib.suppress(Exception):
            if await temporal.service_client.check_health(timeout=timedelta(seconds=1)):
                return
        await asyncio.sleep(1)


def _build_routes(app: FastAPI) -> None:
    """Build every included router's routes now. FastAPI (0.165) builds them, with their
    dependencies and body and response models, on the first request that reaches their
    router: 0.07 s on an idle machine, 0.13-0.22 s under load, of the first
    `POST /v1/sms/batch` after a start. `effective_route_contexts` is FastAPI's own, not
    public: without it, they are built on first use, as before."""
    for route in app.routes:
        build = getattr(route, "effective_route_contexts", None)
        if callable(build):
            for _ in build():
                pass


def create_app(settings: Settings | None = None, tracing: Tracing | None = None) -> FastAPI:
    """The app; with `tracing`, its requests and the workflows they start are traced."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await create_pool(settings.dsn)
        await ready_schema(app.state.pool, migrate_now=settings.migrate_on_start)
        # Lazy: the API starts, and /readyz reports, while Temporal is still coming up.
        app.state.temporal = await connect_temporal(
            settings, lazy=True, interceptors=client_interceptors(tracing)
        )
        connecting = asyncio.create_task(_connect_early(app.state.temporal))
        _build_routes(app)
        app.state.receipt_intake = ReceiptIntake(app.state.pool)
        applier = asyncio.create_task(
            apply_receipts(app.state.pool, app.state.receipt_intake.arrived)
        )
        pruner = asyncio.create_task(keep_house(app.state.pool, app.state.temporal, settings))
        sweeper = asyncio.create_task(
            keep_handing_over(app.state.pool, app.state.temporal, settings)
        )
        listener = ReceiptListener(
            settings=settings,
            pool=app.state.pool,
            intake=app.state.receipt_intake,
            metrics=app.state.metrics,
        )
        if settings.receipts_port is not None:
            await listener.start(settings.api_host, settings.receipts_port)
        try:
            yield
        finally:
            await listener.close()
            connecting.cancel()
            for task in (applier, pruner, sweeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.receipt_intake.close()
            await app.state.pool.close()
            if tracing is not None:
                tracing.provider.shutdown()

    # The schema's pages with their scripts served by the API itself (fastapi-offline's copy
    # of Swagger UI and ReDoc), not from a CDN: they work where the API has no internet.
    app = FastAPIOffline(
        static_url=DOCS_STATIC_PATH,
        title="Herald",
        summary="Self-hosted batch SMS on Temporal and PostgreSQL.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        # A JSON body without a Content-Type is read as JSON, as the input checks read it: a
        # key in a header authenticates every request, so a browser's cross-site request (which
        # FastAPI's strict default guards against) carries none.
        strict_content_type=False,
    )
    _without_validation_errors(app)
    install_error_handlers(app)
    app.state.metrics = ApiMetrics()
    # Added first, so it runs inside the size limit: the bodies it reads are bounded.
    app.add_middleware(InputChecks)
    app.add_middleware(
        BodySizeLimit,
        max_body=settings.max_body_bytes,
        max_batch_body=settings.max_batch_body_bytes,
        max_upload=settings.max_upload_bytes,
    )
    # Outermost: a request the limits refuse is counted, and logged with its id, too.
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_middleware(RequestContext)
    # Outermost: the carrier's status callbacks skip everything above (see the module).
    app.add_middleware(ReceiptLane, max_body=settings.max_body_bytes, metrics=app.state.metrics)
    # First: the carrier posts two or three receipts per message sent, and each route
    # before it costs every one of them a match.
    app.include_router(receipts.router, responses=ERROR_RESPONSES)
    app.include_router(health.router)
    # Public, answered to browsers: a redirect or an HTML page, never the JSON envelope.
    app.include_router(links.router)
    app.include_router(ui.router)
    for module in (
        files,
        numbers,
        campaigns,
        carrier_account,
        batches,
        send,
        conversations,
        webhooks,
        opt_outs,
        mailing_lists,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    # The dialects declare their own error replies: they are in their envelopes, not Herald's.
    app.include_router(mobivate.router)
    app.include_router(postman.router)

    # What Herald posts to a batch's `status_webhook`: the schema's `webhooks` section.
    @app.webhooks.post(
        "batch-status",
        operation_id="batch_status_event",
        status_code=204,
        responses={204: {"description": "Any 2xx: received"}},
    )
    def batch_status_event(body: StatusEvent) -> None:
        """Each lifecycle event of a batch, posted to its `status_webhook` as JSON and signed
        per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`). Answer
        any 2xx; other answers and timeouts are retried."""

    @app.webhooks.post(
        "batch-click",
        operation_id="batch_click_event",
        status_code=204,
        responses={204: {"description": "Any 2xx: received"}},
    )
    def batch_click_event(body: ClickEvent) -> None:
        """A short link's first click (`shorten_urls`), posted to its batch's
        `status_webhook` beside the lifecycle events, whether or not the batch is still
        running; signed and retried as they are."""

    if tracing is not None:
        tracing.instrument(app)
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory api.app:app_from_env`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings, Tracing.from_env("herald-api"))
