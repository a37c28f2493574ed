"""Envoy's admin interface can stop, reconfigure and dump the gateway: no web page may
reach it. It listens on a Unix socket only its owner can open; Prometheus scrapes the
gateway's metrics from a listener of their own that serves /stats/prometheus and
nothing else."""

from __future__ import annotations

import asyncio
import stat

import requests

from gateway.envoy import Gateway
from tests.e2e.conftest import GatewayCaller


def _get(url: str) -> tuple[int, str]:
    with requests.get(url, timeout=10) as reply:
        return reply.status_code, reply.text


def _post(url: str) -> int:
    # What a page on another site can send to any loopback port: a simple cross-site POST.
    headers = {"Origin": "https://elsewhere.example", "Content-Type": "text/plain"}
    with requests.post(url, data="x", headers=headers, timeout=10) as reply:
        return reply.status_code


async def test_no_loopback_port_stops_or_reconfigures_the_gateway(gateway: Gateway) -> None:
    stats = gateway.stats_url()
    for path in ("/quitquitquit", "/healthcheck/fail", "/logging?level=trace", "/drain_listeners"):
        assert await asyncio.to_thread(_post, stats + path) == 404, path
    assert (await asyncio.to_thread(_get, stats + "/config_dump"))[0] == 404
    # Still serving, and still healthy.
    assert gateway.admin("/ready")[0] == 200
    assert (await asyncio.to_thread(_get, gateway.url + "/"))[0] == 200


async def test_the_admin_socket_is_its_owners_alone_and_metrics_are_served_apart(
    gateway: Gateway, api: GatewayCaller
) -> None:
    mode = gateway.admin_socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) & 0o077 == 0, oct(mode)
    status, text = await asyncio.to_thread(_get, gateway.stats_url() + "/stats/prometheus")
    assert status == 200
    assert "envoy_http_downstream_rq_total" in text
