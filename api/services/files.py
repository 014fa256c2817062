"""Recipient files, stored for the batches that read them."""

import uuid
from collections.abc import AsyncIterator

import asyncpg

from store import files


async def store_file(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    filename: str,
    content_type: str | None,
    size_bytes: int,
    content: AsyncIterator[bytes],
) -> dict:
    return await files.insert_file(
        pool,
        account_id,
        filename=filename,
        content_type=content_type,
        size_bytes=size_bytes,
        content=content,
    )
