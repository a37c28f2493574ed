"""Releases HELD reservations past their expiry, in every worker, within a second; an
unpaid order expires with its hold, in the same statement."""

from __future__ import annotations

import asyncio
import logging
import uuid

from server.config import Settings
from server.domain.errors import Unavailable
from server.domain.orders import OrderStatus
from server.inventory.mirror import Mirror
from server.metrics import EXPIRED, EXPIRY_LAG, ORDER_TRANSITIONS
from server.storage.postgres import StockStore

log = logging.getLogger(__name__)

SWEEP_LIMIT = 500
EXPIRY_CALLER = "stockcore-expiry"


async def sweep_once(store: StockStore, mirror: Mirror) -> int:
    """Expire up to SWEEP_LIMIT due holds (and their unpaid orders); return how many
    were due."""
    sweep = await store.expire_due(SWEEP_LIMIT, EXPIRY_CALLER, f"expiry-{uuid.uuid4().hex}")
    for lag in sweep.lags_s:
        EXPIRY_LAG.observe(max(lag, 0.0))
    EXPIRED.inc(sweep.holds_expired)
    ORDER_TRANSITIONS.labels(OrderStatus.EXPIRED.name).inc(sweep.orders_expired)
    await mirror.settle(levels=sweep.levels)
    return sweep.due


async def run(store: StockStore, mirror: Mirror, settings: Settings) -> None:
    """Sweep forever; a full sweep goes again at once."""
    while True:
        try:
            while await sweep_once(store, mirror) == SWEEP_LIMIT:
                pass
        except Unavailable as exc:
            log.warning("expiry sweep skipped: database unavailable", extra={"error": str(exc)})
        except Exception:
            log.exception("expiry sweep failed")
        await asyncio.sleep(settings.expiry_interval_s)
