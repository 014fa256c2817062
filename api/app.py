"""The FastAPI application: resources from `lifespan`, routes, the error envelope."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api.errors import install_error_handlers
from api.routes import batches, files, health, numbers, opt_outs, receipts
from logs import configure_logging
from settings import Settings, get_settings
from store.db import create_pool, migrate


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await create_pool(settings.dsn)
        await migrate(app.state.pool)
        # Lazy: the API starts, and /readyz reports, while Temporal is still coming up.
        app.state.temporal = await Client.connect(
            settings.temporal_target, namespace=settings.temporal_namespace, lazy=True
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(
        title="Herald",
        summary="Self-hosted batch SMS on Temporal and PostgreSQL.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (health, files, numbers, batches, opt_outs, receipts):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory api.app:app_from_env`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
