"""Readiness: whether the API's dependencies answer."""

import asyncio

import asyncpg
from temporalio.client import Client

from store.db import ping


async def readiness(pool: asyncpg.Pool, temporal: Client) -> dict[str, str]:
    """`ok`, or `down: <error type>`, for PostgreSQL and for Temporal."""
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
    return checks
