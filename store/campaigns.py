"""Campaigns: an account's named sender and message templates per language."""

import ipaddress
import uuid
from datetime import datetime

import asyncpg

from store.db import after_key

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_COLUMNS = "id, name, sender, templates, parameters, allowed_ips, created_at, updated_at"


async def create_campaign(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    name: str,
    sender: str,
    templates: dict[str, str],
    parameters: list[str],
    allowed_ips: list[Network] | None = None,
) -> dict:
    row = await pool.fetchrow(
        "INSERT INTO campaigns (id, account_id, name, sender, templates, parameters,"
        f" allowed_ips) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}",
        uuid.uuid4(),
        account_id,
        name,
        sender,
        templates,
        parameters,
        allowed_ips,
    )
    return dict(row)


async def get_campaign(
    pool: asyncpg.Pool, account_id: uuid.UUID, campaign_id: uuid.UUID
) -> dict | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM campaigns WHERE id = $1 AND account_id = $2",
        campaign_id,
        account_id,
    )
    return dict(row) if row else None


async def list_campaigns(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[dict]:
    """Up to `limit` of the account's campaigns, oldest first by (created_at, id), after the
    key `after`."""
    keyset = after_key("created_at, id", after, 3, descending=False)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM campaigns WHERE account_id = $1{keyset}"
        " ORDER BY created_at, id LIMIT $2",
        account_id,
        limit,
        *(after or ()),
    )
    return [dict(r) for r in rows]


async def update_campaign(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    campaign_id: uuid.UUID,
    *,
    name: str | None,
    sender: str | None,
    templates: dict[str, str] | None,
    parameters: list[str] | None,
    allowed_ips: list[Network] | None,
    clear_allowed_ips: bool,
) -> dict | None:
    """Change the fields given (None keeps one), in one statement: two changes at once of
    different fields both stay. None if the account has no such campaign."""
    row = await pool.fetchrow(
        "UPDATE campaigns SET name = coalesce($3, name), sender = coalesce($4, sender),"
        " templates = coalesce($5, templates), parameters = coalesce($6, parameters),"
        " allowed_ips = CASE WHEN $8 THEN NULL ELSE coalesce($7, allowed_ips) END,"
        f" updated_at = now() WHERE id = $1 AND account_id = $2 RETURNING {_COLUMNS}",
        campaign_id,
        account_id,
        name,
        sender,
        templates,
        parameters,
        allowed_ips,
        clear_allowed_ips,
    )
    return dict(row) if row else None


async def delete_campaign(
    pool: asyncpg.Pool, account_id: uuid.UUID, campaign_id: uuid.UUID
) -> bool:
    status = await pool.execute(
        "DELETE FROM campaigns WHERE id = $1 AND account_id = $2", campaign_id, account_id
    )
    return status != "DELETE 0"
