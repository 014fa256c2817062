"""Headless Chromium for the browser tests: Debian's `chromium` driven through its
`chromium-driver` by Selenium (`make test` installs both with apt-get when run as root).

The session's worker and the served API run on the test's event loop, so every blocking
WebDriver call goes through `run` (a thread) and the loop goes on meanwhile."""

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")

WAIT_SECONDS = 60
NO_CHROMIUM = (
    "no Chromium here: Debian's `chromium` and `chromium-driver` are not installed, and"
    " `make test` installs them only when run as root where apt-get works"
)


async def run(call: Callable[..., T], *args: Any) -> T:
    """One blocking WebDriver call, off the event loop."""
    return await asyncio.to_thread(call, *args)


async def until(
    driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T], seconds: float = 0
) -> T:
    """Poll `condition` in the browser until it answers something truthy; return that."""
    wait = WebDriverWait(driver, seconds or WAIT_SECONDS, poll_frequency=0.2)
    return await run(wait.until, condition)


def _start(width: int, height: int) -> webdriver.Chrome:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium is not None and driver is not None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        # Tests run as root, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    # The driver is named, so Selenium downloads none.
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@asynccontextmanager
async def chromium(width: int = 1280, height: int = 1000) -> AsyncIterator[webdriver.Chrome]:
    """A fresh headless Chromium; the test is skipped, saying why, where there is none."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip(NO_CHROMIUM)
    driver = await run(functools.partial(_start, width, height))
    try:
        yield driver
    finally:
        await run(driver.quit)
