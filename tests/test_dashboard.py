"""The dashboard at `/ui` in a real headless Chromium against the real stack: the page loads
and asks for the key, shows a running batch progressing live from its event stream, and its
buttons pause and cancel it; its dry-run form previews a file.

Each test saves a screenshot; with `HERALD_SCREENSHOTS=docs` they replace the README's."""

import asyncio
import functools
import os
import re
import secrets
import shutil
import uuid
from pathlib import Path

import asyncpg
import httpx
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions

from settings import Settings
from tests.support.batches import FINAL, start_marked_batch, wait_for_status, waiting_batch
from tests.support.browser import chromium, run, until
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.delivery import wait_until_received
from tests.support.sending import served_api
from tests.support.stack import Account, Configure, WebhookReceiver

# The sender's pace keeps the batch sending (for a minute) while the browser watches it.
SENDER_MPS = 50
RECIPIENTS = 3000
PNG = b"\x89PNG\r\n\x1a\n"


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    """A PNG of the whole page; copied into `HERALD_SCREENSHOTS` when that is set."""
    path = tmp_path / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(1000, int(height)))
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(PNG)
    if target := os.environ.get("HERALD_SCREENSHOTS"):
        shutil.copyfile(path, Path(target) / name)


def sign_in(driver: WebDriver, url: str, key: str) -> None:
    driver.get(url)
    assert driver.title == "Herald dashboard"
    assert driver.find_element(By.ID, "login").is_displayed()
    assert not driver.find_element(By.ID, "app").is_displayed()
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def enter_key(driver: WebDriver, key: str) -> None:
    """Sign in on the page as it is, not loaded again: as after "Forget key"."""
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def row_sent(driver: WebDriver, batch_id: str) -> int:
    """The sent count the batch's row shows, 0 while it shows none."""
    text = driver.find_element(
        By.CSS_SELECTOR, f'tr[data-batch-id="{batch_id}"] .progress-cell .progress-text'
    ).text
    found = re.match(r"(\d+) sent", text)
    return int(found.group(1)) if found else 0


def shown_status(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "detail-status").text


async def test_the_dashboard_shows_a_batch_progressing_and_pauses_it(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    paced = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": SENDER_MPS}
    )
    assert paced.status_code == 200, paced.text
    batch_id, marker = await start_marked_batch(
        api, account, webhooks, unique_numbers(RECIPIENTS), name="Spring sale"
    )
    await wait_until_received(emulator_url, marker, 1)
    detail = (await api.get(f"/v1/sms/batch/{batch_id}", headers=account.headers)).json()

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        row = batch_row(batch_id)
        await until(driver, expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, row)))
        stored = await run(
            lambda: driver.execute_script(
                "return [sessionStorage.getItem('herald.apiKey'), localStorage.length,"
                " document.cookie]"
            )
        )
        assert stored == [account.key, 0, ""]
        await run(lambda: driver.find_element(By.CSS_SELECTOR, row).click())
        first = await until(driver, lambda d: row_sent(d, batch_id))
        later = await until(driver, lambda d: (n := row_sent(d, batch_id)) > first and n)
        assert first < later < RECIPIENTS
        assert await run(shown_status, driver) in ("in_progress", "in_progress_chunked")
        link = await run(lambda: driver.find_element(By.ID, "temporal-link").get_attribute("href"))
        assert link == detail["data"]["temporal_ui_url"]
        await until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-count="sent"]'))
        await run(screenshot, driver, tmp_path, "dashboard.png")

        await run(lambda: driver.find_element(By.ID, "pause").click())
        paused = await wait_for_status(api, account, batch_id, "paused")
        await until(driver, lambda d: shown_status(d) == "paused")
        assert paused["status"] == "paused"
        # Paused by the operator: no second pause, only resume or cancel.
        assert await run(lambda: driver.find_element(By.ID, "pause").get_attribute("disabled"))
        assert not await run(lambda: driver.find_element(By.ID, "resume").get_attribute("disabled"))

        await run(lambda: driver.find_element(By.ID, "cancel").click())
        await until(driver, expected_conditions.alert_is_present())
        await run(lambda: driver.switch_to.alert.accept())
        cancelled = await wait_for_status(api, account, batch_id, "cancelled")
        await until(driver, lambda d: shown_status(d) == "cancelled")
        assert cancelled["code"] == "cancelled"


