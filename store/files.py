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
    lines = _LineCount()
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_to_table(
            "files",
            source=_copy_row(
                file_id, account_id, filename, content_type, size_bytes, lines.count(content)
            ),
            columns=_COPY_COLUMNS,
            format="binary",
        )
        row = await conn.fetchrow(
            "UPDATE files SET line_count = $2 WHERE id = $1"
            " RETURNING id, filename, size_bytes, created_at",
            file_id,
            lines.total,
        )
    return dict(row)


class _LineCount:
    """Lines of a file, counted as its blocks go by: its line breaks (LF, CRLF, and the lone
    CR of a Mac "CSV" as validation reads it), and a last line that has none. No file has
    more rows than lines (a quoted line break makes more lines than rows, never fewer)."""

    def __init__(self) -> None:
        self.total = 0

    async def count(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        last = b"\n"
        async for block in content:
            if block:
                self.total += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
                if last == b"\r" and block.startswith(b"\n"):
                    self.total -= 1  # a CRLF split between two blocks
                last = block[-1:]
            yield block
        if last not in (b"\n", b"\r"):
            self.total += 1


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


async def delete_unused_file(pool: asyncpg.Pool, account_id: uuid.UUID, file_id: uuid.UUID) -> None:
    """Delete the file unless a batch was recorded from it (which keeps it for good)."""
    await pool.execute(
        "DELETE FROM files WHERE id = $1 AND account_id = $2"
        " AND NOT EXISTS (SELECT 1 FROM batches WHERE batches.id = files.id)",
        file_id,
        account_id,
    )


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


async def size_of(pool: asyncpg.Pool, file_id: uuid.UUID) -> int:
    """A file's size in bytes; 0 if there is no such file (what reads it next finds none)."""
    size: int | None = await pool.fetchval("SELECT size_bytes FROM files WHERE id = $1", file_id)
    return size or 0


# How much of a file a batch request reads to know its header.
HEAD_BYTES = 64 * 1024
# The content type of a stored file of ledger rows (`columns.write_ledger`): a batch of it
# loads them as they are, validating nothing (a Postman upload's).
LEDGER_FILE_TYPE = "application/vnd.apache.arrow.stream"


async def file_head(pool: asyncpg.Pool, account_id: uuid.UUID, file_id: uuid.UUID) -> dict:
    """The first HEAD_BYTES of a file (`head`), its `size_bytes`, `line_count` (None for a
    file stored before lines were counted) and `content_type`."""
    row = await pool.fetchrow(
        "SELECT substring(content FROM 1 FOR $3) AS head, size_bytes, line_count, content_type"
        " FROM files WHERE id = $1 AND account_id = $2",
        file_id,
        account_id,
        HEAD_BYTES,
    )
    return dict(row)


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
