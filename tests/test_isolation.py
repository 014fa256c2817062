"""Tenancy: the authorisation matrix. Every route of the app is listed here, as data, with how
to call it on a resource of account A; account B must get exactly the reply an id that names
nothing gets, and every route that is not public refuses a request without a key."""

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from store import numbers
from store.accounts import create_account, create_api_key
from tests.support.batches import FINAL
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.sending import eventually
from tests.support.stack import PUBLIC_ROUTES, app_routes


@dataclass(frozen=True)
class Call:
    """A request on one resource; `{batch_id}`, `{number}`, `{conversation_id}`, `{file_id}` and
    `{own_number}` (the caller's sender) are filled in the path and in string body values."""

    json: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)


# Routes that act on one resource of the caller's account: B gets A's exactly as an unknown id.
SCOPED: dict[tuple[str, str], Call] = {
    ("GET", "/v1/sms/batch/{batch_id}"): Call(),
    ("GET", "/v1/sms/batch/{batch_id}/messages"): Call(),
    ("GET", "/v1/sms/batch/{batch_id}/logs"): Call(),
    ("GET", "/v1/sms/batch/{batch_id}/deliveries"): Call(),
    ("GET", "/v1/sms/batch/{batch_id}/events"): Call(),
    ("GET", "/v1/sms/batch/{batch_id}/errors"): Call(),
    ("POST", "/v1/sms/batch/{batch_id}/cancel"): Call(json={"reason": "not yours"}),
    ("POST", "/v1/sms/batch/{batch_id}/pause"): Call(),
    ("POST", "/v1/sms/batch/{batch_id}/resume"): Call(),
    ("POST", "/v1/sms/batch/{batch_id}/retry"): Call(json={"statuses": ["failed"]}),
    ("GET", "/v1/sms/conversations/{conversation_id}"): Call(),
    ("GET", "/v1/sms/conversations/{conversation_id}/messages"): Call(),
    ("PATCH", "/v1/sms/numbers/{number}"): Call(json={"mps": 3}),
    ("DELETE", "/v1/sms/numbers/{number}"): Call(),
    ("DELETE", "/v1/opt-outs/{number}"): Call(),
    ("GET", "/v1/campaigns/{campaign_id}"): Call(),
    ("PATCH", "/v1/campaigns/{campaign_id}"): Call(json={"name": "not yours"}),
    ("DELETE", "/v1/campaigns/{campaign_id}"): Call(),
    ("GET", "/v1/lists/{list_id}"): Call(),
    ("GET", "/v1/lists/{list_id}/contacts"): Call(),
    ("POST", "/v1/lists/{list_id}/contacts"): Call(
        json={"contacts": [{"phone_number": "{number}"}]}
    ),
    ("POST", "/v1/lists/{list_id}/contacts/upload"): Call(),
    ("POST", "/v1/lists/{list_id}/contacts/remove"): Call(),
    ("DELETE", "/v1/lists/{list_id}/contacts/{phone_number}"): Call(),
    ("DELETE", "/v1/lists/{list_id}"): Call(),
    # A file of A, or a sender of A, named in a body.
    ("POST", "/v1/sms/batch"): Call(
        json={
            "file_id": "{file_id}",
            "global": {"agent_number": "{own_number}", "agent_message": "hi"},
        }
    ),
    ("POST", "/v1/sms/send"): Call(
        json={"user_number": "+12125550123", "agent_number": "{number}", "agent_message": "hi"}
    ),
}
# The Mobivate dialect's routes: a `Bearer` key and the dialect's envelope; a sender of A
# named in the body, or a batch of A in the path; and the code an unknown one gets.
DIALECT: dict[tuple[str, str], tuple[Call, str]] = {
    ("POST", "/send/batch"): (
        Call(
            json={
                "recipients": [{"recipient": "12125550123"}],
                "text": "hi",
                "originator": "{number}",
            }
        ),
        "AGENT_NUMBER_NOT_FOUND",
    ),
    ("GET", "/send/batch/{batch_id}"): (Call(), "BATCH_NOT_FOUND"),
}
# The Postman dialect's routes: a `Bearer` key and the dialect's envelope; a campaign of A in
# the path (and a batch of A's, not of that campaign).
POSTMAN: dict[tuple[str, str], Call] = {
    ("POST", "/campaigns/{campaign_id}/batch/messages"): Call(),
    ("GET", "/campaigns/{campaign_id}/batch/{batch_id}/messages"): Call(),
    ("POST", "/campaigns/{campaign_id}/batch/{batch_id}/retry"): Call(),
}
# Routes that list the caller's resources: B's list names none of A's.
LISTS: dict[tuple[str, str], Call] = {
    ("GET", "/v1/sms/batches"): Call(),
    ("GET", "/v1/sms/numbers"): Call(),
    ("GET", "/v1/sms/conversations"): Call(),
    ("GET", "/v1/opt-outs"): Call(),
    ("GET", "/v1/campaigns"): Call(),
    ("GET", "/v1/lists"): Call(),
}
# Routes that only create or touch the caller's own things and take no id.
OWN: dict[tuple[str, str], str] = {
    ("POST", "/v1/files/attach"): "stores a file in the caller's account",
    ("POST", "/v1/sms/numbers"): "registers a sender in the caller's account",
    ("POST", "/v1/opt-outs"): "opts a number out for the caller's account",
    ("POST", "/v1/campaigns"): "creates a campaign in the caller's account, from its sender",
    ("POST", "/v1/lists"): "creates a mailing list in the caller's account",
    ("GET", "/v1/webhooks/secret"): "the caller's signing secret's dates",
    ("POST", "/v1/webhooks/secret/rotate"): "rotates the caller's signing secret",
    ("PUT", "/v1/carrier-account"): "sets the caller's own carrier credentials",
    ("GET", "/v1/carrier-account"): "the caller's carrier account, its token masked",
    ("DELETE", "/v1/carrier-account"): "removes the caller's carrier credentials",
}


