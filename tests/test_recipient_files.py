"""Recipient files on the real stack: strict mode, exclusions, limits, segments, `/errors`."""

import csv
import io
import json
import secrets
import tempfile
import uuid
from typing import BinaryIO, cast
from unittest import mock

import asyncpg
import httpx
import pytest

from activities import validation
from activities.recipients.columns import BLOCK_BYTES
from api.services.batch_exports import spreadsheet_safe
from settings import Settings
from store.opt_outs import add_opt_out
from tests.support.batches import phases, run_batch, start
from tests.support.builders import attach, csv_bytes, emulator_messages, unique_numbers
from tests.support.pages import every_item
from tests.support.stack import Account, WebhookReceiver, api_client, error_code


async def get_batch(api: httpx.AsyncClient, account: Account, batch_id: str) -> dict:
    response = await api.get(f"/v1/sms/batch/{batch_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def all_rejected_rows(
    api: httpx.AsyncClient, account: Account, batch_id: str, limit: int
) -> list[dict]:
    """Every rejected row, page by page through the cursor."""
    return await every_item(
        api, account, f"/v1/sms/batch/{batch_id}/errors", "rejected_rows", limit=limit
    )


async def test_strict_mode_fails_the_whole_batch_and_sends_nothing(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    good = unique_numbers(3)
    rows = [[good[0]], [good[1]], ["555-not-a-number"], [good[2]], [""], [good[0]]]

    batch_id, events = await run_batch(
        api,
        account,
        webhooks,
        csv_bytes(["phone_number", "x"], [[*r, "x"] for r in rows]),
        f"strict {marker}",
        strict=True,
    )

    assert phases(events) == ["validating", "failed"]
    final = events[-1]
    assert final["code"] == "validation_failed"
    assert final["reason"] == (
        "strict mode: 2 rows rejected, nothing sent; first: row 3 invalid_number"
        " ('555-not-a-number'); row 5 blank_number"
    )
    assert (final["messages_total"], final["messages_successful"]) == (6, 0)
    assert await emulator_messages(emulator_url, body_contains=marker) == []
    batch = await get_batch(api, account, batch_id)
    assert (batch["status"], batch["code"]) == ("failed", "validation_failed")
    assert (batch["rows_total"], batch["recipients"], batch["rejected"]) == (6, 0, 2)
    assert batch["counts"] == {"rejected": 2}
    ledger = await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)
    assert ledger.json()["data"]["messages"] == []
    rejected = await all_rejected_rows(api, account, batch_id, limit=100)
    assert [(r["row_number"], r["code"], r["value"]) for r in rejected] == [
        (3, "invalid_number", "555-not-a-number"),
        (5, "blank_number", ""),
    ]


async def test_opted_out_and_duplicate_numbers_are_skipped_unless_the_request_says_not(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
) -> None:
    numbers = unique_numbers(3)
    await add_opt_out(pool, account.account_id, numbers[0], source="test")
    content = csv_bytes(["phone_number"], [[n] for n in [*numbers, numbers[1]]])
    excluded, included = secrets.token_hex(6), secrets.token_hex(6)

    first, events = await run_batch(api, account, webhooks, content, f"default {excluded}")
    _, everyone = await run_batch(
        api,
        account,
        webhooks,
        content,
        f"everyone {included}",
        exclude_opt_outs=False,
        exclude_duplicates=False,
    )

    assert events[-1]["status"] == "completed_partial"
    assert (events[-1]["messages_successful"], events[-1]["messages_skipped"]) == (2, 2)
    sent = await emulator_messages(emulator_url, body_contains=excluded)
    assert sorted(m["to"] for m in sent) == sorted(numbers[1:])
    skipped = (
        await api.get(
            f"/v1/sms/batch/{first}/messages",
            headers=account.headers,
            params={"status": "skipped"},
        )
    ).json()["data"]["messages"]
    assert [(m["to_number"], m["error_code"]) for m in skipped] == [
        (numbers[0], "opted_out"),
        (numbers[1], "duplicate"),
    ]
    assert everyone[-1]["status"] == "completed"
    again = await emulator_messages(emulator_url, body_contains=included)
    assert sorted(m["to"] for m in again) == sorted([*numbers, numbers[1]])


