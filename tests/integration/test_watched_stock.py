"""The watched SKUs' gauges and the gate's drift on them, against real PostgreSQL and Redis
(server/inventory/watched.py)."""

from __future__ import annotations

import redis.asyncio as aioredis

from server.config import Settings
from server.inventory.mirror import Mirror
from server.inventory.watched import WatchedStock
from server.metrics import REGISTRY
from server.storage.postgres import StockStore
from server.storage.redis_gate import AdmissionGate
from tests.support import hold, stock_up


def _units(sku: str, level: str) -> float | None:
    return REGISTRY.get_sample_value("stockcore_watched_stock_units", {"sku": sku, "level": level})


def _drifted() -> float | None:
    return REGISTRY.get_sample_value("stockcore_gate_drifted_skus")


async def _loaded_mirror(gate: AdmissionGate, store: StockStore, settings: Settings) -> Mirror:
    mirror = Mirror(gate, store, settings)
    await mirror.check()
    assert mirror.usable
    return mirror


async def test_a_refresh_sets_each_watched_skus_levels_from_postgres(
    gate: AdmissionGate, store: StockStore, settings: Settings
) -> None:
    await stock_up(store, {"W-1": 10, "W-2": 5, "OTHER": 7})
    await store.reserve_batch([hold("r-1", ("W-1", 3))])
    mirror = await _loaded_mirror(gate, store, settings)

    assert await WatchedStock(store, mirror, ["W-1", "W-2", "NOT-STOCKED"]).refresh() == 0

    assert (_units("W-1", "on_hand"), _units("W-1", "reserved")) == (10, 3)
    assert _units("W-1", "available") == 7
    assert _units("W-2", "available") == 5
    assert _units("OTHER", "available") is None
    assert _units("NOT-STOCKED", "available") is None
    assert _drifted() == 0


async def test_a_mirror_wrong_over_an_unchanged_row_twice_in_a_row_has_drifted(
    gate: AdmissionGate,
    store: StockStore,
    settings: Settings,
    redis_client: aioredis.Redis,
) -> None:
    await stock_up(store, {"W-1": 10, "W-2": 5})
    mirror = await _loaded_mirror(gate, store, settings)
    watched = WatchedStock(store, mirror, ["W-1", "W-2"])
    # The mirror says W-1 is sold out: the gate turns its buyers away.
    await redis_client.hset("sc:s:W-1", "rs", 10)

    assert await watched.refresh() == 0  # once: a settle may be on its way
    assert await watched.refresh() == 1
    assert _drifted() == 1

    # The next change of W-1 in PostgreSQL is settled at its new version: the drift is gone.
    await store.reserve_batch([hold("r-1", ("W-1", 1))])
    await mirror.settle(levels=list((await store.get_stock(["W-1"])).values()))
    assert await watched.refresh() == 0
    assert _drifted() == 0


async def test_a_disagreement_over_a_row_that_changed_meanwhile_is_not_drift(
    gate: AdmissionGate,
    store: StockStore,
    settings: Settings,
    redis_client: aioredis.Redis,
) -> None:
    await stock_up(store, {"W-1": 10})
    mirror = await _loaded_mirror(gate, store, settings)
    watched = WatchedStock(store, mirror, ["W-1"])
    await redis_client.hset("sc:s:W-1", "rs", 4)
    assert await watched.refresh() == 0
    # PostgreSQL moves on (its settle not yet in Redis): a second disagreement, no drift.
    await store.reserve_batch([hold("r-1", ("W-1", 1))])
    assert await watched.refresh() == 0
    assert await watched.refresh() == 1
