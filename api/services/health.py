"""Readiness: whether the API's dependencies answer."""

import asyncio
from collections.abc import Awaitable

import asyncpg
from temporalio.client import Client

from store.db import ping


async def readiness(pool: asyncpg.Pool, temporal: Client) -> dict[str, str]:
    """`ok`, or `down: <error type>`, for PostgreSQL and for Temporal, checked side by side."""
    checks = await asyncio.gather(
        _state(ping(pool)),
        _state(asyncio.wait_for(temporal.service_client.check_health(), timeout=3)),
    )
    return dict(zip(("postgres", "temporal"), checks, strict=True))


async def _state(check: Awaitable[object]) -> str:
    try:
        await check
    except Exception as error:
        return f"down: {type(error).__name__}"
    return "ok"
