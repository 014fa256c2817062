"""`/docs` in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
which `make test` installs when it can) loads the page with no internet, "Authorize" takes
the API key, and "Try it out" runs a request that answers 200."""

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.wait import WebDriverWait

from settings import Settings
from tests.support.browser import chromium, run
from tests.support.sending import served_api
from tests.support.stack import WAIT_SECONDS, Account

# Swagger UI's element of an operation: `operations-{tag}-{operationId}`.
OPERATION = "operations-numbers-list_numbers"


def try_list_numbers(driver: webdriver.Chrome, docs_url: str, key: str) -> tuple[str, str]:
    """Authorize with `key` in the page, run `list_numbers`; (status shown, body shown)."""
    wait = WebDriverWait(driver, WAIT_SECONDS)

    def clickable(css: str) -> WebElement:
        return wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, css)))

    driver.get(docs_url)
    clickable(".auth-wrapper .btn.authorize").click()
    schemes = wait.until(
        ready.visibility_of_all_elements_located((By.CSS_SELECTOR, ".auth-container"))
    )
    api_key = next(scheme for scheme in schemes if "ApiKey" in scheme.text)
    api_key.find_element(By.CSS_SELECTOR, "input").send_keys(key)
    api_key.find_element(By.CSS_SELECTOR, "button.authorize").click()
    clickable(".btn-done").click()

    operation = wait.until(ready.presence_of_element_located((By.ID, OPERATION)))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    clickable(f"#{OPERATION} .try-out__btn").click()
    clickable(f"#{OPERATION} .execute").click()
    status = wait.until(
        ready.visibility_of_element_located(
            (
                By.CSS_SELECTOR,
                f"#{OPERATION} .live-responses-table tr.response .response-col_status",
            )
        )
    )
    body = driver.find_element(By.CSS_SELECTOR, f"#{OPERATION} .live-responses-table .microlight")
    return status.text.strip(), body.text


async def test_authorize_then_try_it_out_answers_200_with_the_accounts_numbers(
    settings: Settings, account: Account
) -> None:
    async with served_api(settings) as served, chromium(1400, 2000) as browser:
        status, body = await run(try_list_numbers, browser, f"{served.api_url}/docs", account.key)

    assert status == "200"
    assert account.agent_number in body