async def test_errors_are_paged_and_exported_as_csv_that_spreadsheets_cannot_run(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    good, valid_but_unnamed = unique_numbers(2)
    rows = [
        [good, "Ann", "x"],
        ['=HYPERLINK("http://evil.example","click")', "Bob", "x"],
        ["-2+3", "Cy", "x"],
        ["@SUM(A1)", "Di", "x"],
        ["+1 nope", "Ed", "x"],
        ["\tTAB", "Flo", "x"],
        [valid_but_unnamed, "", "x"],
        ["", "Gus", "x"],
    ]
    content = csv_bytes(["phone_number", "name", "last name"], rows)

    batch_id, events = await run_batch(api, account, webhooks, content, "Hi {{name}}")

    assert events[-1]["status"] == "completed_partial"
    expected = [
        (0, "last name", "invalid_column_name"),
        (2, rows[1][0], "invalid_number"),
        (3, "-2+3", "invalid_number"),
        (4, "@SUM(A1)", "invalid_number"),
        (5, "+1 nope", "invalid_number"),
        (6, "\tTAB", "invalid_number"),
        (7, valid_but_unnamed, "missing_variable"),
        (8, "", "blank_number"),
    ]
    paged = await all_rejected_rows(api, account, batch_id, limit=3)
    assert [(r["row_number"], r["value"], r["code"]) for r in paged] == expected
    assert paged[-2]["message"] == (
        "no value for {{name}} in this row and no default in global.request_data"
    )
    batch = await get_batch(api, account, batch_id)
    assert batch["rejected"] == 7  # rows only: the header's entry is not a row

    by_query = await api.get(
        f"/v1/sms/batch/{batch_id}/errors", headers=account.headers, params={"format": "csv"}
    )
    by_accept = await api.get(
        f"/v1/sms/batch/{batch_id}/errors",
        headers={**account.headers, "accept": "text/csv"},
    )
    assert by_query.status_code == 200
    assert by_query.headers["content-type"] == "text/csv; charset=utf-8"
    assert by_query.content == by_accept.content
    assert by_query.content.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(io.StringIO(by_query.content.decode("utf-8-sig"), newline="")))
    assert table[0] == ["row_number", "value", "code", "message"]
    assert [(int(r[0]), r[1], r[2]) for r in table[1:]] == [
        (0, "last name", "invalid_column_name"),
        (2, "'" + rows[1][0], "invalid_number"),
        (3, "'-2+3", "invalid_number"),
        (4, "'@SUM(A1)", "invalid_number"),
        (5, "'+1 nope", "invalid_number"),
        (6, "'\tTAB", "invalid_number"),
        (7, valid_but_unnamed, "missing_variable"),
        (8, "", "blank_number"),
    ]


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("\nx", "'\nx"),
        (" =1+1", "' =1+1"),
        ("\t\t+1+1", "'\t\t+1+1"),
        ("\u3000-1", "'\u3000-1"),  # an ideographic space
        ("\xa0@SUM(A1)", "'\xa0@SUM(A1)"),  # a no-break space
        ("\uff1d1+1", "'\uff1d1+1"),  # full-width =
        ("\uff0b1", "'\uff0b1"),
        ("\uff0d1", "'\uff0d1"),
        ("\uff20SUM(A1)", "'\uff20SUM(A1)"),
        ("|calc", "'|calc"),
        (" |calc", "' |calc"),
        ("\r\n", "'\r\n"),
        ("  ", "  "),
        # E.164's shape, valid or only possible (a dialect's): a number, no formula.
        ("+1201555012", "+1201555012"),
        ("+6599999999", "+6599999999"),
        ("+12015550123", "+12015550123"),
        ("+1234567890123456", "'+1234567890123456"),  # longer than any E.164 number
        ("+1 201", "'+1 201"),
        ("+1+1", "'+1+1"),
        ("Ann = Bob", "Ann = Bob"),
        ("", ""),
    ],
)
def test_a_cell_a_spreadsheet_would_run_gets_a_leading_quote(cell: str, shown: str) -> None:
    assert spreadsheet_safe(cell) == shown


