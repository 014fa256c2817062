"""Readiness: whether the API's dependencies answer."""

import asyncio

import asyncpg
from temporalio.client import Client

from store.db import ping


async def readiness(pool: asyncpg.Pool, temporal: Client) -> dict[str, str]:
    """`ok`, or `down: <error type>`, for PostgreSQL and for Temporal, checked side by side."""

    async def postgres() -> str:
        try:
            await ping(pool)
        except Exception as error:
            return f"down: {type(error).__name__}"
        return "ok"

    async def temporal_health() -> str:
        try:
            await asyncio.wait_for(temporal.service_client.check_health(), timeout=3)
        except Exception as error:
            return f"down: {type(error).__name__}"
        return "ok"

    checks = await asyncio.gather(postgres(), temporal_health())
    return dict(zip(("postgres", "temporal"), checks, strict=True))