async def test_the_dashboard_previews_a_file_without_sending(
    api: httpx.AsyncClient,
    account: Account,
    settings: Settings,
    tmp_path: Path,
) -> None:
    numbers = unique_numbers(3)
    recipients = tmp_path / "recipients.csv"
    recipients.write_bytes(
        csv_bytes(
            ["phone_number", "name"], [[numbers[0], "Ada"], ["12", "Bob"], [numbers[1], "Cy"]]
        )
    )
    before = (await api.get("/v1/sms/batches", headers=account.headers)).json()["data"]

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        sender = await until(
            driver, lambda d: d.find_element(By.ID, "dry-sender").get_attribute("value")
        )
        assert sender == account.agent_number
        await run(lambda: driver.find_element(By.ID, "dry-file").send_keys(str(recipients)))
        await run(lambda: driver.find_element(By.ID, "dry-message").send_keys("Hi {{name}}"))
        await run(lambda: driver.find_element(By.CSS_SELECTOR, "#dry-run-form button").click())
        summary = await until(driver, lambda d: d.find_element(By.ID, "dry-summary").text)
        messages = await run(
            lambda: [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#dry-messages tr")]
        )
        rejected = await run(
            lambda: [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#dry-errors tr")]
        )
        await run(screenshot, driver, tmp_path, "dashboard-dry-run.png")

    after = (await api.get("/v1/sms/batches", headers=account.headers)).json()["data"]
    assert summary == "The batch would send 2 messages."
    assert [m.split(" ")[:2] for m in messages] == [["1", numbers[0]], ["3", numbers[1]]]
    assert "Hi Ada" in messages[0]
    assert len(rejected) == 1 and rejected[0].startswith("2 12 ")
    assert after["batches"] == before["batches"]


async def test_forgetting_the_key_leaves_nothing_of_its_account_for_the_next_key(
    api: httpx.AsyncClient,
    account: Account,
    other_account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    tmp_path: Path,
) -> None:
    sent, previewed = unique_numbers(2)
    refused = f"not-a-number-{secrets.token_hex(3)}"
    name = f"Sale of account A {secrets.token_hex(3)}"
    batch_id, _ = await start_marked_batch(
        api, account, webhooks, csv_bytes(["phone_number"], [[sent], [refused]]), name=name
    )
    await wait_for_status(api, account, batch_id, *FINAL)
    preview = tmp_path / "preview.csv"
    preview.write_bytes(csv_bytes(["phone_number"], [[previewed]]))
    body = f"Hi from account A {secrets.token_hex(3)}"

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        row = batch_row(batch_id)
        await open_row(driver, row)
        await until(driver, lambda d: refused in d.find_element(By.ID, "error-rows").text)
        await until(driver, lambda d: d.find_element(By.ID, "dry-sender").get_attribute("value"))
        await run(lambda: driver.find_element(By.ID, "dry-file").send_keys(str(preview)))
        await run(lambda: driver.find_element(By.ID, "dry-message").send_keys(body))
        await run(lambda: driver.find_element(By.CSS_SELECTOR, "#dry-run-form button").click())
        await until(driver, lambda d: body in d.find_element(By.ID, "dry-messages").text)

        await run(lambda: driver.find_element(By.ID, "forget").click())
        await until(driver, lambda d: d.find_element(By.ID, "login").is_displayed())
        await run(enter_key, driver, other_account.key)
        await until(driver, lambda d: d.find_element(By.ID, "no-batches").is_displayed())
        sender = await until(
            driver, lambda d: d.find_element(By.ID, "dry-sender").get_attribute("value")
        )
        page = await run(lambda: driver.page_source)
        known = await run(
            lambda: driver.execute_script(
                "return [state.selected, state.batches.size, state.streams.size]"
            )
        )

    leaked = [s for s in (batch_id, name, refused, sent, previewed, body) if s in page]
    assert leaked == []
    assert known == [None, 0, 0]
    assert sender == other_account.agent_number


async def test_more_adds_each_page_of_rejected_rows_once_however_often_it_is_clicked(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # 120 rejected rows: three pages of the dashboard's 50.
    rows = [[unique_numbers(1)[0]], *([f"not-a-number-{n}"] for n in range(120))]
    batch_id, _ = await start_marked_batch(
        api, account, webhooks, csv_bytes(["phone_number"], rows)
    )
    await wait_for_status(api, account, batch_id, *FINAL)

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        row = batch_row(batch_id)
        await open_row(driver, row)
        button = (By.ID, "more-errors")
        await until(driver, expected_conditions.element_to_be_clickable(button))
        more = await run(driver.find_element, *button)
        # Both clicks land before the page they ask for comes back.
        await run(lambda: ActionChains(driver).double_click(more).perform())
        await until(driver, expected_conditions.element_to_be_clickable(button))
        await run(more.click)
        await until(driver, expected_conditions.invisibility_of_element_located(button))
        values = await run(
            lambda: [
                r.find_elements(By.TAG_NAME, "td")[1].text
                for r in driver.find_elements(By.CSS_SELECTOR, "#error-rows tr")
            ]
        )

    assert values == [f"not-a-number-{n}" for n in range(120)]


async def test_a_batch_paused_by_the_carriers_throttling_can_be_paused_for_good(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    """A batch the carrier's throttling paused resumes by itself (docs/API.md, Auto-pause):
    the dashboard still offers the pause that holds it for good, and the resume."""
    batch_id = await waiting_batch(api, account, webhooks, unique_numbers(2))
    # As the account-wide throttling leaves it (test_account_outages.py makes it happen).
    await pool.execute(
        "UPDATE batches SET status = 'paused', code = 'carrier_throttled' WHERE id = $1",
        uuid.UUID(batch_id),
    )

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        row = batch_row(batch_id)
        await open_row(driver, row)
        await until(driver, lambda d: shown_status(d) == "paused")
        pause, resume = await run(
            lambda: [
                driver.find_element(By.ID, name).get_attribute("disabled")
                for name in ("pause", "resume")
            ]
        )
    await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    assert (pause, resume) == (None, None)


async def open_row(driver: webdriver.Chrome, row: str) -> None:
    """Click the batch's row (a selector) once it can be clicked: that batch is shown."""
    await until(driver, expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, row)))
    await run(lambda: driver.find_element(By.CSS_SELECTOR, row).click())


def bar_value(driver: WebDriver, selector: str) -> str | None:
    """A progress bar's value; None while it has none (shown at work, without an end)."""
    value: str | None = driver.execute_script(
        "const bar = document.querySelector(arguments[0]);"
        " return bar.hasAttribute('value') ? String(bar.value) : null;",
        selector,
    )
    return value


async def batch_with_a_failed_row(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, carrier: Configure
) -> str:
    """A batch of two rows, one of which the carrier refuses (it ends `completed_partial`,
    with a `failed` row to retry). Its id."""
    refused, sent = unique_numbers(2)
    await carrier(scripted={refused: [400]})
    batch_id, _ = await start_marked_batch(api, account, webhooks, [refused, sent])
    return batch_id


def batch_row(batch_id: str) -> str:
    return f'tr[data-batch-id="{batch_id}"]'


def listed(driver: WebDriver) -> list[str | None]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#batch-rows tr")
    return [r.get_attribute("data-batch-id") for r in rows]


async def test_the_list_is_newest_first_and_a_finished_batch_offers_only_what_it_can_do(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    carrier: Configure,
) -> None:
    with_failed = await batch_with_a_failed_row(api, account, webhooks, carrier)
    nothing_failed, _ = await start_marked_batch(api, account, webhooks, unique_numbers(1))
    # Every row refused at validation: it ends with nothing to send.
    nothing_to_send, _ = await start_marked_batch(
        api, account, webhooks, csv_bytes(["phone_number"], [["not-a-number"]])
    )
    for batch_id in (with_failed, nothing_failed, nothing_to_send):
        await wait_for_status(api, account, batch_id, *FINAL)
    # The sender list's first (oldest) is registered for WhatsApp: the preview's is the SMS one.
    await api.delete(f"/v1/sms/numbers/{account.agent_number}", headers=account.headers)
    whatsapp = unique_numbers(1)[0]
    for number, channel in ((whatsapp, "whatsapp"), (account.agent_number, "sms")):
        registered = await api.post(
            "/v1/sms/numbers", headers=account.headers, json={"number": number, "channel": channel}
        )
        assert registered.status_code == 201, registered.text

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        await until(driver, lambda d: len(listed(d)) == 3)
        sender = await until(
            driver, lambda d: d.find_element(By.ID, "dry-sender").get_attribute("value")
        )
        # Opened from the keyboard.
        row = batch_row(nothing_to_send)
        await run(lambda: driver.find_element(By.CSS_SELECTOR, row).send_keys(Keys.ENTER))
        await until(driver, lambda d: shown_status(d) == "failed")
        # The list's refresh (every 5 s) leaves the focus where it is.
        await asyncio.sleep(6)
        focused = await run(
            lambda: driver.execute_script("return document.activeElement.dataset.batchId")
        )
        bars = await run(
            lambda: [bar_value(driver, s) for s in ("#detail-progress", f"{row} progress")]
        )
        retry_when_none_to_send = await run(
            lambda: driver.find_element(By.ID, "retry").get_attribute("disabled")
        )
        await run(lambda: driver.find_element(By.CSS_SELECTOR, batch_row(nothing_failed)).click())
        await until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-count="sent"]'))
        retry_when_none_failed = await run(
            lambda: driver.find_element(By.ID, "retry").get_attribute("disabled")
        )
        await run(lambda: driver.find_element(By.CSS_SELECTOR, batch_row(with_failed)).click())
        await until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-count="failed"]'))
        retry_when_failed = await until(
            driver, lambda d: d.find_element(By.ID, "retry").get_attribute("disabled") is None
        )
        # A batch started while the page is open comes first, above the older ones.
        newest, _ = await start_marked_batch(api, account, webhooks, unique_numbers(1))
        order = await until(driver, lambda d: (ids := listed(d))[0] == newest and ids)

    assert sender == account.agent_number
    assert focused == nothing_to_send
    assert bars == ["1", "1"]
    assert retry_when_none_to_send and retry_when_none_failed
    assert retry_when_failed
    assert order == [newest, nothing_to_send, nothing_failed, with_failed]


