"""Builders shared by the single-send tests: sends, signed inbound posts, waiting on the stack."""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import httpx
import uvicorn
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from twilio.request_validator import RequestValidator

from activities.providers.twilio import TwilioCarrier
from api.app import create_app
from deploy.local.processes import free_port
from settings import INBOUND_PATH, Settings
from store import conversation_messages, conversations
from tests.support.builders import emulator_messages
from tests.support.stack import Account, WebhookReceiver

WAIT_SECONDS = 30
# Twilio's magic number for error 21610 (the user unsubscribed at the carrier), as the
# emulator answers it.
OPTED_OUT_AT_CARRIER = "+15005550004"

T = TypeVar("T")


async def send(
    api: httpx.AsyncClient,
    account: Account,
    user_number: str,
    *,
    key: str | None = None,
    agent_number: str | None = None,
    **body: Any,
) -> httpx.Response:
    payload = {"user_number": user_number, "agent_number": agent_number or account.agent_number}
    payload.update(body)
    headers = dict(account.headers)
    if key is not None:
        headers["idempotency-key"] = key
    return await api.post("/v1/sms/send", headers=headers, json=payload)


def inbound_form(settings: Settings, *, to: str, from_: str, body: str) -> dict[str, str]:
    """The form Twilio posts for a message a user sends to one of the account's numbers."""
    return {
        "AccountSid": settings.twilio_account_sid,
        "ApiVersion": "2010-04-01",
        "Body": body,
        "From": from_,
        "MessageSid": "SM" + secrets.token_hex(16),
        "NumMedia": "0",
        "To": to,
    }


async def post_inbound(
    api: httpx.AsyncClient,
    settings: Settings,
    form: dict[str, str],
    *,
    signature: str | None = None,
) -> httpx.Response:
    """Post the form signed as Twilio signs it: over the API's public URL, with its auth token."""
    if signature is None:
        validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
        signature = validator.compute_signature(settings.api_url + INBOUND_PATH, form)
    return await api.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": signature})


async def eventually(
    probe: Callable[[], Awaitable[T]], ready: Callable[[T], bool], *, seconds: float = WAIT_SECONDS
) -> T:
    """Probe until `ready` holds for its result (at most `seconds`); return that result."""
    async with asyncio.timeout(seconds):
        while True:
            value = await probe()
            if ready(value):
                return value
            await asyncio.sleep(0.1)


@asynccontextmanager
async def served_api(settings: Settings) -> AsyncIterator[Settings]:
    """The API on a real port, as the carrier reaches it; its settings name that address."""
    port = free_port()
    served = settings.model_copy(update={"api_port": port})
    server = uvicorn.Server(
        uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await eventually(started, bool)
        yield served
    finally:
        server.should_exit = True
        await serving


async def received_by(emulator_url: str, to: str, count: int) -> list[dict[str, Any]]:
    """The emulator's messages to `to`, once there are at least `count`."""
    return await eventually(
        lambda: emulator_messages(emulator_url, to=to), lambda found: len(found) >= count
    )


async def conversation(
    api: httpx.AsyncClient, account: Account, conversation_id: str
) -> dict[str, Any]:
    response = await api.get(f"/v1/sms/conversations/{conversation_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def conversation_when(
    api: httpx.AsyncClient,
    account: Account,
    conversation_id: str,
    ready: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    return await eventually(lambda: conversation(api, account, conversation_id), ready)


async def send_ok(
    api: httpx.AsyncClient, account: Account, user_number: str, **body: Any
) -> dict[str, Any]:
    """The reply's `data` of a send that must succeed."""
    response = await send(api, account, user_number, **body)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def next_conversation_while_refused(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    run: str,
    user_number: str,
    **second: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A send (webhook `run`) that opens a conversation, and once the webhook has been posted
    its first event (refused, if the test makes it), a send that opens the pair's next
    conversation with `second` options; both replies' `data`."""
    first = await send_ok(api, account, user_number, agent_message="one", webhook=webhooks.url(run))
    await webhooks.wait_for(run, "active")
    following = await send_ok(
        api,
        account,
        user_number,
        agent_message="two",
        webhook=webhooks.url(run),
        new_conversation=True,
        **second,
    )
    return first, following


def twilio_carrier(settings: Settings, **options: Any) -> TwilioCarrier:
    """The worker's carrier client, on the emulator of the test session (close it after)."""
    return TwilioCarrier(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        api_url=settings.carrier_url,
        timeout=settings.carrier_timeout_seconds,
        **options,
    )


async def queued_agent_message(
    pool: asyncpg.Pool, account: Account, user: str, body: str
) -> uuid.UUID:
    """An agent message of a new conversation with `user`, queued as a single send queues
    it, with no workflow behind it: for a test to drive its send itself."""
    async with pool.acquire() as conn:
        opened = await conversations.open_conversation(
            conn,
            account_id=account.account_id,
            agent_number=account.agent_number,
            user_number=user,
            workflow_id=f"no-workflow-{secrets.token_hex(4)}",
            fields=conversations.ConversationFields(),
        )
        return await conversation_messages.queue_agent_message(
            conn, conversation=opened, kind="message", body=body
        )


class SignalAnswerLost:
    """The real Temporal client, whose start of a conversation (signal-with-start) reaches the
    server and then fails as a connection cut before the answer would: once the workflow has
    claimed the message `claimed` names in the signal (so that the failure comes after its
    send began)."""

    def __init__(
        self, client: Client, pool: asyncpg.Pool, claimed: Callable[[Any], str | None]
    ) -> None:
        self._client = client
        self._pool = pool
        self._claimed = claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def start_workflow(self, *args: Any, **kwargs: Any) -> Any:
        await self._client.start_workflow(*args, **kwargs)
        [signal] = kwargs["start_signal_args"]
        message_id = self._claimed(signal)
        assert message_id is not None
        await eventually(
            lambda: self._pool.fetchval(
                "SELECT status FROM conversation_messages WHERE id = $1", uuid.UUID(message_id)
            ),
            lambda status: status != "queued",
        )
        raise RPCError(
            "connection reset after the request was sent", RPCStatusCode.UNAVAILABLE, b""
        )
