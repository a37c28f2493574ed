"""`make run` (`python -m devstack`): Envoy starts beside the server, on the port the
settings name, reaches it over TLS with the development CA, gives the checkout page a
session with a short-lived token bound to one customer, the simulated payment provider's
webhook pays an order through the receiver, stockctl's config file names the stack for
stockctl run from any folder, and Ctrl-C stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jwt
import requests

from devstack.page_session import CHECKOUT_PAGE_SCOPES, CHECKOUT_PAGE_SUBJECT
from runtime.processes import free_port, listening
from tests.callers import stockctl, user_environment
from tests.conftest import ROOT, SHARDS, Servers


def _envoy_pids(config_dir: Path) -> list[int]:
    """Envoy processes whose configuration lives under config_dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/envoy") and any(str(config_dir).encode() in a for a in argv):
            found.append(int(proc.name))
    return found


def _page_session(
    url: str, server: subprocess.Popen[bytes]
) -> tuple[dict[str, object], requests.cookies.RequestsCookieJar]:
    """The session `make run` gives the checkout page, asked for as the page asks, and
    the cookie that keeps it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            reply = requests.post(f"{url}/session", headers={"Origin": url}, timeout=2)
        except requests.ConnectionError:
            time.sleep(0.2)
            continue
        assert reply.status_code == 200, reply.text
        assert reply.headers["cache-control"] == "no-store"
        assert reply.headers["content-type"].startswith("application/json")
        assert "HttpOnly" in reply.headers["set-cookie"]
        assert "SameSite=Strict" in reply.headers["set-cookie"]
        found: dict[str, object] = reply.json()
        return found, reply.cookies
    raise AssertionError(f"no gateway on {url} (the server exited with {server.returncode})")


def test_dev_serves_http_beside_grpc_and_ctrl_c_stops_envoy(clean: Servers, tmp_path: Path) -> None:
    port = free_port()
    grpc_port = free_port()
    stockctl_config = tmp_path / "home" / "stockcore" / "config.toml"
    prometheus_port = free_port()
    payments_port = free_port()
    env = {
        **os.environ,
        "STOCKCORE_PG_DSN": clean.pg_dsn,
        "STOCKCORE_REDIS_URL": clean.redis_url,
        "STOCKCORE_SHARDS": str(SHARDS),
        "STOCKCORE_GRPC_PORT": str(grpc_port),
        "STOCKCORE_METRICS_PORT": "0",
        "STOCKCORE_GATEWAY_PORT": str(port),
        "STOCKCORE_GATEWAY_STATS_PORT": str(free_port()),
        "STOCKCORE_DEV_PROMETHEUS_PORT": str(prometheus_port),
        "STOCKCORE_DATA_DIR": str(tmp_path),
        # dev also starts the simulated partners: on ports of their own here.
        "STOCKCORE_DEV_WAREHOUSE_PORT": str(free_port()),
        "STOCKCORE_DEV_PRIMARY_CARRIER_PORT": str(free_port()),
        "STOCKCORE_DEV_FALLBACK_CARRIER_PORT": str(free_port()),
        "STOCKCORE_DEV_PAYMENTS_PORT": str(payments_port),
        "STOCKCORE_WEBHOOK_PORT": str(free_port()),
        "STOCKCORE_WEBHOOK_METRICS_PORT": str(free_port()),
        "STOCKCORE_RECONCILE_METRICS_PORT": str(free_port()),
        "STOCKCORE_REFUND_METRICS_PORT": str(free_port()),
        # Not the user's own: the file stockctl reads is written here.
        "STOCKCORE_CONFIG": str(stockctl_config),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        page, cookies = _page_session(url, server)
        token = str(page["token"])
        stock = f"{url}/v1/stock?skus=DRESS-RED-M"
        reply = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            reply = requests.get(stock, headers={"Authorization": f"Bearer {token}"}, timeout=2)
            if reply.status_code != 503:  # 503: the server is starting
                break
            time.sleep(0.2)
        # Through Envoy, over TLS with the development CA, with the page's token.
        assert reply is not None and reply.status_code == 200, reply
        assert reply.json()["levels"][0]["sku"] == "DRESS-RED-M"  # the demo catalogue
        assert requests.get(stock, timeout=2).status_code == 401
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == CHECKOUT_PAGE_SUBJECT
        assert set(claims["scope"].split()) == set(CHECKOUT_PAGE_SCOPES)
        assert claims["customer_id"] == page["customerId"]
        assert claims["exp"] - claims["iat"] == page["expiresIn"] <= 15 * 60
        assert requests.get(f"{url}/config.js", timeout=2).status_code == 404
        foreign = requests.post(
            f"{url}/session", headers={"Origin": "https://evil.example"}, timeout=2
        )
        assert foreign.status_code == 403
        # The shopper orders with the page's token; the simulated provider pays.
        shopper = {"Authorization": f"Bearer {token}"}
        catalogue = requests.get(f"{url}/catalogue.json", timeout=2).json()
        price = next(p["price_minor"] for p in catalogue["products"] if p["sku"] == "DRESS-RED-M")
        line = {"sku": "DRESS-RED-M", "quantity": "1", "unitPriceMinor": str(price)}
        created = requests.post(
            f"{url}/v1/orders",
            json={"orderId": "dev-o1", "lines": [line], "currencyCode": "EUR"},
            headers=shopper,
            timeout=5,
        )
        assert created.status_code == 200, created.text
        # The provider charges it (503 until the provider is up: nothing was paid), and its
        # webhook pays it before the answer comes.
        deadline = time.monotonic() + 30
        while True:
            paid = requests.post(
                f"{url}/session/pay",
                json={"orderId": "dev-o1"},
                headers={"Origin": url},
                cookies=cookies,
                timeout=15,
            )
            if paid.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert paid.status_code == 200, paid.text
        assert paid.json()["paymentId"].startswith("ch_"), paid.json()
        order = requests.get(f"{url}/v1/orders/dev-o1", headers=shopper, timeout=5).json()
        assert order["order"]["status"] == "ORDER_STATUS_PAID"
        # The simulated payment provider captures a charge; its signed webhook reaches the
        # receiver, which confirms the payment.
        created = requests.post(
            f"{url}/v1/orders",
            json={"orderId": "dev-o2", "lines": [line], "currencyCode": "EUR"},
            headers=shopper,
            timeout=5,
        )
        assert created.status_code == 200, created.text
        asked = {"order_id": "dev-o2", "amount": price, "currency": "EUR"}
        charge = None
        deadline = time.monotonic() + 60
        while charge is None and time.monotonic() < deadline:
            try:
                charge = requests.post(
                    f"http://127.0.0.1:{payments_port}/v1/charges", json=asked, timeout=5
                )
            except requests.ConnectionError:  # the provider is starting
                time.sleep(0.2)
        assert charge is not None and charge.status_code == 200, charge
        status = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and status != "ORDER_STATUS_PAID":
            time.sleep(0.2)
            found = requests.get(f"{url}/v1/orders/dev-o2", headers=shopper, timeout=5).json()
            status = found["order"]["status"]
        assert status == "ORDER_STATUS_PAID"
        secret = tmp_path / "payments" / "webhook-secret"
        assert secret.stat().st_mode & 0o077 == 0
        logged = b"".join(f.read_bytes() for f in (tmp_path / "logs").iterdir())
        assert secret.read_bytes().strip() not in logged
        assert len(_envoy_pids(tmp_path)) == 1
        # Prometheus beside them (`make test` installs it), scraping what the stack started.
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        jobs: set[str] = set()
        deadline = time.monotonic() + 30  # its first target discovery takes a few seconds
        while not jobs and time.monotonic() < deadline:
            time.sleep(0.5)
            targets = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]
            jobs = {t["labels"]["job"] for t in targets["activeTargets"]}
        # Server metrics: off here.
        assert jobs == {
            "stockcore-fulfilment",
            "stockcore-payments",
            "stockcore-reconciler",
            "stockcore-refunds",
            "envoy",
            "prometheus",
        }
        console = requests.get(f"{prometheus}/consoles/stockcore-overview.html", timeout=10)
        assert console.status_code == 200, console.text

        # stockctl, from another folder, finds the stack through the file make run wrote.
        assert tomllib.loads(stockctl_config.read_text()) == {
            "target": f"127.0.0.1:{grpc_port}",
            "ca_file": str(tmp_path.resolve() / "tls" / "ca.pem"),
            "signing_key": str(tmp_path.resolve() / "auth" / "signing-key.json"),
        }
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        caller = user_environment(STOCKCORE_CONFIG=str(stockctl_config))
        minted = stockctl(
            ["token", "issue", "--sub", "dev", "--scopes", "all"], env=caller, cwd=elsewhere
        )
        assert minted.returncode == 0, minted.stderr
        caller["STOCKCORE_TOKEN"] = minted.stdout.strip()
        levels = stockctl(["--json", "stock", "get", "DRESS-RED-M"], env=caller, cwd=elsewhere)
        assert levels.returncode == 0, levels.stderr
        assert json.loads(levels.stdout)[0]["sku"] == "DRESS-RED-M"

        server.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert server.wait(30) == 0
        assert not listening(prometheus_port)
        deadline = time.monotonic() + 10
        while _envoy_pids(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _envoy_pids(tmp_path) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
