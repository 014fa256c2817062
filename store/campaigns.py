"""Campaigns: an account's named sender and message templates per language."""

import ipaddress
import uuid

import asyncpg

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


async def list_campaigns(pool: asyncpg.Pool, account_id: uuid.UUID) -> list[dict]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM campaigns WHERE account_id = $1 ORDER BY created_at, id",
        account_id,
    )
    return [dict(r) for r in rows]


async def update_campaign(
    pool: asyncpg.Pool,
    account_id: uuid.UUID,
    campaign_id: uuid.UUID,
    *,
    name: str,
    sender: str,
    templates: dict[str, str],
    parameters: list[str],
    allowed_ips: list[Network] | None,
) -> dict | None:
    """Replace the campaign's fields; None if the account has no such campaign."""
    row = await pool.fetchrow(
        "UPDATE campaigns SET name = $3, sender = $4, templates = $5, parameters = $6,"
        " allowed_ips = $7, updated_at = now() WHERE id = $1 AND account_id = $2"
        f" RETURNING {_COLUMNS}",
        campaign_id,
        account_id,
        name,
        sender,
        templates,
        parameters,
        allowed_ips,
    )
    return dict(row) if row else None


async def delete_campaign(
    pool: asyncpg.Pool, account_id: uuid.UUID, campaign_id: uuid.UUID
) -> bool:
    status = await pool.execute(
        "DELETE FROM campaigns WHERE id = $1 AND account_id = $2", campaign_id, account_id
    )
    return status != "DELETE 0"


async def take_request(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, *, per_second: float, burst: float
) -> float | None:
    """Spend one request of the campaign's bucket, refilled at `per_second` up to `burst`:
    None if it had one, else the seconds until it has. The row lock serialises concurrent
    requests, from any API process."""
    row = await pool.fetchrow(
        "WITH bucket AS ("
        " SELECT id, least($2::float8, coalesce(rate_tokens + extract(epoch FROM"
        " clock_timestamp() - rate_updated)::float8 * $3::float8, $2::float8)) AS tokens"
        " FROM campaigns WHERE id = $1 FOR UPDATE)"
        " UPDATE campaigns SET rate_updated = clock_timestamp(),"
        " rate_tokens = CASE WHEN bucket.tokens >= 1 THEN bucket.tokens - 1 ELSE bucket.tokens END"
        " FROM bucket WHERE campaigns.id = bucket.id RETURNING bucket.tokens",
        campaign_id,
        burst,
        per_second,
    )
    if row is None or row["tokens"] >= 1:
        return None
    return (1 - row["tokens"]) / per_second
