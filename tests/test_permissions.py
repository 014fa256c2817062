"""Key permissions: every keyed route needs one permission, checked before anything else; a
key without it gets 403 in the route's dialect, and keys made without permissions keep all."""

import uuid

import asyncpg
import httpx
import pytest

from store.accounts import PERMISSIONS, create_account, create_api_key
from tests.support.stack import PUBLIC_ROUTES, app_routes

# The permission each keyed route needs, as docs/SECURITY.md lists them.
NEEDS: dict[tuple[str, str], str] = {
    ("POST", "/v1/files/attach"): "files:write",
    ("POST", "/v1/sms/batch"): "batches:write",
    ("POST", "/v1/sms/batch/{batch_id}/cancel"): "batches:write",
    ("POST", "/v1/sms/batch/{batch_id}/pause"): "batches:write",
    ("POST", "/v1/sms/batch/{batch_id}/resume"): "batches:write",
    ("POST", "/v1/sms/batch/{batch_id}/retry"): "batches:write",
    ("GET", "/v1/sms/batches"): "batches:read",
    ("GET", "/v1/sms/batch/{batch_id}"): "batches:read",
    ("GET", "/v1/sms/batch/{batch_id}/messages"): "batches:read",
    ("GET", "/v1/sms/batch/{batch_id}/logs"): "batches:read",
    ("GET", "/v1/sms/batch/{batch_id}/deliveries"): "batches:read",
    ("GET", "/v1/sms/batch/{batch_id}/events"): "batches:read",
    ("GET", "/v1/sms/batch/{batch_id}/errors"): "batches:read",
    ("POST", "/v1/sms/send"): "send:write",
    ("GET", "/v1/sms/numbers"): "numbers:read",
    ("POST", "/v1/sms/numbers"): "numbers:write",
    ("PATCH", "/v1/sms/numbers/{number}"): "numbers:write",
    ("DELETE", "/v1/sms/numbers/{number}"): "numbers:write",
    ("GET", "/v1/sms/conversations"): "conversations:read",
    ("GET", "/v1/sms/conversations/{conversation_id}"): "conversations:read",
    ("GET", "/v1/sms/conversations/{conversation_id}/messages"): "conversations:read",
    ("GET", "/v1/opt-outs"): "opt_outs:read",
    ("POST", "/v1/opt-outs"): "opt_outs:write",
    ("DELETE", "/v1/opt-outs/{number}"): "opt_outs:write",
    ("GET", "/v1/webhooks/secret"): "webhooks:read",
    ("POST", "/v1/webhooks/secret/rotate"): "webhooks:write",
    ("POST", "/send/batch"): "create:BatchSMS",
    ("GET", "/send/batch/{batch_id}"): "read:BatchSMS",
    ("POST", "/v1/lists"): "lists:write",
    ("GET", "/v1/lists"): "lists:read",
    ("GET", "/v1/lists/{list_id}"): "lists:read",
    ("DELETE", "/v1/lists/{list_id}"): "lists:write",
    ("GET", "/v1/lists/{list_id}/contacts"): "lists:read",
    ("POST", "/v1/lists/{list_id}/contacts"): "lists:write",
    ("POST", "/v1/lists/{list_id}/contacts/upload"): "lists:write",
    ("POST", "/v1/lists/{list_id}/contacts/remove"): "lists:write",
    ("DELETE", "/v1/lists/{list_id}/contacts/{phone_number}"): "lists:write",
    ("POST", "/v1/campaigns"): "campaigns:write",
    ("GET", "/v1/campaigns"): "campaigns:read",
    ("GET", "/v1/campaigns/{campaign_id}"): "campaigns:read",
    ("PATCH", "/v1/campaigns/{campaign_id}"): "campaigns:write",
    ("DELETE", "/v1/campaigns/{campaign_id}"): "campaigns:write",
    ("POST", "/campaigns/{campaign_id}/batch/messages"): "batches:write",
    ("GET", "/campaigns/{campaign_id}/batch/{batch_id}/messages"): "batches:read",
    ("POST", "/campaigns/{campaign_id}/batch/{batch_id}/retry"): "batches:write",
    ("PUT", "/v1/carrier-account"): "carrier:write",
    ("GET", "/v1/carrier-account"): "carrier:read",
    ("DELETE", "/v1/carrier-account"): "carrier:write",
}
MOBIVATE_FORBIDDEN = {"success": False, "error": {"name": "AuthenticationError", "statusCode": 403}}


