"""Accounts, their API keys (random, shown once, stored as a SHA-256 hash) and their webhook
signing secrets."""

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

KEY_PREFIX = "hk_"
_PREFIX_LEN = 12
WEBHOOK_SECRET_PREFIX = "whsec_"

# What a key may be allowed, one permission per group of routes (docs/SECURITY.md lists the
# routes of each). Herald's own routes use `<group>:read|write`; the Mobivate dialect's use
# its documented `<action>:<record type>` names.
PERMISSIONS: tuple[str, ...] = (
    "files:write",
    "batches:read",
    "batches:write",
    "send:write",
    "numbers:read",
    "numbers:write",
    "conversations:read",
    "opt_outs:read",
    "opt_outs:write",
    "webhooks:read",
    "webhooks:write",
    "campaigns:read",
    "campaigns:write",
    "carrier:read",
    "carrier:write",
    "lists:read",
    "lists:write",
    "create:BatchSMS",
    "read:BatchSMS",
)


@dataclass(frozen=True, kw_only=True)
class NewKey:
    account_id: uuid.UUID
    key_id: uuid.UUID
    key: str


@dataclass(frozen=True, kw_only=True)
class KeyGrant:
    """An unrevoked key's account and permissions; `permissions` None means all of them."""

    account_id: uuid.UUID
    permissions: frozenset[str] | None
    key_id: uuid.UUID

    def allows(self, permission: str) -> bool:
        return self.permissions is None or permission in self.permissions


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_account(pool: asyncpg.Pool, name: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    await pool.execute("INSERT INTO accounts (id, name) VALUES ($1, $2)", account_id, name)
    return account_id


async def create_api_key(
    pool: asyncpg.Pool, account_id: uuid.UUID, permissions: Sequence[str] | None = None
) -> NewKey:
    """A new key with the given permissions (names from PERMISSIONS), or all when None."""
    unknown = set(permissions or ()) - set(PERMISSIONS)
    if unknown:
        raise ValueError(f"unknown permissions: {', '.join(sorted(unknown))}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO api_keys (id, account_id, prefix, key_hash, permissions)"
        " VALUES ($1, $2, $3, $4, $5)",
        key_id,
        account_id,
        key[:_PREFIX_LEN],
        _hash(key),
        None if permissions is None else sorted(set(permissions)),
    )
    return NewKey(account_id=account_id, key_id=key_id, key=key)


async def grant_for_key(pool: asyncpg.Pool, key: str) -> KeyGrant | None:
    """The account and permissions of an unrevoked key, compared in constant time; None if
    there is no such key."""
    if not key.startswith(KEY_PREFIX):
        return None
    rows = await pool.fetch(
        "SELECT id, account_id, key_hash, permissions FROM api_keys"
        " WHERE prefix = $1 AND revoked_at IS NULL",
        key[:_PREFIX_LEN],
    )
    digest = _hash(key)
    for row in rows:
        if hmac.compare_digest(row["key_hash"], digest):
            granted = row["permissions"]
            return KeyGrant(
                account_id=row["account_id"],
                permissions=None if granted is None else frozenset(granted),
                key_id=row["id"],
            )
    return None


async def key_is_active(pool: asyncpg.Pool, key_id: uuid.UUID) -> bool:
    """Whether the key is still unrevoked (a long request's check, after its first)."""
    return await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL)", key_id
    )


async def account_exists(pool: asyncpg.Pool, account_id: uuid.UUID) -> bool:
    return await pool.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)", account_id)


async def list_api_keys(pool: asyncpg.Pool, account_id: uuid.UUID | None = None) -> list[dict]:
    """Keys by creation time, never their secret part: id, account, prefix, created, revoked,
    permissions (None for all)."""
    rows = await pool.fetch(
        "SELECT id, account_id, prefix, created_at, revoked_at, permissions FROM api_keys"
        " WHERE $1::uuid IS NULL OR account_id = $1 ORDER BY created_at, id",
        account_id,
    )
    return [dict(r) for r in rows]


async def revoke_api_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> bool:
    """Revoke a key at once; False when no unrevoked key has this id."""
    revoked = await pool.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        key_id,
    )
    return revoked is not None


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


async def webhook_signing_secrets(pool: asyncpg.Pool, account_id: uuid.UUID) -> list[str]:
    """The secrets deliveries are signed with: the current one (created on first use) and,
    during a rotation's overlap, the previous one."""
    row = await pool.fetchrow(
        "UPDATE accounts SET webhook_secret = coalesce(webhook_secret, $2),"
        " webhook_secret_created_at = coalesce(webhook_secret_created_at, now())"
        " WHERE id = $1 RETURNING webhook_secret,"
        " CASE WHEN webhook_previous_until > now() THEN webhook_previous_secret END AS previous",
        account_id,
        new_webhook_secret(),
    )
    return [row["webhook_secret"], *([row["previous"]] if row["previous"] else [])]


async def rotate_webhook_secret(
    pool: asyncpg.Pool, account_id: uuid.UUID, overlap: timedelta
) -> dict:
    """Make a new current secret; the old one (if any) keeps signing for `overlap`."""
    row = await pool.fetchrow(
        "UPDATE accounts SET webhook_previous_secret = webhook_secret,"
        " webhook_previous_until = CASE WHEN webhook_secret IS NULL THEN NULL"
        " ELSE now() + $3 END,"
        " webhook_secret = $2, webhook_secret_created_at = now()"
        " WHERE id = $1 RETURNING webhook_secret, webhook_secret_created_at,"
        " webhook_previous_until",
        account_id,
        new_webhook_secret(),
        overlap,
    )
    return dict(row)


async def webhook_secret_state(pool: asyncpg.Pool, account_id: uuid.UUID) -> dict:
    """When the current secret was made and until when the previous one signs; no secret."""
    row = await pool.fetchrow(
        "SELECT webhook_secret_created_at,"
        " CASE WHEN webhook_previous_until > now() THEN webhook_previous_until END"
        " AS webhook_previous_until FROM accounts WHERE id = $1",
        account_id,
    )
    return dict(row)
