"""Request dependencies: the pool, the Temporal client, settings and the caller's account."""

import hashlib
import uuid
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request
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
    key = authorization.removeprefix("Bearer ").strip()
    account_id = await account_for_key(pool, key)
    if account_id is None:
        raise Unauthorized("invalid API key")
    # Counted per key only once it is known good, so bad keys cannot fill the limiter.
    request.app.state.rate_limiter.take(hashlib.sha256(key.encode()).digest())
    return account_id


AccountId = Annotated[uuid.UUID, Depends(current_account)]
