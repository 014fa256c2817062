"""Request dependencies: the pool, the Temporal client, settings and the caller's account.

A route gets the caller's account only through one of the permission dependencies at the end
(one per group of routes), so no keyed route can skip the key's permission check."""

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.errors import Forbidden, Unauthorized
from settings import Settings
from store.accounts import PERMISSIONS, KeyGrant, grant_for_key


async def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


async def get_temporal(request: Request) -> Client:
    return request.app.state.temporal


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
Temporal = Annotated[Client, Depends(get_temporal)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]


async def current_key(
    request: Request,
    pool: Pool,
    authorization: Annotated[
        str | None, Header(description="API key, raw or `Bearer <key>`")
    ] = None,
) -> KeyGrant:
    if not authorization:
        raise Unauthorized("missing authorization header")
    return await _grant_of(request, pool, authorization.removeprefix("Bearer ").strip())


# The dialects' form: `Authorization: Bearer <key>` only (Mobivate).
bearer_key = HTTPBearer(
    auto_error=False, scheme_name="BearerKey", description="A Herald API key: `Bearer hk_...`."
)


async def bearer_grant(
    request: Request,
    pool: Pool,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_key)],
) -> KeyGrant:
    if credentials is None:
        raise Unauthorized("missing `Authorization: Bearer <key>` header")
    return await _grant_of(request, pool, credentials.credentials.strip())


async def _grant_of(request: Request, pool: asyncpg.Pool, key: str) -> KeyGrant:
    grant = await grant_for_key(pool, key)
    if grant is None:
        raise Unauthorized("invalid API key")
    # Counted per key only once it is known good, so bad keys cannot fill the limiter.
    request.app.state.rate_limiter.take(hashlib.sha256(key.encode()).digest())
    return grant


def _requires(
    permission: str, authenticate: Callable[..., Awaitable[KeyGrant]] = current_key
) -> Any:
    """The caller's account id, once its key is known and holds `permission`."""
    assert permission in PERMISSIONS, permission

    async def permitted(grant: Annotated[KeyGrant, Depends(authenticate)]) -> uuid.UUID:
        if not grant.allows(permission):
            raise Forbidden(f"this API key does not have the `{permission}` permission")
        return grant.account_id

    return Depends(permitted)


FilesWrite = Annotated[uuid.UUID, _requires("files:write")]
BatchesRead = Annotated[uuid.UUID, _requires("batches:read")]
BatchesWrite = Annotated[uuid.UUID, _requires("batches:write")]
SendWrite = Annotated[uuid.UUID, _requires("send:write")]
NumbersRead = Annotated[uuid.UUID, _requires("numbers:read")]
NumbersWrite = Annotated[uuid.UUID, _requires("numbers:write")]
ConversationsRead = Annotated[uuid.UUID, _requires("conversations:read")]
OptOutsRead = Annotated[uuid.UUID, _requires("opt_outs:read")]
OptOutsWrite = Annotated[uuid.UUID, _requires("opt_outs:write")]
WebhooksRead = Annotated[uuid.UUID, _requires("webhooks:read")]
WebhooksWrite = Annotated[uuid.UUID, _requires("webhooks:write")]
CampaignsRead = Annotated[uuid.UUID, _requires("campaigns:read")]
CampaignsWrite = Annotated[uuid.UUID, _requires("campaigns:write")]
ListsRead = Annotated[uuid.UUID, _requires("lists:read")]
ListsWrite = Annotated[uuid.UUID, _requires("lists:write")]
CarrierRead = Annotated[uuid.UUID, _requires("carrier:read")]
CarrierWrite = Annotated[uuid.UUID, _requires("carrier:write")]
CreateBatchSMS = Annotated[uuid.UUID, _requires("create:BatchSMS", bearer_grant)]
ReadBatchSMS = Annotated[uuid.UUID, _requires("read:BatchSMS", bearer_grant)]
# The Postman dialect: a Bearer key that may start (and retry) batches, or read them.
BearerBatchesWrite = Annotated[uuid.UUID, _requires("batches:write", bearer_grant)]
BearerBatchesRead = Annotated[uuid.UUID, _requires("batches:read", bearer_grant)]
