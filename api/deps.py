"""Request dependencies: the pool, the Temporal client, settings and the caller's account."""

import hashlib
import uuid
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.errors import Unauthorized
from settings import Settings
from store.accounts import account_for_key


def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


def get_temporal(request: Request) -> Client:
    return request.app.state.temporal


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
Temporal = Annotated[Client, Depends(get_temporal)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]


async def current_account(
    request: Request,
    pool: Pool,
    authorization: Annotated[
        str | None, Header(description="API key, raw or `Bearer <key>`")
    ] = None,
) -> uuid.UUID:
    if not authorization:
        raise Unauthorized("missing authorization header")
    return await _account_of(request, pool, authorization.removeprefix("Bearer ").strip())


# The dialects' form: `Authorization: Bearer <key>` only (Mobivate).
bearer_key = HTTPBearer(
    auto_error=False, scheme_name="BearerKey", description="A Herald API key: `Bearer hk_...`."
)


async def bearer_account(
    request: Request,
    pool: Pool,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_key)],
) -> uuid.UUID:
    if credentials is None:
        raise Unauthorized("missing `Authorization: Bearer <key>` header")
    return await _account_of(request, pool, credentials.credentials.strip())


async def _account_of(request: Request, pool: asyncpg.Pool, key: str) -> uuid.UUID:
    account_id = await account_for_key(pool, key)
    if account_id is None:
        raise Unauthorized("invalid API key")
    # Counted per key only once it is known good, so bad keys cannot fill the limiter.
    request.app.state.rate_limiter.take(hashlib.sha256(key.encode()).digest())
    return account_id


AccountId = Annotated[uuid.UUID, Depends(current_account)]
BearerAccountId = Annotated[uuid.UUID, Depends(bearer_account)]
