"""`GET /v1/sms/batch/{id}/messages` as CSV: every ledger row, streamed a page at a time,
safe to open in a spreadsheet."""

import csv
import io
import secrets

import httpx
import pytest

from api.routes.batches import csv_asked
from api.services import batch_exports
from tests.support.batches import run_batch
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.delivery import ledger_rows
from tests.support.stack import Account, WebhookReceiver, error_code


def table(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.content.startswith(b"\xef\xbb\xbf")
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))


async def test_every_ledger_row_comes_out_as_csv_page_after_page(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_exports, "CSV_PAGE", 2)
    marker = secrets.token_hex(6)
    numbers = unique_numbers(5)
    content = csv_bytes(
        ["phone_number", "name"],
        [[numbers[0], "=HYPERLINK(1)"], *[[n, "Ada"] for n in numbers[1:]], [numbers[1], "x"]],
    )
    file_id, _ = await run_batch(api, account, webhooks, content, message="{{name}} " + marker)
    path = f"/v1/sms/batch/{file_id}/messages"

    by_query = await api.get(path, headers=account.headers, params={"format": "csv"})
    by_accept = await api.get(path, headers={**account.headers, "accept": "text/csv"})

    assert by_query.content == by_accept.content
    rows = table(by_query)
    assert list(rows[0]) == list(batch_exports.MESSAGE_CSV_COLUMNS)
    ledger = await ledger_rows(api, account, file_id)
    assert [
        (int(r["seq"]), r["phone_number"], r["status"], r["error_code"], r["carrier_sid"])
        for r in rows
    ] == [
        (m["seq"], m["to_number"], m["status"], m["error_code"] or "", m["carrier_sid"] or "")
        for m in ledger
    ]
    assert len(rows) == 6
    assert {r["status"] for r in rows} == {"sent", "skipped"}
    assert rows[0]["body"] == f"'=HYPERLINK(1) {marker}"
    assert all(r["sent_at"] for r in rows if r["status"] == "sent")
    assert {r["delivered_at"] for r in rows} == {""}

    skipped = table(
        await api.get(path, headers=account.headers, params={"format": "csv", "status": "skipped"})
    )
    assert [(r["phone_number"], r["error_code"]) for r in skipped] == [(numbers[1], "duplicate")]


async def test_a_csv_export_with_an_unknown_status_is_refused(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    file_id, _ = await run_batch(api, account, webhooks, unique_numbers(1))

    response = await api.get(
        f"/v1/sms/batch/{file_id}/messages",
        headers=account.headers,
        params={"format": "csv", "status": "bogus"},
    )

    assert response.status_code == 400
    assert error_code(response) == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("accept", "csv_given"),
    [
        ("text/csv", True),
        ("text/csv, application/json", True),
        ("application/json;q=0.5, text/csv", True),
        ("application/json, text/csv;q=0", False),
        ("application/json, text/csv;q=0.5", False),
        ("text/csv;q=nonsense", False),
        ("*/*", False),
    ],
)
def test_csv_is_given_for_an_accept_header_that_prefers_it(accept: str, csv_given: bool) -> None:
    assert csv_asked(None, accept) is csv_given
    assert csv_asked("json", accept) is False
    assert csv_asked("csv", accept) is True


async def test_a_client_that_refuses_csv_gets_the_envelope(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    file_id, _ = await run_batch(api, account, webhooks, csv_bytes(["phone_number"], [["x"]]))
    refusing = {**account.headers, "accept": "application/json, text/csv;q=0"}

    messages = await api.get(f"/v1/sms/batch/{file_id}/messages", headers=refusing)
    errors = await api.get(f"/v1/sms/batch/{file_id}/errors", headers=refusing)

    assert messages.headers["content-type"] == "application/json"
    assert messages.json()["data"]["messages"] == []
    assert errors.headers["content-type"] == "application/json"
    assert [r["code"] for r in errors.json()["data"]["rejected_rows"]] == ["invalid_number"]
