"""Liveness, readiness and metrics."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import Pool, Temporal
from api.services.health import readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "PostgreSQL is down"}})
async def readyz(pool: Pool, temporal: Temporal) -> JSONResponse:
    """Ready while PostgreSQL answers; `degraded` while Temporal does not. A pod taken out of
    its Service for Temporal would refuse what needs only PostgreSQL too: the carrier's
    status callbacks, which it does not post again, and the reads of batches and their
    ledgers. A request that needs Temporal answers TEMPORAL_UNAVAILABLE meanwhile."""
    checks = await readiness(pool, temporal)
    if checks["postgres"] != "ok":
        return JSONResponse(status_code=503, content={"status": "unavailable", "checks": checks})
    status = "ready" if checks["temporal"] == "ok" else "degraded"
    return JSONResponse(status_code=200, content={"status": status, "checks": checks})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """This API process's series in Prometheus's text format; no key, as for a probe (they
    hold route templates and counts, no customer data)."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
