"""Liveness and readiness."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import Pool, Temporal
from store.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is down"}})
async def readyz(pool: Pool, temporal: Temporal) -> JSONResponse:
    """PostgreSQL and Temporal both answer; 503 naming the one that does not."""
    checks: dict[str, str] = {}
    try:
        await ping(pool)
        checks["postgres"] = "ok"
    except (OSError, TimeoutError, Exception) as error:
        checks["postgres"] = f"down: {type(error).__name__}"
    try:
        await asyncio.wait_for(temporal.service_client.check_health(), timeout=3)
        checks["temporal"] = "ok"
    except Exception as error:
        checks["temporal"] = f"down: {type(error).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        status_code=200 if ready else 503,
        content={"status": "ready" if ready else "unavailable", "checks": checks},
    )
