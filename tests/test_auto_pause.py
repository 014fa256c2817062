"""A batch pauses itself when the carrier refuses too many of its recent messages
(`auto_pause_error_rate`), on the real stack with the emulator refusing scripted numbers."""

import httpx

from tests.support.batches import FINAL, phases, start, start_marked_batch, wait_for_status
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.delivery import received
from tests.support.stack import Account, Configure, WebhookReceiver, error_code

ROWS = 2000
# The first slice's numbers the carrier cannot route (400: error 21612): 80% of that slice.
REFUSED = 400


async def test_a_batch_pauses_itself_when_carrier_errors_pass_its_rate_and_resumes(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    numbers = unique_numbers(ROWS)
    await carrier(scripted={number: [400] for number in numbers[:REFUSED]})
    file_id, marker = await start_marked_batch(api, account, webhooks, numbers)

    events = await webhooks.wait_for(marker, "paused", *FINAL)
    paused = events[-1]
    assert paused["status"] == "paused"
    assert paused["code"] == "carrier_error_rate"
    assert "21612" in paused["reason"]
    assert set(paused["error_codes"]) == {"21612"}
    # Sending stopped: the rows after the first slices wait, `pending`.
    batch = await wait_for_status(api, account, file_id, "paused")
    assert batch["counts"].get("pending", 0) > 0
    assert len(await received(emulator_url, marker)) < ROWS - REFUSED

    response = await api.post(f"/v1/sms/batch/{file_id}/resume", headers=account.headers)
    assert response.status_code == 200, response.text
    events = await webhooks.wait_for(marker, *FINAL)
    final = events[-1]
    assert final["status"] == "completed_partial"
    assert (final["messages_failed"], final["messages_successful"]) == (REFUSED, ROWS - REFUSED)
    assert phases(events).count("paused") == 1


async def test_a_batch_with_auto_pause_off_sends_on_through_carrier_errors(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, carrier: Configure
) -> None:
    numbers = unique_numbers(ROWS // 2)
    await carrier(scripted={number: [400] for number in numbers[:REFUSED]})
    _, marker = await start_marked_batch(
        api, account, webhooks, numbers, auto_pause_error_rate=None
    )

    events = await webhooks.wait_for(marker, *FINAL)

    assert "paused" not in phases(events)
    final = events[-1]
    assert (final["status"], final["messages_failed"]) == ("completed_partial", REFUSED)


async def test_an_auto_pause_rate_outside_0_to_1_is_refused(
    api: httpx.AsyncClient, account: Account
) -> None:
    file_id = await attach(api, account.headers, csv_bytes(["phone_number"], [["+12015550123"]]))
    for rate in (1.5, -0.1, "often"):
        response = await start(
            api,
            account,
            file_id,
            auto_pause_error_rate=rate,
            **{"global": {"agent_number": account.agent_number, "agent_message": "hi"}},
        )
        assert (response.status_code, error_code(response)) == (400, "INVALID_REQUEST")