async def test_a_retried_batchs_stream_goes_on_after_its_last_runs_events(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    carrier: Configure,
) -> None:
    # Read again from its first event, the stream showed the last run again (validating ...
    # completed_partial) as the batch's state while the retry ran.
    batch_id = await batch_with_a_failed_row(api, account, webhooks, carrier)
    await wait_for_status(api, account, batch_id, *FINAL)

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        row = batch_row(batch_id)
        await open_row(driver, row)
        await until(
            driver, lambda d: d.find_element(By.ID, "retry").get_attribute("disabled") is None
        )
        await run(
            lambda: driver.execute_script(
                # Each status shown, though several come in one task (a replay).
                "window.shown = [];"
                " new MutationObserver((records) => records.forEach((record) =>"
                " record.addedNodes.forEach((node) => window.shown.push(node.textContent))))"
                ".observe(document.getElementById('detail-status'), {childList: true});"
            )
        )
        await run(lambda: driver.find_element(By.ID, "retry").click())
        await wait_for_status(api, account, batch_id, "completed")
        await until(driver, lambda d: shown_status(d) == "completed")
        shown = await run(lambda: driver.execute_script("return window.shown"))

    assert "validating" not in shown and "completed_partial" not in shown, shown


async def test_rejected_rows_written_after_the_batch_was_clicked_are_shown(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    # Validation writes every rejected row at its end: clicked while it ran, the batch showed
    # "None." for good, beside a count of them that grew.
    batch_id = await waiting_batch(api, account, webhooks, unique_numbers(1))

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        row = batch_row(batch_id)
        await open_row(driver, row)
        await until(driver, lambda d: d.find_element(By.ID, "no-errors").is_displayed())
        # As a validation's end writes them.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO rejected_rows (batch_id, row_number, account_id, code, reason,"
                " value) VALUES ($1, 7, $2, 'invalid_number', 'not a number', 'oops')",
                uuid.UUID(batch_id),
                account.account_id,
            )
            await conn.execute("UPDATE batches SET rejected = 1 WHERE id = $1", uuid.UUID(batch_id))
        shown = await until(driver, lambda d: d.find_element(By.ID, "error-rows").text)
    await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    assert shown.split()[:2] == ["7", "oops"]


