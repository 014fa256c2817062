"""Short links, `GET /s/{code}` (and `HEAD`): public, answered to a browser."""

from fastapi import APIRouter, Header
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import AppSettings, Pool, Temporal
from api.errors import LINK_NOT_FOUND_PAGE, NO_STORE
from api.services import links as service

router = APIRouter(tags=["links"])


@router.get(
    "/s/{code}",
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "To the link's URL; the click is counted"},
        404: {"description": "No such link: a plain HTML page", "content": {"text/html": {}}},
    },
)
async def follow_link(
    code: str,
    pool: Pool,
    temporal: Temporal,
    settings: AppSettings,
    user_agent: str | None = Header(None),
) -> Response:
    """Redirect to the short link's URL, counting the click; no key."""
    return _answer(await service.follow(pool, temporal, settings, code, user_agent))


@router.head("/s/{code}", include_in_schema=False)
async def peek_link(code: str, pool: Pool) -> Response:
    """As `GET`, but no click is counted: link previews ask with `HEAD` before a `GET`."""
    return _answer(await service.destination(pool, code))


def _answer(url: str | None) -> Response:
    if url is None:
        return HTMLResponse(LINK_NOT_FOUND_PAGE, status_code=404, headers=NO_STORE)
    return RedirectResponse(url, status_code=302, headers=NO_STORE)
