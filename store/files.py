"""Uploaded recipient files, stored raw."""

import struct
import uuid
from collections.abc import AsyncIterator

import asyncpg

# PostgreSQL's binary COPY format: signature, flags, header extension length; and the end.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_COPY_COLUMNS = ["id", "account_id", "filename", "content_type", "size_bytes", "content"]


class SizeMismatch(Exception):
    """The content gave another number of bytes than announced; nothing was stored."""


async def insert_file(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    filename: str,
    content_type: str | None,
    size_bytes: int,
    content: AsyncIterator[bytes],
) -> dict:
    """Store a file of `size_bytes` bytes, read from `content` a block at a time. It goes to
    PostgreSQL as one row of a binary COPY, streamed, so that the file is never whole in this
    process's memory (a bytea parameter would be, several times over)."""
    file_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_to_table(
            "files",
            source=_copy_row(file_id, account_id, filename, content_type, size_bytes, content),
            columns=_COPY_COLUMNS,
            format="binary",
        )
        row = await conn.fetchrow(
            "SELECT id, filename, size_bytes, created_at FROM files WHERE id = $1", file_id
        )
    return dict(row)


async def _copy_row(
    file_id: uuid.UUID,
    account_id: uuid.UUID,
    filename: str,
    content_type: str | None,
    size_bytes: int,
    content: AsyncIterator[bytes],
) -> AsyncIterator[bytes]:
    """One row in binary COPY format: each field is its length (-1: NULL) and its bytes."""
    name = filename.encode()
    kind = None if content_type is None else content_type.encode()
    yield b"".join(
        (
            _COPY_HEADER,
            struct.pack("!h", len(_COPY_COLUMNS)),
            struct.pack("!i", 16) + file_id.bytes,
            struct.pack("!i", 16) + account_id.bytes,
            struct.pack("!i", len(name)) + name,
            struct.pack("!i", -1) if kind is None else struct.pack("!i", len(kind)) + kind,
            struct.pack("!iq", 8, size_bytes),
            struct.pack("!i", size_bytes),
        )
    )
    given = 0
    async for block in content:
        given += len(block)
        if given > size_bytes:
            break
        yield block
    if given != size_bytes:
        # Raised inside the COPY, which PostgreSQL then aborts: no row with a wrong size.
        raise SizeMismatch(f"the file gave {given} bytes or more, not {size_bytes}")
    yield _COPY_TRAILER


async def file_exists(pool: asyncpg.Pool, account_id: uuid.UUID, file_id: uuid.UUID) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT 1 FROM files WHERE id = $1 AND account_id = $2", file_id, account_id
        )
    )


async def file_content(
    pool: asyncpg.Pool, account_id: uuid.UUID, file_id: uuid.UUID
) -> tuple[str, bytes]:
    row = await pool.fetchrow(
        "SELECT filename, content FROM files WHERE id = $1 AND account_id = $2",
        file_id,
        account_id,
    )
    return row["filename"], row["content"]


async def insert_bytes(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    filename: str,
    content_type: str | None,
    content: bytes,
) -> dict:
    """Store a file already whole in memory (an inline batch's rows)."""

    async def whole() -> AsyncIterator[bytes]:
        yield content

    return await insert_file(
        pool,
        account_id,
        filename=filename,
        content_type=content_type,
        size_bytes=len(content),
        content=whole(),
    )