def test_every_route_is_public_or_needs_a_known_permission() -> None:
    assert set(NEEDS) | set(PUBLIC_ROUTES) == app_routes()
    assert not set(NEEDS) & set(PUBLIC_ROUTES)
    assert set(NEEDS.values()) <= set(PERMISSIONS)


def concrete(path: str) -> str:
    return path.format(
        batch_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        list_id=uuid.uuid4(),
        phone_number="%2B15005550199",
        number="%2B15005550199",
    )


async def call(api: httpx.AsyncClient, route: tuple[str, str], key: str) -> httpx.Response:
    method, path = route
    return await api.request(
        method, concrete(path), headers={"authorization": f"Bearer {key}"}, json={}
    )


def assert_forbidden(route: tuple[str, str], response: httpx.Response) -> None:
    assert response.status_code == 403, (route, response.text)
    if route[1].startswith("/send/"):
        assert response.json() == MOBIVATE_FORBIDDEN
    elif route[1].startswith("/campaigns/"):
        assert response.json()["error"]["heraldCode"] == "FORBIDDEN", response.text
    else:
        body = response.json()
        assert body["data"] is None and body["errors"][0]["error"] == "FORBIDDEN", body


@pytest.fixture
async def account_id(pool: asyncpg.Pool) -> uuid.UUID:
    return await create_account(pool, f"perms-{uuid.uuid4().hex[:6]}")


async def test_a_key_without_permissions_gets_403_on_every_keyed_route(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account_id: uuid.UUID
) -> None:
    key = (await create_api_key(pool, account_id, [])).key
    for route in sorted(app_routes() - set(PUBLIC_ROUTES)):
        assert_forbidden(route, await call(api, route, key))


async def test_each_route_needs_exactly_its_own_permission(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account_id: uuid.UUID
) -> None:
    for route, permission in sorted(NEEDS.items()):
        others = [p for p in PERMISSIONS if p != permission]
        without = (await create_api_key(pool, account_id, others)).key
        assert_forbidden(route, await call(api, route, without))
        only = (await create_api_key(pool, account_id, [permission])).key
        allowed = await call(api, route, only)
        assert allowed.status_code not in (401, 403), (route, allowed.text)


async def test_a_key_made_without_permissions_keeps_all(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account_id: uuid.UUID
) -> None:
    key = (await create_api_key(pool, account_id)).key
    for route in sorted(NEEDS):
        response = await call(api, route, key)
        assert response.status_code not in (401, 403), (route, response.text)


async def test_unknown_permissions_are_refused(pool: asyncpg.Pool, account_id: uuid.UUID) -> None:
    with pytest.raises(ValueError, match="batches:delete"):
        await create_api_key(pool, account_id, ["batches:read", "batches:delete"])


async def test_a_batch_or_send_naming_lists_or_a_campaign_needs_the_permission_to_read_them(
    api: httpx.AsyncClient, pool: asyncpg.Pool, account_id: uuid.UUID
) -> None:
    """A batch naming a mailing list copies its contacts into a ledger the key may read, and
    a campaign named instead of a message shows its template: a key with `batches:write`
    (or `send:write`) alone read lists and campaigns it had no permission for."""
    writes = ["batches:write", "send:write"]
    writer = (await create_api_key(pool, account_id, writes)).key
    reader = (await create_api_key(pool, account_id, [*writes, "lists:read", "campaigns:read"])).key
    named: dict[str, tuple[str, dict[str, object]]] = {
        "lists:read": ("/v1/sms/batch", {"lists": [{"id": str(uuid.uuid4())}]}),
        "campaigns:read": (
            "/v1/sms/batch",
            {"campaign_id": str(uuid.uuid4()), "recipients": [{"phone_number": "+12015550123"}]},
        ),
        "campaigns:read by a send": (
            "/v1/sms/send",
            {
                "user_number": "+12015550123",
                "agent_number": "+15005550006",
                "campaign_id": str(uuid.uuid4()),
            },
        ),
    }
    for needed, (path, fields) in named.items():
        body = {"global": {"agent_number": "+15005550006"}, **fields}
        refused = await api.post(path, headers={"authorization": f"Bearer {writer}"}, json=body)
        allowed = await api.post(path, headers={"authorization": f"Bearer {reader}"}, json=body)

        assert_forbidden(("POST", path), refused)
        assert needed.split()[0] in refused.json()["errors"][0]["message"], refused.text
        assert allowed.status_code not in (401, 403), (needed, allowed.text)
