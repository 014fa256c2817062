"""Mailing lists: named lists of contacts that a batch (or a Mobivate recipient) sends to."""

import functools
import json

from fastapi import APIRouter, Request, UploadFile

from api.deps import AppSettings, ListsRead, ListsWrite, Pool
from api.models import (
    ContactList,
    ContactsAdded,
    ContactsRemoved,
    ContactsRequest,
    Envelope,
    ListRequest,
    MailingList,
    MailingLists,
)
from api.pagination import Cursor, Limit
from api.routes.files import one_file
from api.services import mailing_lists as service
from settings import Settings

router = APIRouter(tags=["lists"])


@router.post("/v1/lists", status_code=201, response_model=Envelope[MailingList])
async def create_list(account_id: ListsWrite, pool: Pool, body: ListRequest) -> dict:
    """A new, empty mailing list."""
    return {"data": await service.create_list(pool, account_id, body.name, body.id)}


@router.get("/v1/lists", response_model=Envelope[MailingLists])
async def list_lists(
    account_id: ListsRead, pool: Pool, cursor: Cursor = None, limit: Limit = 100
) -> dict:
    """The account's mailing lists, oldest first, with their numbers of contacts (see
    Pagination)."""
    return {"data": await service.list_lists(pool, account_id, limit=limit, cursor=cursor)}


@router.get("/v1/lists/{list_id}", response_model=Envelope[MailingList])
async def get_list(account_id: ListsRead, pool: Pool, list_id: str) -> dict:
    return {"data": await service.get_list(pool, account_id, list_id)}


@router.delete("/v1/lists/{list_id}", response_model=Envelope[dict[str, str]])
async def delete_list(account_id: ListsWrite, pool: Pool, list_id: str) -> dict:
    """Delete the list and its contacts. A batch already accepted that names it, and not yet
    validated, sends to none of them."""
    return {"data": {"deleted": await service.delete_list(pool, account_id, list_id)}}


@router.get("/v1/lists/{list_id}/contacts", response_model=Envelope[ContactList])
async def list_contacts(
    account_id: ListsRead,
    pool: Pool,
    list_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict:
    """The list's contacts in number order, a page at a time (see Pagination)."""
    return {
        "data": await service.list_contacts(pool, account_id, list_id, limit=limit, cursor=cursor)
    }


@router.post("/v1/lists/{list_id}/contacts", response_model=Envelope[ContactsAdded])
async def add_contacts(
    account_id: ListsWrite, pool: Pool, list_id: str, body: ContactsRequest
) -> dict:
    """Add contacts given in the body, like a JSON file's rows."""

    async def content() -> bytes:
        return json.dumps(body.contacts, ensure_ascii=False).encode()

    return {"data": await service.add_contacts(pool, account_id, list_id, content)}


@router.post("/v1/lists/{list_id}/contacts/upload", response_model=Envelope[ContactsAdded])
async def upload_contacts(
    request: Request,
    account_id: ListsWrite,
    pool: Pool,
    settings: AppSettings,
    list_id: str,
    file: UploadFile | None = None,
) -> dict:
    """Add the contacts of a CSV or JSON file (multipart field `file`), read as a batch's
    file is: a `phone_number` column, the other columns the contact's fields."""
    return {
        "data": await service.add_contacts(
            pool, account_id, list_id, functools.partial(_upload, request, file, settings)
        )
    }


@router.post("/v1/lists/{list_id}/contacts/remove", response_model=Envelope[ContactsRemoved])
async def remove_contacts_in_file(
    request: Request,
    account_id: ListsWrite,
    pool: Pool,
    settings: AppSettings,
    list_id: str,
    file: UploadFile | None = None,
) -> dict:
    """Remove the numbers in a file's `phone_number` column (multipart field `file`)."""
    return {
        "data": await service.remove_contacts_in_file(
            pool, account_id, list_id, functools.partial(_upload, request, file, settings)
        )
    }


@router.delete(
    "/v1/lists/{list_id}/contacts/{phone_number}", response_model=Envelope[ContactsRemoved]
)
async def remove_contact(
    account_id: ListsWrite, pool: Pool, list_id: str, phone_number: str
) -> dict:
    """Remove one number from the list (`removed` 0 when it was not in it)."""
    return {"data": await service.remove_contacts(pool, account_id, list_id, [phone_number])}


async def _upload(request: Request, file: UploadFile | None, settings: Settings) -> bytes:
    file = await one_file(request, file, settings)
    return await file.read()
