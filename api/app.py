"""The FastAPI application: resources from `lifespan`, routes, the error envelope."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.input_checks import InputChecks
from api.limits import BodySizeLimit, RateLimiter
from api.models import ErrorEnvelope
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
    webhooks,
)
from api.services.receipts import ReceiptIntake, apply_receipts
from logs import configure_logging
from metrics import ApiMetrics
from settings import Settings, get_settings
from store.db import create_pool, migrate
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


def create_app(settings: Settings | None = None, tracing: Tracing | None = None) -> FastAPI:
    """The app; with `tracing`, its requests and the workflows they start are traced."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.rate_limiter = RateLimiter(
            per_second=settings.rate_limit_per_second, burst=settings.rate_limit_burst
        )
        app.state.pool = await create_pool(settings.dsn)
        await migrate(app.state.pool)
        # Lazy: the API starts, and /readyz reports, while Temporal is still coming up.
        app.state.temporal = await connect_temporal(
            settings, lazy=True, interceptors=client_interceptors(tracing)
        )
        app.state.receipt_intake = ReceiptIntake(app.state.pool)
        applier = asyncio.create_task(
            apply_receipts(app.state.pool, app.state.receipt_intake.arrived)
        )
        try:
            yield
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier
            await app.state.pool.close()
            if tracing is not None:
                tracing.provider.shutdown()

    app = FastAPI(
        title="Herald",
        summary="Self-hosted batch SMS on Temporal and PostgreSQL.",
        version="0.1.0",
        lifespan=lifespan,
    )
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
    # First: the carrier posts two or three receipts per message sent, and each route
    # before it costs every one of them a match.
    app.include_router(receipts.router, responses=ERROR_RESPONSES)
    app.include_router(health.router)
    # Public, answered to browsers: a redirect or an HTML page, never the JSON envelope.
    app.include_router(links.router)
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
    if tracing is not None:
        tracing.instrument(app)
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory api.app:app_from_env`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings, Tracing.from_env("herald-api"))
