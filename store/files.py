"""Uploaded recipient files, stored raw."""

import uuid

import asyncpg


async def insert_file(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    filename: str,
    content_type: str | None,
    content: bytes,
) -> dict:
    row = await pool.fetchrow(
        "INSERT INTO files (id, account_id, filename, content_type, size_bytes, content)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, filename, size_bytes, created_at",
        uuid.uuid4(),
        account_id,
        filename,
        content_type,
        len(content),
        content,
    )
    return dict(row)


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