def shows_batch(driver: WebDriver, batch_id: str) -> bool:
    return bool(driver.find_element(By.ID, "detail-id").text == batch_id)


def open_streams(driver: WebDriver) -> int:
    return int(driver.execute_script("return state.streams.size"))


async def sending_batches(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, count: int
) -> list[str]:
    """`count` batches of the account sending for a minute or more (its sender paced at
    SENDER_MPS, shared by them), each once its `in_progress` (or `in_progress_chunked`)
    event is in; their ids."""
    paced = await api.patch(
        f"/v1/sms/numbers/{account.agent_number}", headers=account.headers, json={"mps": SENDER_MPS}
    )
    assert paced.status_code == 200, paced.text
    started = [
        await start_marked_batch(api, account, webhooks, unique_numbers(RECIPIENTS))
        for _ in range(count)
    ]
    for _, marker in started:
        await webhooks.wait_for(marker, "in_progress", "in_progress_chunked")
    return [batch_id for batch_id, _ in started]


def streams_when(driver: WebDriver, size: int, holding: str | None = None) -> set[str]:
    """The batches the page follows once it follows `size` of them, `holding` among them;
    none before."""
    found = set(driver.execute_script("return [...state.streams.keys()]"))
    return found if len(found) == size and (holding is None or holding in found) else set()


