"""Pictures of the consoles (`make screenshots`): Debian's headless Chromium, driven by
Selenium through chromedriver (as the checkout page's browser test does), opens each console
of a running Prometheus and saves it as docs/console-<name>.png, once its graphs are drawn."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from pathlib import Path

from dashboards import consoles
from dashboards.panels import DASHBOARDS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH = 1400
# The graphs are drawn once each query answered; a console whose graphs are not all drawn
# after this long is pictured as it is.
DRAW_TIMEOUT_S = 30.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_CONTENT_HEIGHT = "return Math.ceil(document.body.getBoundingClientRect().bottom + window.scrollY)"


def _seconds(span: str) -> int:
    """`90s`, `15m`, `3h`, `2d` -> seconds."""
    return int(span[:-1]) * _UNITS[span[-1]] if span[-1] in _UNITS else int(span)


def take(prometheus: str, into: Path, span: str = "1h") -> list[Path]:
    """A full-page PNG of each console of the Prometheus at `prometheus`, its graphs over
    the last `span`, written to `into`/console-<name>.png; the paths written."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root, chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDTH},900",
        "--no-first-run",
    ):
        options.add_argument(arg)
    # The console's time control reads its range from the fragment (prom_console.js).
    fragment = "#pctc" + urllib.parse.quote(
        json.dumps({"duration": _seconds(span), "endTime": 0}, separators=(",", ":"))
    )
    into.mkdir(parents=True, exist_ok=True)
    written = []
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        for board in DASHBOARDS:
            driver.get(f"{prometheus.rstrip('/')}/consoles/{consoles.file_name(board)}{fragment}")
            _wait_for_graphs(driver, len(board.panels))
            # The whole page in one picture: the window as tall as the page's content (the
            # viewport a window's frame leaves is found by asking, not guessed).
            height = driver.execute_script(_CONTENT_HEIGHT)
            frame = driver.get_window_size()["height"] - driver.execute_script(
                "return window.innerHeight"
            )
            driver.set_window_size(WIDTH, int(height) + int(frame) + 16)
            time.sleep(0.5)  # the graphs draw again at the new size
            _wait_for_graphs(driver, len(board.panels))
            path = into / f"console-{board.name}.png"
            driver.save_screenshot(str(path))
            written.append(path)
    finally:
        driver.quit()
    return written


def _wait_for_graphs(driver: object, panels: int) -> None:
    """Until every panel's graph is drawn, or says it has nothing to draw, and no query is
    still loading; or DRAW_TIMEOUT_S."""
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    script = (
        "return [Array.from(document.querySelectorAll('td.rickshaw_graph'))"
        ".filter(td => td.querySelector('svg') || td.textContent.trim()).length,"
        " document.querySelectorAll('img[src*=\"ajax-loader\"]').length]"
    )
    while time.monotonic() < deadline:
        drawn, loading = driver.execute_script(script)  # type: ignore[attr-defined]
        if drawn >= panels and not loading:
            return
        time.sleep(0.25)
