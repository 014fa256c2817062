"""Recipient file uploads."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile

from api.deps import AppSettings, FilesWrite, Pool
from api.errors import HeraldError
from api.input_checks import require_storable
from api.models import AttachedFile, Envelope
from api.services.files import InvalidFileType, store_file
from settings import Settings

router = APIRouter(tags=["files"])

READ_BLOCK = 1024 * 1024


class MissingFile(HeraldError):
    code = "MISSING_FILE"


class MultipleFiles(HeraldError):
    code = "MULTIPLE_FILES"


class EmptyFile(HeraldError):
    code = "EMPTY_FILE"


class FileTooLarge(HeraldError):
    status_code = 413
    code = "FILE_TOO_LARGE"


async def one_file(request: Request, file: UploadFile | None, settings: Settings) -> UploadFile:
    """The request's one file, multipart field `file`, of 1 byte up to the upload limit, its
    name storable (`INVALID_TEXT`, on every route that takes a file, as docs/API.md says).

    FastAPI hands the route the last of repeated parts; the form it parsed has them all: a
    second part is refused, not dropped unread. The form parser has spooled the part to a
    temporary file (on disk beyond 1 MB) and counted its bytes."""
    if file is None:
        raise MissingFile("multipart field 'file' is required")
    parts = len((await request.form()).getlist("file"))
    if parts > 1:
        raise MultipleFiles(f"send one multipart field 'file' per request, not {parts}")
    size = file.size or 0
    if size > settings.max_upload_bytes:
        raise FileTooLarge(f"files are limited to {settings.max_upload_bytes} bytes")
    if size == 0:
        raise EmptyFile("the file is empty")
    require_storable(file.filename or "upload", "the file's name")
    return file


async def _blocks(file: UploadFile) -> AsyncIterator[bytes]:
    """The stored part a block at a time, as PostgreSQL takes it."""
    while block := await file.read(READ_BLOCK):
        yield block


@router.post("/v1/files/attach", response_model=Envelope[AttachedFile])
async def attach_file(
    request: Request,
    account_id: FilesWrite,
    pool: Pool,
    settings: AppSettings,
    file: UploadFile | None = None,
    file_type: Annotated[str | None, Form(description="Must be `batches`.")] = None,
    usage: Annotated[str | None, Form(description="Alias of `file_type`.")] = None,
) -> dict:
    """Store a recipient file (CSV, or a JSON array of objects) for a batch."""
    kind = file_type or usage
    if kind != "batches":
        raise InvalidFileType(f"file_type must be 'batches', got {kind!r}")
    file = await one_file(request, file, settings)
    filename = file.filename or "upload"
    if file.content_type is not None:
        require_storable(file.content_type, "the file's content type")
    row = await store_file(
        pool,
        account_id,
        filename=filename,
        content_type=file.content_type,
        size_bytes=file.size or 0,
        content=_blocks(file),
    )
    file_id = str(row["id"])
    return {
        "data": AttachedFile(
            file_id=file_id, id=file_id, filename=row["filename"], size_bytes=row["size_bytes"]
        ),
        "errors": None,
    }
