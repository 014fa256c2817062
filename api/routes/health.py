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


@router.get("/readyz", responses={503: {"description": "A dependency is down"}})
async def readyz(pool: Pool, temporal: Temporal) -> JSONResponse:
    """PostgreSQL and Temporal both answer; 503 naming the one that does not."""
    checks = await readiness(pool, temporal)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        status_code=200 if ready else 503,
        content={"status": "ready" if ready else "unavailable", "checks": checks},
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """This API process's series in Prometheus's text format; no key, as for a probe (they
    hold route templates and counts, no customer data)."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