async def test_segments_are_counted_per_message_and_totalled_for_the_batch(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    numbers = unique_numbers(4)
    rows = [
        [numbers[0], "Ann"],  # GSM-7, 1 segment
        [numbers[1], "Жанна"],  # UCS-2, 1 segment
        [numbers[2], "A" * 158],  # GSM-7, 161 characters with "Hi ": 2 segments
        [numbers[3], "€" * 80],  # GSM-7, the euro sign takes two septets: 2 segments
        [numbers[1], "Жанна"],  # duplicate: skipped, not counted
    ]

    batch_id, events = await run_batch(
        api, account, webhooks, csv_bytes(["phone_number", "name"], rows), "Hi {{name}}"
    )

    assert events[-1]["status"] == "completed_partial"
    batch = await get_batch(api, account, batch_id)
    assert (batch["segments_total"], batch["messages_gsm7"], batch["messages_ucs2"]) == (6, 3, 1)
    ledger = (await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)).json()[
        "data"
    ]["messages"]
    assert [(m["to_number"], m["encoding"], m["segments"]) for m in ledger] == [
        (numbers[0], "gsm7", 1),
        (numbers[1], "ucs2", 1),
        (numbers[2], "gsm7", 2),
        (numbers[3], "gsm7", 2),
        (numbers[1], "ucs2", 1),
    ]


async def test_limits_of_the_api_that_accepted_the_batch_apply(
    settings: Settings, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    small = settings.model_copy(update={"max_rows_per_batch": 3, "max_message_chars": 20})
    numbers = unique_numbers(4)
    marker = secrets.token_hex(4)
    async with api_client(small) as api:
        # A CSV file over the limit is refused at request time (test_batch_request_checks);
        # a JSON file's rows are counted as it is validated.
        over_file = json.dumps([{"phone_number": n} for n in numbers]).encode()
        _, over = await run_batch(api, account, webhooks, over_file, marker)
        at_limit, within = await run_batch(
            api,
            account,
            webhooks,
            csv_bytes(["phone_number", "name"], [[numbers[0], "Al"], [numbers[1], "A" * 20]]),
            "Hi {{name}} " + marker,
        )
        rejected = await all_rejected_rows(api, account, at_limit, limit=10)

    assert phases(over) == ["validating", "failed"]
    assert over[-1]["code"] == "too_many_rows"
    assert "more than 3 rows" in over[-1]["reason"]
    assert within[-1]["status"] == "completed_partial"
    assert [m["to"] for m in await emulator_messages(emulator_url, body_contains=marker)] == [
        numbers[0]
    ]
    assert [(r["row_number"], r["code"]) for r in rejected] == [(2, "message_too_long")]


# JSON that the json module cannot read: nested past its stack, an integer past its digits.
DEEP_JSON_FILE = b'[{"phone_number": "+12015550123", "a": ' + b"[" * 10**5 + b"]" * 10**5 + b"}]"
LONG_INTEGER_FILE = b'[{"phone_number": "+12015550123", "a": ' + b"7" * 5_000 + b"}]"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"phone_number,name\n+12015550123,Zo\xeb\n", "invalid_encoding"),
        (b"PK\x03\x04\x14\x00\x06\x00[Content_Types].xml", "invalid_format"),
        (b'{"phone_number": "+12015550123"}', "invalid_format"),
        (b'phone_number,name\n+12015550123,"Ann\n', "invalid_format"),
        (
            b'[{"phone_number": "+12015550123", "phone_number": "+12015550124"}]',
            "duplicate_phone_column",
        ),
        (DEEP_JSON_FILE, "invalid_format"),
        (LONG_INTEGER_FILE, "invalid_format"),
    ],
    ids=[
        "latin-1",
        "xlsx",
        "json-object",
        "open-quote",
        "two-phone-columns",
        "deep-json",
        "long-integer",
    ],
)
async def test_unreadable_files_fail_at_validating_with_a_clear_code(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    content: bytes,
    code: str,
) -> None:
    batch_id, events = await run_batch(api, account, webhooks, content, "never")

    assert phases(events) == ["validating", "failed"]
    assert events[-1]["code"] == code
    assert events[-1]["reason"]
    assert (await get_batch(api, account, batch_id))["code"] == code


