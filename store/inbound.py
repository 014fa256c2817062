"""Inbound messages from the carrier, each applied once per MessageSid."""

import uuid

import asyncpg


async def claim_sid(conn: asyncpg.Connection, carrier_sid: str, account_id: uuid.UUID) -> bool:
    """True the first time a MessageSid is claimed: its side effects are this post's to apply.
    False for a repeat, a replay, or a retry after an earlier post applied them."""
    return bool(
        await conn.fetchval(
            "INSERT INTO inbound_messages (carrier_sid, account_id) VALUES ($1, $2)"
            " ON CONFLICT (carrier_sid) DO NOTHING RETURNING true",
            carrier_sid,
            account_id,
        )
    )
