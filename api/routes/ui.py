"""The dashboard, `GET /ui`: one static page on the JSON API and the batch event stream.

Public like any web page: it holds no data, and asks for the API key in the browser."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["ui"])

STATIC = Path(__file__).resolve().parent.parent / "static"
# Only the page's own files run or load; the key it keeps goes nowhere but this API.
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _asset(name: str, media_type: str) -> Response:
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/ui", include_in_schema=False)
async def dashboard() -> Response:
    """The page; it asks for the API key and keeps it in the tab's sessionStorage."""
    return _asset("dashboard.html", "text/html; charset=utf-8")


@router.get("/ui/dashboard.js", include_in_schema=False)
async def dashboard_script() -> Response:
    return _asset("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/ui/dashboard.css", include_in_schema=False)
async def dashboard_style() -> Response:
    return _asset("dashboard.css", "text/css; charset=utf-8")