@pytest.mark.parametrize("content", [DEEP_JSON_FILE, LONG_INTEGER_FILE], ids=["deep", "long"])
async def test_unreadable_json_is_invalid_format_for_a_dry_run_and_a_list(
    api: httpx.AsyncClient, account: Account, content: bytes
) -> None:
    file_id = await attach(api, account.headers, content)
    dry_run = await start(
        api,
        account,
        file_id,
        dry_run=True,
        **{"global": {"agent_number": account.agent_number, "agent_message": "hi"}},
    )
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "l"})
    contacts = f"/v1/lists/{created.json()['data']['id']}/contacts"
    lists = [
        await api.post(
            f"{contacts}/{action}", headers=account.headers, files={"file": ("c.json", content)}
        )
        for action in ("upload", "remove")
    ]

    assert dry_run.status_code == 200, dry_run.text
    assert dry_run.json()["data"]["code"] == "invalid_format"
    for response in lists:
        assert (response.status_code, error_code(response)) == (400, "INVALID_CONTACTS"), (
            response.text
        )
        assert "invalid_format" in response.json()["errors"][0]["message"]


async def test_a_json_files_escapes_postgresql_cannot_store_are_kept_as_u_fffd(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    # A NUL or lone surrogate reaches a cell only by its escape: a CSV cannot hold either.
    marker = secrets.token_hex(6)
    number = unique_numbers(1)[0]
    content = (
        f'[{{"phone_number": "{number}", "name": "A\\u0000n\\ud800",'
        ' "note\\u0000": "\\udfff", "request_data": {"k\\uDC00": "v\\u0000"}}]'
    ).encode()
    message = "Hi {{name}} " + marker
    file_id = await attach(api, account.headers, content)
    dry_run = await start(
        api,
        account,
        file_id,
        dry_run=True,
        **{"global": {"agent_number": account.agent_number, "agent_message": message}},
    )
    created = await api.post("/v1/lists", headers=account.headers, json={"name": "l"})
    contacts = f"/v1/lists/{created.json()['data']['id']}/contacts"
    uploaded = await api.post(
        f"{contacts}/upload", headers=account.headers, files={"file": ("c.json", content)}
    )
    listed = await api.get(contacts, headers=account.headers)

    _, events = await run_batch(api, account, webhooks, content, message)

    assert dry_run.status_code == 200, dry_run.text
    assert (dry_run.json()["data"]["to_send"], dry_run.json()["data"]["code"]) == (1, None)
    assert events[-1]["status"] == "completed", events[-1]
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert [m["body"] for m in received] == [f"Hi A\ufffdn\ufffd {marker}"]
    assert uploaded.status_code == 200, uploaded.text
    assert listed.json()["data"]["contacts"][0]["fields"] == {
        "name": "A\ufffdn\ufffd",
        "note\ufffd": "\ufffd",
        "k\ufffd": "v\ufffd",
    }


async def test_a_json_array_of_objects_is_a_recipient_file(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    marker = secrets.token_hex(6)
    numbers = unique_numbers(2)
    content = json.dumps(
        [
            {"phone_number": numbers[0].removeprefix("+"), "request_data.name": "Ann"},
            {"phone_number": numbers[1], "First": "Bob"},
        ]
    ).encode()

    _, events = await run_batch(
        api,
        account,
        webhooks,
        content,
        "Hi {{name}} " + marker,
        column_mapping={"First": "request_data.name"},
    )

    assert events[-1]["status"] == "completed"
    received = await emulator_messages(emulator_url, body_contains=marker)
    assert sorted((m["to"], m["body"]) for m in received) == [
        (numbers[0], f"Hi Ann {marker}"),
        (numbers[1], f"Hi Bob {marker}"),
    ]


async def test_a_column_named_with_spaces_gives_the_variable_it_is_mapped_to(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    # A CRM export's "First Name", mapped to request_data.first_name: the batch was refused
    # (MISSING_VARIABLE), or sent the default to everyone, on either engine.
    numbers = unique_numbers(2)
    rows = [["phone_number", "First Name"], [numbers[0], "Ann"], [numbers[1], "Bob"]]
    plain = "".join(f"{n},{name}\n" for n, name in rows)
    quoted = io.StringIO()
    csv.writer(quoted, quoting=csv.QUOTE_ALL).writerows(rows)
    mapping = {"First Name": "request_data.first_name"}
    for content in (plain.encode(), quoted.getvalue().encode()):
        batch_id, events = await run_batch(
            api, account, webhooks, content, "Hi {{first_name}}", column_mapping=mapping
        )
        response = await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)
        rejected = await api.get(f"/v1/sms/batch/{batch_id}/errors", headers=account.headers)

        assert events[-1]["status"] == "completed", events[-1]
        assert [m["body"] for m in response.json()["data"]["messages"]] == ["Hi Ann", "Hi Bob"]
        assert rejected.json()["data"]["rejected_rows"] == []


async def test_a_plain_file_and_a_quoted_one_give_the_same_ledger(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver
) -> None:
    """The same rows, validated by columns (plain CSV) and row by row (every field quoted),
    with a message that CSV and COPY must carry intact: quotes, a comma, a line break, `\\N`."""
    marker = secrets.token_hex(6)
    numbers = unique_numbers(2)
    message = f'Hi "{{{{name}}}}", a,b\\N\n{marker} 😀'
    rows = [[numbers[0], "Zoë"], [numbers[1], ""], ["bad", "x"], [numbers[0], "again"]]
    plain = "".join(f"{n},{name}\n" for n, name in [("phone_number", "name"), *rows])
    quoted = io.StringIO()
    csv.writer(quoted, quoting=csv.QUOTE_ALL).writerows([["phone_number", "name"], *rows])
    ledgers = []
    for content in (plain.encode(), quoted.getvalue().encode()):
        batch_id, events = await run_batch(api, account, webhooks, content, message)
        assert events[-1]["status"] == "completed_partial"
        response = await api.get(f"/v1/sms/batch/{batch_id}/messages", headers=account.headers)
        ledgers.append(
            [
                (
                    m["row_number"],
                    m["to_number"],
                    m["body"],
                    m["status"] == "skipped",
                    m["error_code"],
                )
                for m in response.json()["data"]["messages"]
            ]
        )
    assert ledgers[0] == ledgers[1]
    assert ledgers[0] == [
        (1, numbers[0], f'Hi "Zoë", a,b\\N\n{marker} 😀', False, None),
        (4, numbers[0], f'Hi "again", a,b\\N\n{marker} 😀', True, "duplicate"),
    ]


def spooled_files(monkeypatch: pytest.MonkeyPatch) -> list[BinaryIO]:
    """The temporary files the (in-process) worker's validation makes from now on."""
    made: list[BinaryIO] = []

    def temporary_file() -> BinaryIO:
        made.append(cast(BinaryIO, tempfile.TemporaryFile()))
        return made[-1]

    monkeypatch.setattr(validation, "TemporaryFile", temporary_file)
    return made


@pytest.mark.parametrize("disk", ["writable", "full"])
async def test_a_file_not_plain_after_its_first_blocks_is_validated_whole_row_by_row(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    disk: str,
) -> None:
    """A plain header, blocks of rows the column path validates (read from the file's copy
    on disk) and COPYs, then a row it cannot take (a quote inside an unquoted cell): the
    copied blocks are undone, the row path reads the file back and validates it whole, and
    the ledger holds each row once. One number throughout, so one message is sent. When
    the disk cannot take the copy, the file is validated from memory, to the same ledger."""
    spooled = spooled_files(monkeypatch)
    if disk == "full":
        monkeypatch.setattr(validation, "_write", mock.Mock(side_effect=OSError(28, "full")))
    number = unique_numbers(1)[0]
    filler = "x" * 100
    # More than two of the column path's blocks.
    rows = 3 * BLOCK_BYTES // len(f"{number},Ann,{filler}\n")
    content = "phone_number,name,note\n" + f"{number},Ann,{filler}\n" * rows
    content += f'{number},say "hi",{filler}\n'

    batch_id, events = await run_batch(api, account, webhooks, content.encode(), "Hi {{name}}")

    # Partial: the repeated rows were skipped.
    assert events[-1]["status"] == "completed_partial"
    batch = await get_batch(api, account, batch_id)
    assert (batch["rows_total"], batch["recipients"], batch["rejected"]) == (rows + 1, rows + 1, 0)
    ledger = await pool.fetch(
        "SELECT seq, row_number, body, status, error_code FROM messages WHERE batch_id = $1"
        " AND row_number IN (1, $2) ORDER BY row_number",
        uuid.UUID(batch_id),
        rows + 1,
    )
    assert [tuple(row) for row in ledger] == [
        (0, 1, "Hi Ann", "sent", None),
        (rows, rows + 1, 'Hi say "hi"', "skipped", "duplicate"),
    ]
    assert [m["body"] for m in await emulator_messages(emulator_url, to=number)] == ["Hi Ann"]
    # The copy on disk was made (and, the disk full, given up), and closed after.
    assert len(spooled) == 1
    assert spooled[0].closed
