"""Walking a list endpoint of Herald's own API page by page, by its `next_cursor`."""

from typing import Any

import httpx

from tests.support.stack import Account


async def every_page(
    api: httpx.AsyncClient,
    account: Account,
    path: str,
    items: str,
    *,
    limit: int = 1000,
    params: dict[str, Any] | None = None,
) -> list[list[dict]]:
    """Each page's `items` of the list at `path`, first to last, following `next_cursor`
    until it is null; every page but the last is full."""
    pages: list[list[dict]] = []
    cursor: str | None = None
    while True:
        query = {**(params or {}), "limit": limit} | ({"cursor": cursor} if cursor else {})
        response = await api.get(path, headers=account.headers, params=query)
        assert response.status_code == 200, response.text
        page = response.json()["data"]
        pages.append(page[items])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(page[items]) == limit, (path, len(page[items]))


async def every_item(
    api: httpx.AsyncClient,
    account: Account,
    path: str,
    items: str,
    *,
    limit: int = 1000,
    params: dict[str, Any] | None = None,
) -> list[dict]:
    """Every item of the list at `path`, in its order, through its pages."""
    pages = await every_page(api, account, path, items, limit=limit, params=params)
    return [item for page in pages for item in page]
