"""The checkout page in a real browser: Debian's chromium, headless, driven by Selenium
through chromedriver, against the gateway and the real, secured server; the page calls
with the token its session gives it (POST /session, same origin), and pays through the
simulated payment provider, as under `make run`. A page of another origin, in the same
browser, gets nothing of it.

Chromium is required: `make test` installs it (as root) and this module fails, never
skips, when it is missing. STOCKCORE_CHECKOUT_SCREENSHOT names a PNG file to write the
page to while the hold counts down (docs/checkout.png is made that way)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
import requests
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
from runtime.processes import free_port
from tests.e2e.conftest import GatewayCaller
from tests.waiting import until_true

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


def _shopper(driver: WebDriver) -> str:
    return str(
        _until(
            driver,
            lambda d: (t := d.find_element(By.ID, "shopper").text).startswith("shopper-") and t,
            "the session's customer",
        )
    )


def _cart(driver: WebDriver) -> dict[str, str]:
    """The cart's lines as shown: SKU -> its text ("2 \N{MULTIPLICATION SIGN} Red summer
    dress, M")."""
    lines = driver.find_elements(By.CSS_SELECTOR, "#cart-lines li")
    return {
        str(li.get_attribute("data-sku")): str(li.find_element(By.CLASS_NAME, "line").text)
        for li in lines
    }


def _click_line(driver: WebDriver, sku: str, button: str) -> None:
    _until(
        driver,
        lambda d: (
            (
                b := d.find_element(By.CSS_SELECTOR, f'#cart-lines li[data-sku="{sku}"] .{button}')
            ).is_enabled()
            and b
        ),
        f"the cart's {button} button of {sku}",
    ).click()


def _in_cart(driver: WebDriver, sku: str, quantity: int) -> None:
    _until(
        driver,
        lambda d: (
            _cart(d).get(sku, "0").startswith(f"{quantity} \N{MULTIPLICATION SIGN}")
            and not d.find_element(By.ID, "pay").get_attribute("disabled")
        ),
        f"{quantity} of {sku} in the cart",
    )


def _change_cart_count_down_pay(driver: WebDriver, gateway: Gateway) -> str:
    driver.get(f"{gateway.url}/?hold=120")
    _until(driver, lambda d: "available" in _available_label(d, "DRESS-RED-M"), "availability")
    before = int(_available_label(driver, "DRESS-RED-M").split()[0])

    # The cart: a dress (the reservation), then three changes of its lines, one by one.
    _add_to_cart(driver, "DRESS-RED-M")
    _in_cart(driver, "DRESS-RED-M", 1)
    first = _until(driver, lambda d: d.find_element(By.ID, "countdown").text, "the countdown")
    assert 100 <= _countdown_seconds(driver) <= 120, first
    # The hold is visible to every shopper: the availability dropped by the unit held.
    _until(
        driver,
        lambda d: _available_label(d, "DRESS-RED-M") == f"{before - 1} available",
        "availability without the held unit",
    )
    _add_to_cart(driver, "TSHIRT-BLK-M")
    _in_cart(driver, "TSHIRT-BLK-M", 1)
    _click_line(driver, "DRESS-RED-M", "more")
    _in_cart(driver, "DRESS-RED-M", 2)
    _click_line(driver, "TSHIRT-BLK-M", "remove")
    _until(driver, lambda d: set(_cart(d)) == {"DRESS-RED-M"}, "the T-shirt out of the cart")
    _until(
        driver,
        lambda d: _available_label(d, "DRESS-RED-M") == f"{before - 2} available",
        "availability without the two held units",
    )
    # No order yet: the cart is a hold, counted down from its last change.
    assert driver.find_element(By.ID, "order").get_attribute("hidden") is not None
    start = _countdown_seconds(driver)
    assert 100 <= start <= 120, start
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
    # The provider's webhook may pay the order (and its event reach the page) before the
    # payment's answer does.
    _until(
        driver,
        lambda d: "Payment received" in d.find_element(By.ID, "notice").text,
        "the payment's answer",
    )
    return _shopper(driver)


