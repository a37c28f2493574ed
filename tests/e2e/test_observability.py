"""What an operator sees, end to end: a real Prometheus (devstack/prometheus.py, as `make run`
starts it) scrapes a real server process, a fulfilment worker process, the money programs
(the webhook receiver, the reconciler and the refund sender, beside the simulated payment
provider, as `make run` starts them) and Envoy while a short load runs; then every
dashboard panel's query (dashboards/panels.py) and every recording and alert rule that
Prometheus loaded is run against its HTTP API, and every console page is fetched from it.

A query fails here when Prometheus cannot parse it or it returns no series. An alert's
expression returns nothing while all is well, so what must return series is its parts: the
expression is cut at its top-level `or`, `and` and `unless`, then at its top-level comparison,
and each side (the ratio or rate a threshold is compared with, the threshold itself) is run
on its own; `absent(x)` stands for its argument x. The whole expression is run too, to prove
that it parses. One part may be empty on a healthy stack: a counter of events a healthy
stack never has (dead letters), labelled by what failed; the worker's /metrics is checked
to declare it instead (Prometheus keeps no metadata of a family without series).

Prometheus comes from Debian's `prometheus` package (`make test` installs it); without it
this test fails, it does not skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc
from stockcore.v1 import orders_pb2 as opb

from dashboards import consoles
from dashboards.panels import DASHBOARDS
from devstack.config import DevSettings
from devstack.credentials import DevCredentials
from devstack.prometheus import LocalPrometheus, binary
from devstack.stack import payments_and_receiver, scrape_jobs
from fulfilment import config as fulfilment_config
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from payments.config import PaymentsSettings
from payments.reconciler.config import ReconcilerSettings
from refunds.config import RefundSettings
from runtime.processes import free_port, spawn, stop_child
from server.config import Settings
from tests import callers
from tests.e2e.fulfilment_stack import fulfil_settings, running_partners
from tests.e2e.payments_stack import new_secret
from tests.servers import Servers, server_process

WATCHED = ("OBS-HOT", "OBS-PLENTY")
# Counters of events a healthy stack never has, labelled by what failed: no series until
# the first one (see the module's docstring).
EMPTY_WHEN_HEALTHY = {"stockcore_fulfilment_dead_letters_total"}
CHECK_TIMEOUT_S = 120.0


def _api(prometheus: str, path: str, **params: str) -> Any:
    reply = requests.get(f"{prometheus}/api/v1/{path}", params=params, timeout=10)
    body = reply.json()
    if body.get("status") != "success":
        return body
    return body["data"]


def _returns_data(prometheus: str, expr: str) -> str | None:
    """None when `expr` parses and returns a scalar or at least one series; else why not."""
    data = _api(prometheus, "query", query=expr)
    if "resultType" not in data:
        return f"{data.get('errorType')}: {data.get('error')}"
    if data["resultType"] == "scalar" or data["result"]:
        return None
    return "no series"


def _split(expr: str, operators: str) -> list[str]:
    """`expr` cut at the top-level (outside brackets and strings) matches of `operators`."""
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    pattern = re.compile(operators)
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote and expr[i - 1] != "\\" else quote
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (found := pattern.match(expr, i)):
            parts.append(expr[start:i])
            start = i = found.end()
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def _unwrap(expr: str) -> str:
    """`(x)` -> x, when the parentheses wrap the whole of it."""
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += (c == "(") - (c == ")")
            if depth == 0 and i < len(expr) - 1:
                return expr  # "(a) + (b)": the first closes before the end
        expr = expr[1:-1].strip()
    return expr


def operands(expr: str) -> list[str]:
    """The parts of an alert's expression that must return data on a healthy stack."""
    expr = _unwrap(expr.strip())
    either = _split(expr, r"\s(?:or|and|unless)\s")
    if len(either) > 1:
        return [part for side in either for part in operands(side)]
    sides = _split(expr, r"==|!=|>=|<=|>|<")
    if len(sides) > 1:
        return [_unwrap(side) for side in sides]
    if expr.startswith("absent(") and expr.endswith(")"):
        return [expr[len("absent(") : -1].strip()]
    return [expr]


def test_alert_expressions_are_cut_into_the_parts_that_must_return_data() -> None:
    assert operands("(a:b:c > (14.4 * 0.001) and d:e:f > (14.4 * 0.001)) or (g > 6)") == [
        "a:b:c",
        "14.4 * 0.001",
        "d:e:f",
        "14.4 * 0.001",
        "g",
        "6",
    ]
    assert operands('absent(x_total{a="b"})') == ['x_total{a="b"}']
    assert operands('max by (p) (s{o!="ok", q=">"}) == 2') == [
        'max by (p) (s{o!="ok", q=">"})',
        "2",
    ]
    assert operands("a / max(b > 0) > 0.8") == ["a / max(b > 0)", "0.8"]


def _panel_queries() -> list[tuple[str, str]]:
    return [
        (f"{board.name}: {panel.title}", query.expr)
        for board in DASHBOARDS
        for panel in board.panels
        for query in panel.queries
    ]


