"""The batch driver: start batches through the API and follow them to their end."""

import secrets

import httpx

from tests.support.builders import attach
from tests.support.stack import Account, WebhookReceiver

FINAL = ("completed", "completed_partial", "failed", "cancelled")


def phases(events: list[dict]) -> list[str]:
    """The distinct statuses in arrival order (progress repeats a status)."""
    seen: list[str] = []
    for event in events:
        if not seen or seen[-1] != event["status"]:
            seen.append(event["status"])
    return seen


async def start(
    api: httpx.AsyncClient, account: Account, file_id: str, **body: object
) -> httpx.Response:
    payload = {"file_id": file_id, "global": {"agent_number": account.agent_number}}
    payload.update(body)
    return await api.post("/v1/sms/batch", headers=account.headers, json=payload)


async def run_batch(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    content: bytes,
    message: str,
    **body: object,
) -> tuple[str, list[dict]]:
    """Attach `content`, start a batch on it, and wait for its final webhook event."""
    run = secrets.token_hex(6)
    file_id = await attach(api, account.headers, content)
    response = await start(
        api,
        account,
        file_id,
        status_webhook=webhooks.url(run),
        **{"global": {"agent_number": account.agent_number, "agent_message": message}},
        **body,
    )
    assert response.status_code == 200, response.text
    return file_id, await webhooks.wait_for(run, *FINAL)