def _levels(api: GatewayCaller, *skus: str) -> dict[str, tuple[int, int, int]]:
    query = "&".join(f"skus={sku}" for sku in skus) + "&consistency=CONSISTENCY_STRONG"
    reply = api.request("GET", f"/v1/stock?{query}")
    assert reply.status_code == 200, reply.text
    return {
        level["sku"]: (int(level["onHand"]), int(level.get("reserved", 0)), int(level["available"]))
        for level in reply.json()["levels"]
    }


async def test_shopper_changes_the_cart_line_by_line_pays_and_gets_one_order(
    gateway: Gateway, api: GatewayCaller, browser: WebDriver
) -> None:
    await asyncio.to_thread(_stock_catalogue, api, "FLASH-SALE-1")
    shopper = await asyncio.to_thread(_change_cart_count_down_pay, browser, gateway)

    # Exactly one order, of the cart as it was at checkout: no cancelled ones behind it,
    # the session's customer's, paid by the provider, not by the page.
    listed = await asyncio.to_thread(api.request, "GET", f"/v1/orders?customerId={shopper}")
    (order,) = listed.json()["orders"]
    assert order["status"] == "ORDER_STATUS_PAID"
    # The payment is the provider's charge, which its webhook reported.
    assert order["paymentId"].startswith("ch_")
    assert [(line["sku"], line["quantity"]) for line in order["lines"]] == [("DRESS-RED-M", "2")]
    assert order["totalMinor"] == str(2 * 5999)
    # Stock is exact: the two dresses left on hand, nothing is held any more.
    levels = await asyncio.to_thread(_levels, api, "DRESS-RED-M", "TSHIRT-BLK-M")
    assert levels == {
        "DRESS-RED-M": (demo.CATALOGUE["DRESS-RED-M"] - 2, 0, demo.CATALOGUE["DRESS-RED-M"] - 2),
        "TSHIRT-BLK-M": (demo.CATALOGUE["TSHIRT-BLK-M"], 0, demo.CATALOGUE["TSHIRT-BLK-M"]),
    }


def _second_shopper_sees_sold_out(driver: WebDriver, gateway: Gateway) -> None:
    driver.get(gateway.url + "/")
    alice = driver.current_window_handle
    first = _shopper(driver)
    _add_to_cart(driver, "FLASH-SALE-1")
    _in_cart(driver, "FLASH-SALE-1", 1)

    # Another shopper: a browser without the first one's session cookie (Path=/session,
    # which WebDriver's own deletion, for the page's path, does not reach).
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.switch_to.new_window("window")
    driver.get(gateway.url + "/")
    assert _shopper(driver) != first
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


def _cart_expires(driver: WebDriver, gateway: Gateway) -> str:
    driver.get(f"{gateway.url}/?hold=2")
    _add_to_cart(driver, "TSHIRT-BLK-M")
    _until(driver, lambda d: "expired" in d.find_element(By.ID, "hold").text, "the hold to end")
    assert "went back on sale" in driver.find_element(By.ID, "hold").text
    assert not driver.find_element(By.ID, "pay").is_enabled()
    _until(
        driver,
        lambda d: _available_label(d, "TSHIRT-BLK-M") == "500 available",
        "the T-shirt back on sale",
    )
    return _shopper(driver)


async def test_an_abandoned_cart_expires_as_a_hold_and_leaves_no_order(
    gateway: Gateway, api: GatewayCaller, browser: WebDriver
) -> None:
    await asyncio.to_thread(_stock_catalogue, api, "FLASH-SALE-1")
    shopper = await asyncio.to_thread(_cart_expires, browser, gateway)

    listed = await asyncio.to_thread(api.request, "GET", f"/v1/orders?customerId={shopper}")
    assert listed.json().get("orders", []) == []


