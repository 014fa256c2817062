"""Recipient file uploads."""

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile

from api.deps import AccountId, AppSettings, Pool
from api.errors import HeraldError
from api.models import AttachedFile, Envelope
from api.services.files import store_file

router = APIRouter(tags=["files"])

READ_BLOCK = 1024 * 1024


class InvalidFileType(HeraldError):
    code = "INVALID_FILE_TYPE"


class MissingFile(HeraldError):
    code = "MISSING_FILE"


class EmptyFile(HeraldError):
    code = "EMPTY_FILE"


class FileTooLarge(HeraldError):
    status_code = 413
    code = "FILE_TOO_LARGE"


@router.post("/v1/files/attach", response_model=Envelope[AttachedFile])
async def attach_file(
    account_id: AccountId,
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
    if file is None:
        raise MissingFile("multipart field 'file' is required")
    content = bytearray()
    while block := await file.read(READ_BLOCK):
        content += block
        if len(content) > settings.max_upload_bytes:
            raise FileTooLarge(f"files are limited to {settings.max_upload_bytes} bytes")
    if not content:
        raise EmptyFile("the file is empty")
    row = await store_file(
        pool,
        account_id,
        filename=file.filename or "upload",
        content_type=file.content_type,
        content=bytes(content),
    )
    file_id = str(row["id"])
    return {
        "data": AttachedFile(
            file_id=file_id, id=file_id, filename=row["filename"], size_bytes=row["size_bytes"]
        ),
        "errors": None,
    }
