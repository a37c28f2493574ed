"""The health service stays open to probes without costing the server: statuses are
published only when they change."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from server.app import INVENTORY_SERVICE, ORDER_SERVICE, App
from server.domain.errors import Unavailable
from tests.waiting import until_true

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

async def test_health_is_published_only_when_a_status_changes(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[str, int]] = []
    pings = 0
    failing = False
    set_status = app.health.set
    ping = app.store.ping

    async def recording_set(service: str, status: int) -> None:
        published.append((service, status))
        await set_status(service, status)  # type: ignore[arg-type]

    async def counted_ping() -> None:
        nonlocal pings
        pings += 1
        if failing:
            raise Unavailable("PostgreSQL unavailable: made to fail by the test")
        await ping()

    monkeypatch.setattr(app.health, "set", recording_set)
    monkeypatch.setattr(app.store, "ping", counted_ping)

    # Three whole rounds of the reporter (a ping opens each) with nothing changed.
    await until_true(lambda: pings >= 4, "four rounds of the health reporter")
    assert published == []

    failing = True
    start = pings
    await until_true(lambda: pings >= start + 4, "four rounds with PostgreSQL failing")
    services = {"", INVENTORY_SERVICE, ORDER_SERVICE}
    assert sorted(published) == sorted((s, NOT_SERVING) for s in services)

    published.clear()
    failing = False
    start = pings
    await until_true(lambda: pings >= start + 4, "four rounds with PostgreSQL back")
    assert sorted(published) == sorted((s, SERVING) for s in services)