async def test_only_sending_batches_hold_streams_and_the_batch_shown_takes_one(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
) -> None:
    # Two batches waiting for their time (listed after the sending ones: newer) held both
    # streams for good, their streams ending only at their final events: the batches sending,
    # the one clicked too, showed no live progress.
    sending = await sending_batches(api, account, webhooks, 3)
    waiting = [await waiting_batch(api, account, webhooks, unique_numbers(1)) for _ in range(2)]

    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        first = await until(driver, functools.partial(streams_when, size=2))
        [left_out] = set(sending) - first
        row = batch_row(left_out)
        await until(driver, expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, row)))
        # Its detail answers once the test has looked (releaseDetail); its progress events,
        # about once a second, enabled its actions before it was read.
        await run(
            lambda: driver.execute_script(
                "window.realFetch = window.fetch;"
                " window.detailHeld = new Promise((release) => {"
                "   window.releaseDetail = release; });"
                " window.fetch = (url, options) => String(url) === arguments[0]"
                " ? window.detailHeld.then(() => window.realFetch(url, options))"
                " : window.realFetch(url, options);",
                f"/v1/sms/batch/{left_out}",
            )
        )
        await run(lambda: driver.find_element(By.CSS_SELECTOR, row).click())
        taken = await until(driver, functools.partial(streams_when, size=2, holding=left_out))
        await asyncio.sleep(2.5)
        before_read = await run(
            lambda: driver.find_element(By.ID, "cancel").get_attribute("disabled")
        )
        await run(lambda: driver.execute_script("window.releaseDetail()"))
        await until(driver, lambda d: not d.find_element(By.ID, "cancel").get_attribute("disabled"))
        await run(lambda: driver.find_element(By.ID, "cancel").click())
        await until(driver, expected_conditions.alert_is_present())
        asked = await run(lambda: driver.switch_to.alert.text)
        await run(lambda: driver.switch_to.alert.dismiss())

    for batch_id in sending + waiting:
        await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)
    assert first <= set(sending)
    assert len(taken) == 2 and taken <= set(sending)
    assert before_read
    # An unnamed batch is named by its id: "this batch" named none.
    assert asked == f"Cancel batch {left_out}? Rows not sent end cancelled."


