"""The account's status-webhook signing secret: its state, and rotation."""

import uuid
from datetime import timedelta

import asyncpg

from settings import Settings
from store import accounts


async def secret_state(pool: asyncpg.Pool, account_id: uuid.UUID) -> dict:
    """When the current secret was made and until when the previous one signs; no secret."""
    return await accounts.webhook_secret_state(pool, account_id)


async def rotate_secret(pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID) -> dict:
    """A new secret; the previous one keeps signing for `webhook_secret_overlap_hours`."""
    overlap = timedelta(hours=settings.webhook_secret_overlap_hours)
    return await accounts.rotate_webhook_secret(pool, account_id, overlap)