def test_the_matrix_names_every_route_once() -> None:
    listed = [*SCOPED, *DIALECT, *POSTMAN, *LISTS, *OWN, *PUBLIC_ROUTES]
    assert len(listed) == len(set(listed)), "a route is in two tables"
    assert set(listed) == app_routes()


@dataclass
class Tenant:
    key: str
    number: str
    ids: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": self.key}

    @property
    def bearer_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


async def new_tenant(pool: asyncpg.Pool) -> Tenant:
    account_id = await create_account(pool, f"matrix-{secrets.token_hex(4)}")
    number = unique_numbers(1)[0]
    await numbers.add_number(pool, account_id, number, "sms", None)
    key = (await create_api_key(pool, account_id)).key
    return Tenant(key=key, number=number, ids={"number": number})


@pytest.fixture
async def tenants(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> AsyncIterator[tuple[Tenant, Tenant]]:
    """A with a finished batch (its file), a conversation and a sender; B with a sender only."""
    a, b = await new_tenant(pool), await new_tenant(pool)
    file_id = await attach(
        api, a.headers, csv_bytes(["phone_number"], [[n] for n in unique_numbers(2)])
    )
    started = await api.post(
        "/v1/sms/batch",
        headers=a.headers,
        json={"file_id": file_id, "global": {"agent_number": a.number, "agent_message": "hi"}},
    )
    assert started.status_code == 200, started.text
    sent = await api.post(
        "/v1/sms/send",
        headers=a.headers,
        json={"user_number": unique_numbers(1)[0], "agent_number": a.number, "agent_message": "hi"},
    )
    assert sent.status_code == 200, sent.text
    # A's own sender is also a number A opted out: the opt-out routes name it as `{number}`.
    added = await api.post("/v1/opt-outs", headers=a.headers, json={"number": a.number})
    assert added.status_code == 201, added.text
    campaign = await api.post(
        "/v1/campaigns",
        headers=a.headers,
        json={"name": "A's", "sender": a.number, "templates": {"english": "{{body}}"}},
    )
    assert campaign.status_code == 201, campaign.text
    mailing_list = await api.post("/v1/lists", headers=a.headers, json={"name": "A's"})
    assert mailing_list.status_code == 201, mailing_list.text
    list_id = mailing_list.json()["data"]["id"]
    contact = unique_numbers(1)[0]
    added = await api.post(
        f"/v1/lists/{list_id}/contacts",
        headers=a.headers,
        json={"contacts": [{"phone_number": contact}]},
    )
    assert added.status_code == 200, added.text
    a.ids.update(
        list_id=list_id,
        phone_number=contact,
        campaign_id=campaign.json()["data"]["id"],
        batch_id=file_id,
        file_id=file_id,
        conversation_id=sent.json()["data"]["conversation_id"],
    )
    await eventually(
        lambda: api.get(f"/v1/sms/batch/{file_id}", headers=a.headers),
        lambda r: r.json()["data"]["status"] in FINAL,
    )
    yield a, b


def unknown_ids() -> dict[str, str]:
    fresh = str(uuid.uuid4())
    return {
        "batch_id": fresh,
        "file_id": fresh,
        "conversation_id": fresh,
        "campaign_id": fresh,
        "list_id": fresh,
        "phone_number": unique_numbers(1)[0],
        "number": unique_numbers(1)[0],
    }


async def call(
    api: httpx.AsyncClient,
    method: str,
    path: str,
    spec: Call,
    caller: Tenant,
    ids: dict[str, str],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    values = {**ids, "own_number": caller.number}

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.format(**values)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return await api.request(
        method,
        fill(path),
        headers=caller.headers if headers is None else headers,
        json=fill(spec.json),
        params=spec.query,
    )


def outcome(response: httpx.Response) -> tuple[int, list[str]]:
    return response.status_code, [e["error"] for e in response.json()["errors"] or []]


async def test_another_accounts_resources_are_404_as_if_they_did_not_exist(
    api: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    for (method, path), spec in SCOPED.items():
        as_b = await call(api, method, path, spec, b, a.ids)
        unknown = await call(api, method, path, spec, b, unknown_ids())
        assert unknown.status_code == 404, (method, path, unknown.text)
        assert outcome(as_b) == outcome(unknown), (method, path, as_b.text)
    # Last, since some of A's calls change A's things (a send, a deleted sender): the matrix
    # is only meaningful if each resource exists for its owner. Deletes go last.
    for (method, path), spec in sorted(SCOPED.items(), key=lambda item: item[0][0] == "DELETE"):
        as_a = await call(api, method, path, spec, a, a.ids)
        assert as_a.status_code != 404, (method, path, as_a.text)


async def test_lists_hold_only_the_callers_resources(
    api: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    for (method, path), spec in LISTS.items():
        own = (await call(api, method, path, spec, a, a.ids)).text
        other = (await call(api, method, path, spec, b, b.ids)).text
        mine = [a.ids["batch_id"], a.ids["conversation_id"], a.number, a.ids["list_id"]]
        assert any(i in own for i in mine), (path, own)
        assert not any(i in other for i in mine), (path, other)


async def test_every_route_but_the_public_ones_needs_a_key(api: httpx.AsyncClient) -> None:
    for method, path in [*SCOPED, *LISTS, *OWN]:
        filled = path.format(**unknown_ids())
        response = await api.request(method, filled, json={})
        assert outcome(response) == (401, ["UNAUTHORIZED"]), (method, path, response.text)


def dialect_outcome(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, response.json()["error"].get("code")


async def test_the_dialect_takes_another_accounts_sender_for_an_unknown_one(
    api: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    for (method, path), (spec, code) in DIALECT.items():
        as_b = await call(api, method, path, spec, b, a.ids, b.bearer_headers)
        unknown = await call(api, method, path, spec, b, unknown_ids(), b.bearer_headers)
        assert dialect_outcome(unknown) == (404, code), (path, unknown.text)
        assert dialect_outcome(as_b) == dialect_outcome(unknown), (path, as_b.text)
        as_a = await call(api, method, path, spec, a, a.ids, a.bearer_headers)
        assert as_a.status_code == 200, (path, as_a.text)
        without_key = await api.request(method, path, json={})
        assert without_key.status_code == 403, (path, without_key.text)
        assert without_key.json()["error"]["name"] == "AuthenticationError"


async def test_the_postman_dialect_takes_another_accounts_campaign_for_an_unknown_one(
    api: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    for (method, path), spec in POSTMAN.items():
        as_b = await call(api, method, path, spec, b, a.ids, b.bearer_headers)
        unknown = await call(api, method, path, spec, b, unknown_ids(), b.bearer_headers)
        assert dialect_outcome(unknown) == (404, "campaign_not_found"), (path, unknown.text)
        assert dialect_outcome(as_b) == dialect_outcome(unknown), (path, as_b.text)
        as_a = await call(api, method, path, spec, a, a.ids, a.bearer_headers)
        assert dialect_outcome(as_a) != dialect_outcome(unknown), (path, as_a.text)
        without_key = await api.request(method, path.format(**a.ids), json={})
        assert dialect_outcome(without_key) == (401, "invalid_api_key_provided")


# Another account's campaign named in a body: its template must not be B's to send or read.
CAMPAIGN_IN_BODY: dict[str, Call] = {
    "/v1/sms/batch": Call(
        json={
            "recipients": [{"phone_number": "+12125550123"}],
            "campaign_id": "{campaign_id}",
            "global": {"agent_number": "{own_number}", "request_data": {"body": "hi"}},
            "dry_run": True,
        }
    ),
    "/v1/sms/send": Call(
        json={
            "user_number": "+12125550123",
            "agent_number": "{own_number}",
            "campaign_id": "{campaign_id}",
            "params": {"body": "hi"},
        }
    ),
}


async def test_another_accounts_campaign_in_a_body_is_an_unknown_one(
    api: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    for path, spec in CAMPAIGN_IN_BODY.items():
        as_b = await call(api, "POST", path, spec, b, a.ids)
        unknown = await call(api, "POST", path, spec, b, unknown_ids())
        assert outcome(unknown) == (404, ["CAMPAIGN_NOT_FOUND"]), (path, unknown.text)
        assert outcome(as_b) == outcome(unknown), (path, as_b.text)
        as_a = await call(api, "POST", path, spec, a, a.ids)
        assert as_a.status_code == 200, (path, as_a.text)
