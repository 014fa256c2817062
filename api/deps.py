"""Request dependencies: the pool, the Temporal client, settings and the caller's account.

A route gets the caller's account only through one of the permission dependencies at the end
(one per group of routes), so no keyed route can skip the key's permission check."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.errors import Forbidden, Unauthorized
from api.limits import spend_key_rate
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


# Herald's own form: the key raw or as `Bearer <key>`. Declared as a security scheme, so the
# schema's pages can send it ("Authorize" in /docs); `auto_error=False` leaves a missing key to
# `Unauthorized`, answered in the envelope of the route's dialect.
api_key = APIKeyHeader(
    name="authorization",
    auto_error=False,
    scheme_name="ApiKey",
    description="A Herald API key, raw (`hk_...`) or as `Bearer hk_...`.",
)


async def current_key(
    request: Request,
    pool: Pool,
    authorization: Annotated[str | None, Depends(api_key)],
) -> KeyGrant:
    if not authorization:
        raise Unauthorized("missing authorization header")
    return await _grant_of(request, pool, authorization.removeprefix("Bearer ").strip())


# The dialects' form: `Authorization: Bearer <key>` only (Mobivate, Postman).
bearer_key = HTTPBearer(
    auto_error=False, scheme_name="BearerKey", description="A Herald API key: `Bearer hk_...`."
)


async def bearer_grant(
    request: Request,
    pool: Pool,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_key)],
) -> KeyGrant:
    return await _grant_of(request, pool, _bearer(credentials))


def _bearer(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise Unauthorized("missing `Authorization: Bearer <key>` header")
    return credentials.credentials.strip()


async def _grant_of(
    request: Request, pool: asyncpg.Pool, key: str, *, rated: bool = True
) -> KeyGrant:
    grant = await grant_for_key(pool, key)
    if grant is None:
        raise Unauthorized("invalid API key")
    if rated:
        # Counted per key only once it is known good, so bad keys spend no key's rate.
        await spend_key_rate(pool, request.app.state.settings, grant.key_id)
    return grant


def _grants(permission: str, authenticate: Callable[..., Awaitable[KeyGrant]] = current_key) -> Any:
    """The caller's key, once it is known and holds `permission`."""
    assert permission in PERMISSIONS, permission

    async def permitted(grant: Annotated[KeyGrant, Depends(authenticate)]) -> KeyGrant:
        if not grant.allows(permission):
            raise _forbidden(permission)
        return grant

    return Depends(permitted)


def _campaign_grants(permission: str) -> Any:
    """The caller's Bearer key, once it is known and holds `permission`, without spending
    its rate (but when it lacks the permission): the Postman dialect's routes spend their
    campaign's (10 requests a second, as Postman documents), or the key's when the request
    names no campaign of the account (`postman.campaign`), so that a key driving several
    campaigns is not held under their rates."""
    assert permission in PERMISSIONS, permission

    async def permitted(
        request: Request,
        pool: Pool,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_key)],
    ) -> KeyGrant:
        grant = await _grant_of(request, pool, _bearer(credentials), rated=False)
        if not grant.allows(permission):
            await spend_key_rate(pool, request.app.state.settings, grant.key_id)
            raise _forbidden(permission)
        return grant

    return Depends(permitted)


def _forbidden(permission: str, needed_by: str = "") -> Forbidden:
    return Forbidden(f"this API key does not have the `{permission}` permission{needed_by}")


def require_named(grant: KeyGrant, *, lists: bool = False, campaign: bool = False) -> None:
    """403 unless the key may read what the request names: a batch naming mailing lists
    reads their contacts into its ledger (its messages show them), and a campaign named
    instead of a message shows its template, so a key that may write batches or send no
    more reads lists or campaigns through them than through their own routes."""
    if lists and not grant.allows("lists:read"):
        raise _forbidden("lists:read", ", which naming mailing lists needs")
    if campaign and not grant.allows("campaigns:read"):
        raise _forbidden("campaigns:read", ", which naming a campaign needs")


def _requires(
    permission: str, authenticate: Callable[..., Awaitable[KeyGrant]] = current_key
) -> Any:
    """The caller's account id, once its key is known and holds `permission`."""

    async def account(grant: Annotated[KeyGrant, _grants(permission, authenticate)]) -> uuid.UUID:
        return grant.account_id

    return Depends(account)


FilesWrite = Annotated[uuid.UUID, _requires("files:write")]
BatchesRead = Annotated[uuid.UUID, _requires("batches:read")]
# The key itself, for a request that outlasts its first check (an event stream).
BatchesReadKey = Annotated[KeyGrant, _grants("batches:read")]
BatchesWrite = Annotated[uuid.UUID, _requires("batches:write")]
# The key itself, for a request whose other permissions depend on what it names.
BatchesWriteKey = Annotated[KeyGrant, _grants("batches:write")]
SendWriteKey = Annotated[KeyGrant, _grants("send:write")]
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
# The Postman dialect: a Bearer key that may start (and retry) batches, or read them; its
# rate is spent by the route (`_campaign_grants`).
CampaignBatchesWrite = Annotated[KeyGrant, _campaign_grants("batches:write")]
CampaignBatchesRead = Annotated[KeyGrant, _campaign_grants("batches:read")]
