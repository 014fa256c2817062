"""Recipient files, stored for the batches that read them."""

import uuid
from collections.abc import AsyncIterator

import asyncpg

from api.errors import HeraldError
from api.input_checks import media_type
from store import files


class InvalidFileType(HeraldError):
    code = "INVALID_FILE_TYPE"


async def store_file(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    filename: str,
    content_type: str | None,
    size_bytes: int,
    content: AsyncIterator[bytes],
) -> dict:
    """Store an uploaded file. Its type may not be Herald's own for a file of rows it
    validated (a Postman upload's): a retry loads such a file's rows as they are
    (`retry_batch`), so no upload may claim it."""
    if content_type is not None and media_type(content_type) == files.LEDGER_FILE_TYPE:
        raise InvalidFileType(f"{files.LEDGER_FILE_TYPE} is Herald's own: upload CSV or JSON")
    return await files.insert_file(
        pool,
        account_id,
        filename=filename,
        content_type=content_type,
        size_bytes=size_bytes,
        content=content,
    )