def _rule_checks(prometheus: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(what, query) to run for every rule Prometheus loaded; and its rules' own errors."""
    checks, broken = [], []
    for group in _api(prometheus, "rules")["groups"]:
        for rule in group["rules"]:
            if rule.get("health") == "err":
                broken.append(f"{rule['name']}: {rule.get('lastError')}")
            if rule["type"] == "recording":
                checks.append((f"record {rule['name']}", rule["name"]))
                continue
            for part in operands(rule["query"]):
                if not any(name in part for name in EMPTY_WHEN_HEALTHY):
                    checks.append((f"alert {rule['name']}", part))
    return checks, broken


def _parses(prometheus: str, expr: str) -> str | None:
    data = _api(prometheus, "format_query", query=expr)
    return None if isinstance(data, str) else f"{data.get('errorType')}: {data.get('error')}"


async def _load(target: str, credentials: DevCredentials, token: str) -> None:
    """A few hundred Reserve and CreateOrder calls with commits, releases, payments,
    cancellations, short holds that expire, and callers' mistakes."""
    gate = asyncio.Semaphore(32)
    async with callers.secure_channel(target, credentials, token) as channel:
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        orders = orders_pb2_grpc.OrderServiceStub(channel)

        async def call(rpc: Any, request: Any) -> Any:
            async with gate:
                try:
                    return await rpc(request, timeout=20)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (
                        grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.NOT_FOUND,
                    ), exc
                    return None

        for sku, units in ((WATCHED[0], 40), (WATCHED[1], 1_000_000), ("OBS-OTHER", 1_000_000)):
            await inventory.AdjustStock(
                ipb.AdjustStockRequest(
                    sku=sku, on_hand=units, reason="count", idempotency_key=f"obs-{sku}"
                ),
                timeout=20,
            )

        def reserve(i: int) -> ipb.ReserveRequest:
            # Every fifth holds for a second and expires; OBS-HOT sells out.
            sku = WATCHED[0] if i % 7 == 0 else WATCHED[1] if i % 2 else "OBS-OTHER"
            ttl = 1 if i % 5 == 0 else 300
            return ipb.ReserveRequest(
                reservation_id=f"obs-r-{i}",
                lines=[ipb.Line(sku=sku, quantity=3)],
                ttl=duration_pb2.Duration(seconds=ttl),
            )

        await asyncio.gather(*(call(inventory.Reserve, reserve(i)) for i in range(200)))
        await asyncio.gather(
            *(
                call(inventory.Commit, ipb.CommitRequest(reservation_id=f"obs-r-{i}"))
                for i in range(1, 200, 5)
            ),
            *(
                call(inventory.Release, ipb.ReleaseRequest(reservation_id=f"obs-r-{i}"))
                for i in range(2, 200, 5)
            ),
            *(call(inventory.GetStock, ipb.GetStockRequest(skus=["OBS-NONE"])) for _ in range(10)),
        )

        def create(i: int) -> opb.CreateOrderRequest:
            return opb.CreateOrderRequest(
                order_id=f"obs-o-{i}",
                customer_id=f"obs-c-{i % 7}",
                currency_code="EUR" if i % 3 else "SEK",
                lines=[opb.OrderLine(sku=WATCHED[1], quantity=1, unit_price_minor=1250)],
            )

        await asyncio.gather(*(call(orders.CreateOrder, create(i)) for i in range(100)))
        await asyncio.gather(
            *(
                call(
                    orders.ConfirmPayment,
                    opb.ConfirmPaymentRequest(
                        order_id=f"obs-o-{i}",
                        payment_id=f"obs-p-{i}",
                        amount_minor=1250,
                        currency_code="EUR" if i % 3 else "SEK",
                    ),
                )
                for i in range(60)
            )
        )
        await asyncio.gather(
            *(
                call(
                    orders.CancelOrder, opb.CancelOrderRequest(order_id=f"obs-o-{i}", reason="obs")
                )
                for i in (*range(50, 60), *range(80, 90))
            )
        )


@contextmanager
def _gateway(server_port: int, credentials: DevCredentials, workdir: Path) -> Iterator[Gateway]:
    settings = GatewaySettings(
        grpc_port=server_port,
        gateway_port=free_port(),
        gateway_stats_port=free_port(),
        gateway_access_log=str(workdir / "access.log"),
        gateway_upstream_ca_file=str(credentials.ca_cert),
    ).validate()
    with Gateway(settings, workdir, grpc_port=server_port) as gateway:
        yield gateway


@contextmanager
def _money_programs(
    pg_dsn: str, target: str, workdir: Path
) -> Iterator[tuple[PaymentsSettings, ReconcilerSettings, RefundSettings]]:
    """The simulated payment provider, the webhook receiver, the refund sender and the
    reconciler as `make run` starts them (devstack.stack.payments_and_receiver), against
    the server `target` and its database, each program's metrics on a free port; the
    reconciler checks the ledger every second. They present the session's token
    (tests/conftest.py, caller_environment)."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / "webhook-secret"
    secret.write_bytes(new_secret() + b"\n")
    secret.chmod(0o600)
    receiver = PaymentsSettings(
        pg_dsn=pg_dsn,
        payments_target=target,
        webhook_port=free_port(),
        webhook_metrics_port=free_port(),
        webhook_secret_file=str(secret),
        log_json=False,
    ).validate()
    reconciler = ReconcilerSettings(
        pg_dsn=pg_dsn,
        payments_target=target,
        reconcile_metrics_port=free_port(),
        ledger_check_s=1.0,
        log_json=False,
    ).validate()
    sender = RefundSettings(refund_metrics_port=free_port(), log_json=False).validate()
    dev = DevSettings(dev_payments_port=free_port())
    with payments_and_receiver(
        dev, receiver, workdir / "logs", reconciler=reconciler, sender=sender
    ):
        yield receiver, reconciler, sender


@contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[None]:
    """`python -m fulfilment` as a child process with `env`'s settings."""
    with open(log, "ab") as out:
        proc = spawn(
            [sys.executable, "-m", "fulfilment"],
            death_signal=signal.SIGKILL,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        stop_child(proc)


async def _failures(prometheus: str) -> list[str]:
    checks, broken = await asyncio.to_thread(_rule_checks, prometheus)
    checks += _panel_queries()
    failed = list(broken)
    for what, expr in checks:
        why = await asyncio.to_thread(_returns_data, prometheus, expr)
        if why is not None:
            failed.append(f"{what}: {expr}: {why}")
    return failed


async def test_every_panel_and_rule_query_returns_data_and_every_console_renders(
    clean: Servers, credentials: DevCredentials, service_token: str, tmp_path: Path
) -> None:
    if binary() is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (`make test` does it)")
    started = time.monotonic()
    metrics_port, worker_metrics_port = free_port(), free_port()
    async with (
        server_process(
            clean,
            credentials,
            STOCKCORE_METRICS_PORT=str(metrics_port),
            STOCKCORE_WATCHED_SKUS=",".join(WATCHED),
            STOCKCORE_WATCHED_SKUS_INTERVAL="1",
        ) as server,
        running_partners() as partners,
    ):
        worker = fulfil_settings(
            Settings(pg_dsn=clean.pg_dsn, redis_url=clean.redis_url, log_json=False),
            SimpleNamespace(port=server.port),
            partners,
            fulfil_metrics_port=worker_metrics_port,
            stale_scan_interval_s=2.0,
        )
        with (
            _worker(fulfilment_config.to_env(worker), tmp_path / "worker.log"),
            _money_programs(clean.pg_dsn, server.target, tmp_path / "money") as money,
        ):
            receiver, reconciler, sender = money
            with _gateway(server.port, credentials, tmp_path / "gateway") as gateway:
                jobs = scrape_jobs(
                    Settings(metrics_port=metrics_port),
                    worker,
                    gateway,
                    receiver=receiver,
                    reconciler=reconciler,
                    sender=sender,
                )
                with LocalPrometheus(
                    tmp_path / "prometheus", free_port(), jobs, interval_s=1
                ) as prom:
                    await _load(server.target, credentials, service_token)
                    for _ in range(20):
                        reply = await asyncio.to_thread(
                            requests.get,
                            f"{gateway.url}/v1/stock?skus={WATCHED[1]}",
                            headers={"Authorization": f"Bearer {service_token}"},
                            timeout=10,
                        )
                        assert reply.status_code == 200, reply.text
                    loaded = time.monotonic()

                    # Scrapes every second, rules every second: wait until every query
                    # has what it reads, or say which never did.
                    deadline = loaded + CHECK_TIMEOUT_S
                    failed = await _failures(prom.url)
                    while failed and time.monotonic() < deadline:
                        await asyncio.sleep(1)
                        failed = await _failures(prom.url)
                    assert failed == [], "\n".join(failed)
                    checked = time.monotonic()

                    exported = await asyncio.to_thread(
                        requests.get, f"http://127.0.0.1:{worker_metrics_port}/metrics", timeout=10
                    )
                    for name in EMPTY_WHEN_HEALTHY:
                        assert f"# TYPE {name} counter" in exported.text, name
                    alerts = [
                        r
                        for g in _api(prom.url, "rules")["groups"]
                        for r in g["rules"]
                        if r["type"] == "alerting"
                    ]
                    for rule in alerts:
                        assert _parses(prom.url, rule["query"]) is None, rule["name"]

                    for board in DASHBOARDS:
                        page = await asyncio.to_thread(
                            requests.get,
                            f"{prom.url}/consoles/{consoles.file_name(board)}",
                            timeout=30,
                        )
                        assert page.status_code == 200, page.text
                        assert "error executing template" not in page.text
                        assert page.text.count("<tr>") >= len(board.panels), board.name
    print(
        f"\nobservability: stack up and load in {loaded - started:.1f} s, every query"
        f" answered {checked - loaded:.1f} s after the load, {time.monotonic() - started:.1f} s"
        " in all"
    )