# A page of another origin tries every way a page has to take the checkout page's token:
# run the gateway's scripts, fetch and post with the browser's cookies, read a frame.
_ATTACKER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>loading</title></head><body>
<script>window.onerror = () => true;</script>
<script src="GATEWAY/config.js"></script>
<script src="GATEWAY/session"></script>
<iframe id="frame" src="GATEWAY/"></iframe>
<script>
(async () => {
  const gateway = "GATEWAY";
  const text = async (reply) => reply.type + " " + reply.status + " " + (await reply.text());
  const attempts = {
    configScript: async () => JSON.stringify(window.stockcoreConfig || null),
    post: () => fetch(gateway + "/session", { method: "POST", credentials: "include" }).then(text),
    postJson: () => fetch(gateway + "/session", {
      method: "POST", credentials: "include",
      headers: { "content-type": "application/json" }, body: "{}",
    }).then(text),
    postNoCors: () => fetch(gateway + "/session", {
      method: "POST", mode: "no-cors", credentials: "include",
    }).then(text),
    get: () => fetch(gateway + "/session", { credentials: "include" }).then(text),
    config: () => fetch(gateway + "/config.js").then(text),
    xhr: () => new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("POST", gateway + "/session");
      request.withCredentials = true;
      request.onload = () => resolve(request.status + " " + request.responseText);
      request.onerror = () => resolve("error");
      request.send();
    }),
    frame: () => new Promise((resolve) => setTimeout(() => {
      try {
        resolve(document.getElementById("frame").contentWindow.document.body.innerHTML);
      } catch (error) {
        resolve("blocked: " + error.name);
      }
    }, 500)),
  };
  const results = {};
  for (const [name, attempt] of Object.entries(attempts)) {
    try {
      results[name] = String(await attempt());
    } catch (error) {
      results[name] = "refused: " + error.name;
    }
  }
  window.results = results;
  document.title = "done";
})();
</script>
</body></html>
"""
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def attacker(gateway: Gateway) -> Iterator[int]:
    """Another web site on this machine (another port: another origin), whose page tries
    to take the checkout page's token from the gateway; its port is yielded."""
    handler = type("Handler", (_AttackerPage,), {"page": _ATTACKER_PAGE.replace(
        "GATEWAY", gateway.url).encode()})  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _what_the_attacker_got(driver: WebDriver, url: str) -> dict[str, str]:
    driver.get(url)
    _until(driver, lambda d: d.title == "done", "the other site's attempts")
    results: dict[str, str] = driver.execute_script("return window.results")
    return results


async def test_a_page_of_another_origin_cannot_read_the_page_token(
    gateway: Gateway, attacker: int, browser: WebDriver, gateway_settings: GatewaySettings
) -> None:
    # The shopper has a session in this browser already: its cookie is there to be sent.
    await asyncio.to_thread(browser.get, gateway.url + "/")
    await asyncio.to_thread(_shopper, browser)

    got = {
        origin: await asyncio.to_thread(_what_the_attacker_got, browser, f"{origin}/")
        for origin in (
            f"http://127.0.0.1:{attacker}",  # the same site, another origin
            f"http://localhost:{attacker}",  # another site
        )
    }

    for origin, results in got.items():
        assert set(results) >= {"configScript", "post", "postNoCors", "xhr", "frame"}, results
        for attempt, outcome in results.items():
            assert not JWT.search(outcome), (origin, attempt, outcome)
        assert results["configScript"] == "null", origin
        assert results["frame"].startswith("blocked"), (origin, results["frame"])
    # The gateway saw them, and handed a session to none: once a request made after
    # them is in its access log (written on a timer), so are they.
    marker = "/catalogue.json?after-the-other-site"
    await asyncio.to_thread(requests.get, gateway.url + marker, timeout=10)
    log_file = Path(gateway_settings.gateway_access_log)
    await until_true(lambda: marker in log_file.read_text(), "the marker in the access log")
    text = await asyncio.to_thread(log_file.read_text)
    log = [json.loads(line) for line in text.splitlines() if line]
    asked = [e for e in log if e["path"].startswith("/session") and e["origin"] in got]
    assert len(asked) >= 2 * 4, log
    assert all(e["status"] in (403, 405) for e in asked), asked
