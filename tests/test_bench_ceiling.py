"""The bench's ceilings post the messages they say they post: To, From and Body, and with a
status callback URL each message's own, keyed as a batch's messages are (Herald's form)."""

import uuid

import httpx
import pytest

from bench.ceiling import post_all
from settings import Settings
from store.receipts import message_key

CALLBACK = "http://127.0.0.1:9/v1/webhooks/twilio/status"


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("status_callback", [None, CALLBACK], ids=["bare", "herald-form"])
async def test_the_ceiling_posts_each_message_with_the_form_asked_for(
    emulator_url: str, settings: Settings, lean: bool, status_callback: str | None
) -> None:
    marker = uuid.uuid4().hex
    messages = [(f"+1201555{n:04d}", f"ceiling {marker} {n}") for n in range(5)]

    sent, seconds = await post_all(
        url=emulator_url,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        agent_number="+12015550100",
        messages=messages,
        concurrency=2,
        status_callback=status_callback,
        lean=lean,
    )

    assert sent == len(messages) and seconds > 0
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            f"{emulator_url}/_emulator/messages", params={"body_contains": marker}
        )
    received = {m["body"]: m for m in answer.json()}
    assert sorted(received) == sorted(body for _, body in messages)
    batches = set()
    for seq, (to, body) in enumerate(messages):
        message = received[body]
        assert (message["to"], message["from"]) == (to, "+12015550100")
        if status_callback is None:
            assert message["status_callback"] is None
            continue
        url, _, query = message["status_callback"].partition("?")
        key = message_key(query)
        assert url == CALLBACK and key is not None
        assert (key.seq, key.attempt) == (seq, 1)
        batches.add(key.batch_id)
    # The messages of one run name one batch, as a batch's do.
    assert len(batches) == (0 if status_callback is None else 1)
