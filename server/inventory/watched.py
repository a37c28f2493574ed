"""The stock of the SKUs an operator watches (STOCKCORE_WATCHED_SKUS), as gauges, and whether
the Redis mirror the gate decides by agrees with PostgreSQL on them.

Every `watched_skus_interval_s`, one read of PostgreSQL (on the upkeep pool) and one of the
mirror, whatever the traffic: no call waits for it, and a thousand buyers cost it nothing.

A watched SKU has *drifted* when the mirror disagreed with PostgreSQL at two refreshes in a
row while PostgreSQL's row kept its version between them. One disagreement proves nothing:
a batch may have committed between the two reads, its settle still on its way to Redis. But
a settle in flight cannot explain a second disagreement over a row that did not change; and
a mirror that says sold out while PostgreSQL has stock turns every buyer away at the gate,
so no batch ever reaches PostgreSQL to settle it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from server.domain.errors import Unavailable
from server.inventory.mirror import Mirror
from server.metrics import GATE_DRIFTED, WATCHED_STOCK
from server.storage.postgres import StockStore

log = logging.getLogger(__name__)


class WatchedStock:
    """The watched SKUs' gauges, refreshed by `refresh` (or `run`, forever)."""

    def __init__(self, store: StockStore, mirror: Mirror, skus: Sequence[str]) -> None:
        self._store = store
        self._mirror = mirror
        self._skus = tuple(skus)
        # SKU -> PostgreSQL's row version when the mirror last disagreed with it.
        self._disagreed: dict[str, int] = {}
        self._unknown: set[str] = set()
        GATE_DRIFTED.set(0)

    async def refresh(self) -> int:
        """Set the gauges from PostgreSQL's levels and compare the mirror's; return how
        many watched SKUs have drifted."""
        levels = await self._store.get_stock(self._skus)
        unknown = set(self._skus) - levels.keys()
        for sku in unknown - self._unknown:
            log.warning("a watched SKU is not in stock", extra={"sku": sku})
        self._unknown = unknown
        for sku, level in levels.items():
            WATCHED_STOCK.labels(sku, "on_hand").set(level.on_hand)
            WATCHED_STOCK.labels(sku, "reserved").set(level.reserved)
            WATCHED_STOCK.labels(sku, "available").set(level.on_hand - level.reserved)
        # Empty while the gate is bypassed: nothing decides by the mirror then.
        mirrored = await self._mirror.levels(list(levels))
        disagreed = {
            sku: level.version
            for sku, level in levels.items()
            if sku in mirrored
            and (mirrored[sku].on_hand, mirrored[sku].reserved) != (level.on_hand, level.reserved)
        }
        drifted = [sku for sku, version in disagreed.items() if self._disagreed.get(sku) == version]
        if drifted:
            log.error("the Redis mirror disagrees with PostgreSQL", extra={"skus": drifted})
        self._disagreed = disagreed
        GATE_DRIFTED.set(len(drifted))
        return len(drifted)

    async def run(self, interval: float) -> None:
        """Refresh every `interval` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Unavailable as exc:
                log.warning("watched stock not refreshed", extra={"error": str(exc)})
            except Exception:
                log.exception("watched stock refresh failed")
            await asyncio.sleep(interval)
