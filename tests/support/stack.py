"""The session stack as tests see it: an account, the webhook receiver, the in-process API."""

import asyncio
import secrets
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route
from temporalio.client import Client

from api.app import create_app
from settings import Settings
from store import numbers
from store.accounts import create_account, create_api_key
from tests.support.builders import unique_numbers
from tracing import Tracing

AUTH_TOKEN = "dev-auth-token"
SENDER = "+15005550006"
WAIT_SECONDS = 60

# Routes without a key, and why; every other route needs a key with a permission.
PUBLIC_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "liveness",
    ("GET", "/readyz"): "readiness",
    (
        "POST",
        "/v1/webhooks/twilio/inbound",
    ): "the carrier's webhook, signed with X-Twilio-Signature",
    (
        "POST",
        "/v1/webhooks/twilio/status",
    ): "the carrier's delivery receipts, signed with X-Twilio-Signature",
    ("GET", "/metrics"): "counts by route and status, for Prometheus",
    ("GET", "/s/{code}"): "short links, followed by anyone the message reaches",
    ("GET", "/ui"): "the dashboard page; it asks for the key in the browser",
    ("GET", "/ui/dashboard.js"): "the dashboard's script",
    ("GET", "/ui/dashboard.css"): "the dashboard's style sheet",
    ("GET", "/openapi.json"): "the schema",
    ("GET", "/docs"): "the schema, as a page",
    ("GET", "/docs/oauth2-redirect"): "part of the schema page",
    ("GET", "/redoc"): "the schema, as a page",
    ("GET", "/docs/static/{path}"): "the scripts and styles of the schema's pages",
}


@asynccontextmanager
async def api_client(
    settings: Settings,
    tracing: Tracing | None = None,
    *,
    temporal_as: Callable[[Client], Any] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real FastAPI app, lifespan included, over an in-process transport; with
    `temporal_as`, its Temporal client is what that makes of the real one (a fault)."""
    app = create_app(settings, tracing)
    async with app.router.lifespan_context(app):
        if temporal_as is not None:
            app.state.temporal = temporal_as(app.state.temporal)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
            yield client


def error_code(response: httpx.Response) -> str:
    """The code of an error reply's first error, in the `{data, errors}` envelope or, for the
    Mobivate routes, in that dialect's `{success, error}` one, or for the Postman routes,
    Herald's code in that dialect's `{error}` one."""
    body = response.json()
    if body.get("success") is False:
        return body["error"]["code"]
    if "heraldCode" in body.get("error", {}):
        return body["error"]["heraldCode"]
    assert body["data"] is None, body
    return body["errors"][0]["error"]


@dataclass
class Account:
    account_id: uuid.UUID
    key: str
    agent_number: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": self.key}


async def new_account(pool: asyncpg.Pool) -> Account:
    """A fresh account with one key and a sender number of its own: a number belongs to one
    account, and the emulator accepts any sender but its few magic ones."""
    account_id = await create_account(pool, f"test-{secrets.token_hex(4)}")
    key = await create_api_key(pool, account_id)
    # A random number may be another account's already (add_number then gives None): the
    # session registers thousands, so one in tens of runs met one. Draw again.
    while True:
        sender = unique_numbers(1)[0]
        if await numbers.add_number(pool, account_id, sender, "sms", None) is not None:
            return Account(account_id=account_id, key=key.key, agent_number=sender)


Configure = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class WebhookPost:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class WebhookReceiver:
    """Collects status webhook posts per path, in arrival order; answers 204 unless told other
    statuses to answer first (`answers[name]`, used up in order)."""

    base_url: str
    received: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    posts: dict[str, list[WebhookPost]] = field(default_factory=lambda: defaultdict(list))
    answers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    # A `Retry-After` to give with each 429 and 503 answered at `name`.
    retry_after: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    async def wait_for(
        self, name: str, *statuses: str, times: int = 1, seconds: float = WAIT_SECONDS
    ) -> list[dict[str, Any]]:
        """The events at `name` once `times` of them have one of `statuses` (a minute at most,
        unless `seconds` says)."""
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(
                lambda: sum(e["status"] in statuses for e in self.received[name]) >= times
            )
        return self.received[name]

    def delivered(self, name: str) -> list[WebhookPost]:
        """The posts at `name` the receiver took (2xx), each `webhook-id` once, in the order
        it first took them: an event may come again (at least once), with the same id."""
        taken: dict[str, WebhookPost] = {}
        for post in self.posts[name]:
            if post.answered < 300:
                taken.setdefault(post.headers["webhook-id"], post)
        return list(taken.values())


async def rotate(api: httpx.AsyncClient, account: Account) -> str:
    """A new status-webhook signing secret for the account; the secret."""
    response = await api.post("/v1/webhooks/secret/rotate", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["secret"]


# An account's own (Twilio subaccount) carrier credentials, as the emulator can be told to
# know them (`carrier(accounts={SUBACCOUNT_SID: SUBACCOUNT_TOKEN})`).
SUBACCOUNT_SID = "AC" + "5" * 32
SUBACCOUNT_TOKEN = "subaccount-token-" + "7" * 16


async def set_own(api: httpx.AsyncClient, account: Account, token: str) -> httpx.Response:
    """Set the account's own carrier credentials: the subaccount, with `token`."""
    return await api.put(
        "/v1/carrier-account",
        headers=account.headers,
        json={"account_sid": SUBACCOUNT_SID, "auth_token": token},
    )


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, APIRoute | Route):
            for method in route.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    yield method, prefix + route.path
        elif isinstance(route, Mount):
            # Static files: any path under the mount.
            yield "GET", f"{prefix}{route.path}/{{path}}"
        else:
            # FastAPI keeps an included router as one entry that wraps the router's own routes.
            included = route.original_router
            yield from _walk(included.routes, prefix + route.include_context.prefix)


def app_routes() -> set[tuple[str, str]]:
    return set(_walk(create_app().routes))