async def test_a_failed_refresh_is_said_until_a_refresh_succeeds(
    api: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    # One failed refresh of the list (a 502, a dropped connection) stayed in red for the rest
    # of the session, while the list below refreshed as before.
    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        await until(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
        await run(
            lambda: driver.execute_script(
                "window.realFetch = window.fetch;"
                " window.fetch = (url, options) => String(url).startsWith('/v1/sms/batches')"
                " ? Promise.reject(new TypeError('Failed to fetch'))"
                " : window.realFetch(url, options);"
            )
        )
        said = await until(driver, lambda d: d.find_element(By.ID, "notice").text)
        await run(lambda: driver.execute_script("window.fetch = window.realFetch;"))
        await until(driver, lambda d: d.find_element(By.ID, "notice").text == "")

    assert "Failed to fetch" in said


async def test_a_second_tab_works_while_the_first_follows_running_batches(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    settings: Settings,
) -> None:
    # Chromium opens six connections per host for all its tabs: a tab following three batches
    # held three, the second tab's three streams the rest, and its next request never left.
    sending = await sending_batches(api, account, webhooks, 4)

    async with served_api(settings) as served, chromium() as driver:
        url = f"http://127.0.0.1:{served.api_port}/ui"
        await run(sign_in, driver, url, account.key)
        first = await run(lambda: driver.current_window_handle)
        assert await until(driver, open_streams) == 2
        await run(
            lambda: driver.execute_script(
                # The streams it holds each time the tab goes out of sight and back.
                "window.held = [];"
                " document.addEventListener('visibilitychange', () => {"
                " const seen = document.visibilityState;"
                " setTimeout(() => window.held.push([seen, state.streams.size]), 300); });"
            )
        )

        await run(driver.switch_to.new_window, "tab")
        await run(sign_in, driver, url, account.key)
        for batch_id in sending:
            row = batch_row(batch_id)
            await open_row(driver, row)
            await until(driver, functools.partial(shows_batch, batch_id=batch_id))
            await until(driver, shown_status)
        assert await until(driver, open_streams) == 2

        await run(driver.switch_to.window, first)
        await until(driver, lambda d: len(d.execute_script("return window.held")) == 2)
        held = await run(lambda: driver.execute_script("return window.held"))
        assert await until(driver, open_streams) == 2

    for batch_id in sending:
        await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)
    assert held == [["hidden", 0], ["visible", 2]]


async def test_a_batch_that_ended_with_no_stream_to_say_so_shows_no_progress_it_had_before(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    # Its stream closed mid-way (the tab out of sight), the batch ended: the list's refresh
    # showed it `completed` at the progress of its last event seen, for as long as it was
    # listed.
    batch_id, _ = await start_marked_batch(api, account, webhooks, unique_numbers(4))
    await wait_for_status(api, account, batch_id, *FINAL)
    row = batch_row(batch_id)
    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        await until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row))
        # The last event its stream gave before it closed: one of four sent.
        await run(
            lambda: driver.execute_script(
                "onBatchEvent(arguments[0], 'progress', {status: 'in_progress', paused: false,"
                " sent: 1, failed: 0, recipients: 4});",
                batch_id,
            )
        )
        mid_way = await run(lambda: driver.find_element(By.CSS_SELECTOR, row).text)
        await run(lambda: driver.execute_script("return loadBatches()"))
        refreshed = await run(lambda: driver.find_element(By.CSS_SELECTOR, row).text)
        bar = await run(bar_value, driver, f"{row} progress")

    assert "1 sent, 0 failed of 4" in mid_way
    assert "completed" in refreshed and "1 sent" not in refreshed, refreshed
    assert bar == "1"


async def test_where_a_batchs_events_end_is_read_for_a_few_seconds_at_most(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    # Read before a retry, for the stream of its new run: a batch retried meanwhile (from
    # another tab) streams on, and the read held every action (Cancel too) until its run
    # ended. Here a batch waiting for its time an hour away, whose stream stays open.
    batch_id = await waiting_batch(api, account, webhooks, unique_numbers(1))
    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        await until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, batch_row(batch_id)))
        await run(driver.set_script_timeout, 20)
        took = await run(
            lambda: driver.execute_async_script(
                "const done = arguments[arguments.length - 1]; const began = Date.now();"
                " lastEventOf(arguments[0]).then(() => done(Date.now() - began),"
                " (error) => done(String(error)));",
                batch_id,
            )
        )
    await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    assert isinstance(took, int) and 4000 <= took < 15000, took


async def test_an_action_done_whose_refresh_fails_is_said_done(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, settings: Settings
) -> None:
    # The pause was sent, the list's refresh after it answered 502: the notice said only the
    # failure, in red, inviting the operator to pause again.
    batch_id = await waiting_batch(api, account, webhooks, unique_numbers(1))
    row = batch_row(batch_id)
    async with served_api(settings) as served, chromium() as driver:
        await run(sign_in, driver, f"http://127.0.0.1:{served.api_port}/ui", account.key)
        await open_row(driver, row)
        await until(
            driver, lambda d: d.find_element(By.ID, "pause").get_attribute("disabled") is None
        )
        # The list's reads answer 502 from now on.
        await run(
            lambda: driver.execute_script(
                "const realFetch = window.fetch;"
                " window.fetch = (url, options) => String(url).startsWith('/v1/sms/batches')"
                " ? Promise.resolve(new Response('<html>Bad gateway</html>', {status: 502}))"
                " : realFetch(url, options);"
            )
        )
        await run(lambda: driver.find_element(By.ID, "pause").click())
        said = await until(driver, refreshed_notice)
    await api.post(f"/v1/sms/batch/{batch_id}/cancel", headers=account.headers)

    assert said.startswith("pause: sent. The page could not be refreshed:"), said


def refreshed_notice(driver: WebDriver) -> str:
    """The notice once it speaks of the page's refresh, else nothing."""
    text: str = driver.find_element(By.ID, "notice").text
    return text if "refreshed" in text else ""
