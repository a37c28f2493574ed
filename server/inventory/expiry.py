"""Releases HELD reservations past their expiry, in every worker, within a second."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from server.config import Settings
from server.domain.errors import Unavailable
from server.domain.inventory import Finish
from server.inventory.mirror import Mirror
from server.metrics import EXPIRED, EXPIRY_LAG
from server.storage.postgres import FinishCode, FinishResult, StockStore, Within

log = logging.getLogger(__name__)

SWEEP_LIMIT = 500
EXPIRY_CALLER = "stockcore-expiry"


async def sweep_once(
    store: StockStore, mirror: Mirror, hooks: Sequence[Within[FinishResult]] = ()
) -> int:
    """Expire up to SWEEP_LIMIT due holds; return how many were due. Each hook runs in
    the expiring transaction (an order whose payment window closed expires with it)."""
    due = await store.due_expiries(SWEEP_LIMIT)
    if not due:
        return 0

    async def within(conn: Any, results: list[FinishResult]) -> None:
        for hook in hooks:
            await hook(conn, results)

    results, levels = await store.finish_batch(
        due, Finish.EXPIRE, [EXPIRY_CALLER] * len(due), within if hooks else None
    )
    now = datetime.now(UTC)
    expired = 0
    for result in results:
        if result.code is FinishCode.APPLIED and result.reservation is not None:
            expired += 1
            EXPIRY_LAG.observe(max((now - result.reservation.expires_at).total_seconds(), 0.0))
    EXPIRED.inc(expired)
    await mirror.settle(levels=levels)
    return len(due)


async def run(
    store: StockStore,
    mirror: Mirror,
    settings: Settings,
    hooks: Sequence[Within[FinishResult]] = (),
) -> None:
    """Sweep forever; a full sweep goes again at once."""
    while True:
        try:
            while await sweep_once(store, mirror, hooks) == SWEEP_LIMIT:
                pass
        except Unavailable as exc:
            log.warning("expiry sweep skipped: database unavailable", extra={"error": str(exc)})
        except Exception:
            log.exception("expiry sweep failed")
        await asyncio.sleep(settings.expiry_interval_s)
