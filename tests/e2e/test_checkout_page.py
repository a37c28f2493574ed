"""The checkout page in a real browser: Debian's chromium, headless, driven by Selenium
through chromedriver, against the gateway and the real, secured server; the page calls
with the token the gateway gives it (/config.js), as under `make run`.

Chromium is required: `make test` installs it (as root) and this module fails, never
skips, when it is missing. STOCKCORE_CHECKOUT_SCREENSHOT names a PNG file to write the
page to while the hold counts down (docs/checkout.png is made that way)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from devstack import demo
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from tests.e2e.conftest import GatewayCaller

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 15


@pytest.fixture
def gateway_settings(gateway_settings: GatewaySettings) -> GatewaySettings:
    """The default timeouts: stocking the catalogue shares two cores with chromium."""
    return replace(gateway_settings, gateway_timeouts={})


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless chromium; quit after the test."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
            " (`make test` does this as root)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,860",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _stock_catalogue(api: GatewayCaller, last_unit: str) -> None:
    for sku, on_hand in demo.CATALOGUE.items():
        units = 1 if sku == last_unit else on_hand
        reply = api.request(
            "POST",
            f"/v1/stock/{sku}:adjust",
            json={"onHand": str(units), "reason": "count", "idempotencyKey": f"count-{sku}"},
        )
        assert reply.status_code == 200, reply.text


def _until(driver: WebDriver, check: Callable[[WebDriver], T], what: str) -> T:
    # The page re-renders as stock and events arrive: an element found may be replaced.
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(check, f"waited for {what}")


def _product(driver: WebDriver, sku: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-sku="{sku}"]')


def _available_label(driver: WebDriver, sku: str) -> str:
    return str(_product(driver, sku).find_element(By.CLASS_NAME, "availability").text)


def _add_to_cart(driver: WebDriver, sku: str) -> None:
    button = _until(
        driver,
        lambda d: (b := _product(d, sku).find_element(By.TAG_NAME, "button")).is_enabled() and b,
        f"{sku} on sale",
    )
    button.click()


def _countdown_seconds(driver: WebDriver) -> int:
    minutes, seconds = driver.find_element(By.ID, "countdown").text.split(":")
    return int(minutes) * 60 + int(seconds)


def _status(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "order-status").text)


def _reserve_count_down_pay(driver: WebDriver, gateway: Gateway) -> None:
    driver.get(f"{gateway.url}/?shopper=alice&hold=120")
    _until(driver, lambda d: "available" in _available_label(d, "DRESS-RED-M"), "availability")
    before = int(_available_label(driver, "DRESS-RED-M").split()[0])
    _add_to_cart(driver, "DRESS-RED-M")

    _until(driver, lambda d: _status(d) == "PENDING_PAYMENT", "the order, held")
    first = _until(driver, lambda d: d.find_element(By.ID, "countdown").text, "the countdown")
    assert 100 <= _countdown_seconds(driver) <= 120, first
    # The hold is visible to every shopper: the availability dropped by the unit held.
    _until(
        driver,
        lambda d: _available_label(d, "DRESS-RED-M") == f"{before - 1} available",
        "availability without the held unit",
    )
    start = _countdown_seconds(driver)
    _until(driver, lambda d: _countdown_seconds(d) < start, "the countdown to move")

    screenshot = os.environ.get("STOCKCORE_CHECKOUT_SCREENSHOT")
    if screenshot:
        driver.save_screenshot(screenshot)

    driver.find_element(By.ID, "pay").click()
    _until(driver, lambda d: _status(d) == "PAID", "PAID")
    # The history comes only from the WatchOrders stream.
    _until(
        driver,
        lambda d: d.find_element(By.ID, "order-history").text.endswith("PAID"),
        "the PAID event from WatchOrders",
    )
    assert "Payment received" in driver.find_element(By.ID, "notice").text


async def test_shopper_reserves_watches_the_countdown_pays_and_sees_paid(
    gateway: Gateway, api: GatewayCaller, browser: WebDriver
) -> None:
    await asyncio.to_thread(_stock_catalogue, api, "FLASH-SALE-1")
    await asyncio.to_thread(_reserve_count_down_pay, browser, gateway)


def _second_shopper_sees_sold_out(driver: WebDriver, gateway: Gateway) -> None:
    driver.get(f"{gateway.url}/?shopper=alice")
    alice = driver.current_window_handle
    _add_to_cart(driver, "FLASH-SALE-1")
    _until(driver, lambda d: _status(d) == "PENDING_PAYMENT", "alice's hold on the last unit")

    driver.switch_to.new_window("window")
    driver.get(f"{gateway.url}/?shopper=bob")
    _until(driver, lambda d: _available_label(d, "FLASH-SALE-1") == "Sold out", "sold out")
    button = _product(driver, "FLASH-SALE-1").find_element(By.TAG_NAME, "button")
    assert not button.is_enabled()
    assert _available_label(driver, "DRESS-RED-M") == "100 available"

    # Alice lets it go: Bob sees it back on sale, live.
    driver.switch_to.window(alice)
    driver.find_element(By.ID, "empty").click()
    driver.switch_to.window(driver.window_handles[-1])
    _until(driver, lambda d: _available_label(d, "FLASH-SALE-1") == "Only 1 left", "back on sale")


async def test_second_shopper_sees_sold_out_on_the_last_unit(
    gateway: Gateway, api: GatewayCaller, browser: WebDriver
) -> None:
    await asyncio.to_thread(_stock_catalogue, api, "FLASH-SALE-1")
    await asyncio.to_thread(_second_shopper_sees_sold_out, browser, gateway)


def _hold_expires(driver: WebDriver, gateway: Gateway) -> None:
    driver.get(f"{gateway.url}/?shopper=carol&hold=2")
    _add_to_cart(driver, "TSHIRT-BLK-M")
    _until(driver, lambda d: "expired" in d.find_element(By.ID, "hold").text, "the hold to end")
    _until(driver, lambda d: _status(d) == "EXPIRED", "EXPIRED from WatchOrders")
    assert "went back on sale" in driver.find_element(By.ID, "notice").text
    assert not driver.find_element(By.ID, "pay").is_enabled()
    assert "expired" in driver.find_element(By.ID, "hold").text


async def test_expired_hold_is_shown_and_the_order_expires(
    gateway: Gateway, api: GatewayCaller, browser: WebDriver
) -> None:
    await asyncio.to_thread(_stock_catalogue, api, "FLASH-SALE-1")
    await asyncio.to_thread(_hold_expires, browser, gateway)
