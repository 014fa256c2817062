"""The opt-out list: managed over the API per account, and honoured by running batches for
every row not yet sent."""

import secrets

import asyncpg
import httpx

from store.accounts import create_account, create_api_key
from tests.support.batches import FINAL, start_marked_batch
from tests.support.builders import emulator_messages, unique_numbers
from tests.support.delivery import (
    assert_each_row_once,
    ledger_rows,
    wait_until_received,
)
from tests.support.pages import every_page
from tests.support.stack import Account, Configure, WebhookReceiver, error_code


async def test_opt_outs_are_added_listed_by_page_and_removed(
    api: httpx.AsyncClient, account: Account
) -> None:
    listed = unique_numbers(5)
    added = [
        await api.post("/v1/opt-outs", headers=account.headers, json={"number": n.lstrip("+")})
        for n in listed
    ]
    again = await api.post("/v1/opt-outs", headers=account.headers, json={"number": listed[0]})
    invalid = await api.post("/v1/opt-outs", headers=account.headers, json={"number": "abc"})
    pages = [
        [o["number"] for o in page]
        for page in await every_page(api, account, "/v1/opt-outs", "opt_outs", limit=2)
    ]
    removed = await api.delete(f"/v1/opt-outs/{listed[0]}", headers=account.headers)
    removed_again = await api.delete(f"/v1/opt-outs/{listed[0]}", headers=account.headers)
    left = (await api.get("/v1/opt-outs", headers=account.headers)).json()["data"]

    assert [r.status_code for r in added] == [201] * 5
    assert [(r.json()["data"]["number"], r.json()["data"]["source"]) for r in added] == [
        (n, "api") for n in listed
    ]
    assert again.status_code == 201
    assert again.json()["data"] == added[0].json()["data"]
    assert (invalid.status_code, error_code(invalid)) == (400, "INVALID_PHONE_NUMBER")
    assert pages == [listed[0:2], listed[2:4], listed[4:]]
    assert removed.json()["data"] == {"deleted": listed[0]}
    assert (removed_again.status_code, error_code(removed_again)) == (404, "OPT_OUT_NOT_FOUND")
    assert [o["number"] for o in left["opt_outs"]] == listed[1:]
    assert left["next_cursor"] is None


async def test_another_accounts_opt_outs_are_neither_seen_nor_removed(
    api: httpx.AsyncClient, account: Account, pool: asyncpg.Pool
) -> None:
    other_id = await create_account(pool, f"other-{secrets.token_hex(4)}")
    other = {"authorization": (await create_api_key(pool, other_id)).key}
    number = unique_numbers(1)[0]
    await api.post("/v1/opt-outs", headers=account.headers, json={"number": number})

    seen = (await api.get("/v1/opt-outs", headers=other)).json()["data"]["opt_outs"]
    removed = await api.delete(f"/v1/opt-outs/{number}", headers=other)
    unauthorised = await api.get("/v1/opt-outs")
    still = (await api.get("/v1/opt-outs", headers=account.headers)).json()["data"]["opt_outs"]

    assert seen == []
    assert removed.status_code == 404
    assert unauthorised.status_code == 401
    assert [o["number"] for o in still] == [number]


async def test_a_number_that_opts_out_mid_batch_is_skipped_where_not_yet_sent(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    carrier: Configure,
) -> None:
    # Three slices of 250: the third is claimed only when a first one ends, seconds later.
    await carrier(latency_ms=600)
    recipients = unique_numbers(750)
    late = recipients[-1]
    honouring, honouring_marker = await start_marked_batch(api, account, webhooks, recipients)
    ignoring, ignoring_marker = await start_marked_batch(
        api, account, webhooks, recipients, exclude_opt_outs=False
    )
    await wait_until_received(emulator_url, honouring_marker, 1)
    first = (await emulator_messages(emulator_url, body_contains=honouring_marker))[0]["to"]

    for number in (first, late):
        response = await api.post("/v1/opt-outs", headers=account.headers, json={"number": number})
        assert response.status_code == 201
    await webhooks.wait_for(honouring_marker, *FINAL)
    await webhooks.wait_for(ignoring_marker, *FINAL)

    honoured = {r["to_number"]: r for r in await ledger_rows(api, account, honouring)}
    received = await emulator_messages(emulator_url, body_contains=honouring_marker)
    statuses = assert_each_row_once(list(honoured.values()), received, 750)
    assert statuses == {"sent": 749, "skipped": 1}
    assert (honoured[late]["status"], honoured[late]["error_code"]) == ("skipped", "opted_out")
    assert honoured[first]["status"] == "sent"
    ignored = await ledger_rows(api, account, ignoring)
    received = await emulator_messages(emulator_url, body_contains=ignoring_marker)
    assert assert_each_row_once(ignored, received, 750) == {"sent": 750}
