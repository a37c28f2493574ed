"""Keeps the Redis gate in step with PostgreSQL and decides whether it may be used.

Any Redis error turns the gate off in this process: requests then go to PostgreSQL
alone (correct, slower). A probe turns it back on only after a full rebuild of the
mirror from PostgreSQL, so nothing changed during the outage is missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from server.config import Settings
from server.domain.inventory import ReserveCommand, StockLevel
from server.metrics import REDIS_FALLBACK, REDIS_RESYNCS, STALE_PENDING
from server.storage.postgres import MirrorLevel, StockStore
from server.storage.redis_gate import Admission, AdmissionGate, GateUnavailable

log = logging.getLogger(__name__)


class Mirror:
    """The gate as this process sees it: usable, or bypassed until resynchronised."""

    def __init__(self, gate: AdmissionGate | None, store: StockStore, settings: Settings) -> None:
        self.gate = gate
        self._store = store
        self._settings = settings
        self._owner = uuid.uuid4().hex
        self.usable = False
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Event] = []
        REDIS_FALLBACK.set(1)

    def subscribe(self) -> asyncio.Event:
        """An event set whenever usability changes (for health reporting)."""
        event = asyncio.Event()
        self._listeners.append(event)
        return event

    def _set_usable(self, usable: bool) -> None:
        if usable != self.usable:
            self.usable = usable
            REDIS_FALLBACK.set(0 if usable else 1)
            for event in self._listeners:
                event.set()

    def failed(self, exc: BaseException) -> None:
        """Bypass the gate until the next successful rebuild."""
        if self.usable:
            log.warning(
                "redis gate unusable, serving from PostgreSQL alone", extra={"error": str(exc)}
            )
        self._set_usable(False)

    async def admit(self, commands: Sequence[ReserveCommand]) -> list[Admission] | None:
        """The gate's verdicts, or None when the gate is bypassed."""
        if self.gate is None or not self.usable:
            return None
        deadline_ms = int((time.time() + self._settings.pending_grace_s) * 1000)
        try:
            return await self.gate.admit(commands, deadline_ms)
        except GateUnavailable as exc:
            self.failed(exc)
            return None

    async def levels(self, skus: Sequence[str]) -> dict[str, StockLevel]:
        """Levels of the mirrored SKUs among `skus`, as PostgreSQL last reported them;
        empty when the gate is bypassed (callers then read PostgreSQL)."""
        if self.gate is None or not self.usable:
            return {}
        try:
            found = await self.gate.levels(skus)
        except GateUnavailable as exc:
            self.failed(exc)
            return {}
        if found is None:
            return {}
        return {
            sku: StockLevel(sku, on_hand, reserved) for sku, (on_hand, reserved) in found.items()
        }

    async def settle(
        self,
        *,
        clear: Sequence[str] = (),
        known: Sequence[tuple[str, int]] = (),
        levels: Sequence[MirrorLevel] = (),
    ) -> None:
        """Tell the gate what PostgreSQL decided; a failure only bypasses the gate."""
        if self.gate is None or not self.usable:
            return
        try:
            await self.gate.settle(clear=clear, known=known, levels=levels)
        except GateUnavailable as exc:
            self.failed(exc)

    def forget_at_ms(self, expires_at: datetime) -> int:
        """When the gate may forget a reservation id."""
        return int((expires_at.timestamp() + self._settings.known_id_retention_s) * 1000)

    async def resync(self) -> bool:
        """Rebuild the whole mirror from PostgreSQL; False if another process is at it."""
        assert self.gate is not None
        if not await self.gate.try_lock("resync", self._owner, 120_000):
            return False
        started = time.monotonic()
        try:
            skus = 0
            async for chunk in self._store.all_levels():
                await self.gate.settle(levels=chunk)
                skus += len(chunk)
            since = await self._store.now() - timedelta(seconds=self._settings.known_id_retention_s)
            recent = await self._store.recent_reservations(since)
            for i in range(0, len(recent), 5000):
                part = recent[i : i + 5000]
                await self.gate.settle(known=[(rid, self.forget_at_ms(exp)) for rid, exp in part])
            await self.gate.mark_ready(f"{self._owner}@{datetime.now(UTC).isoformat()}")
        finally:
            await self.gate.unlock("resync", self._owner)
        REDIS_RESYNCS.inc()
        log.info(
            "redis mirror rebuilt from PostgreSQL",
            extra={
                "skus": skus,
                "reservation_ids": len(recent),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    async def check(self) -> None:
        """One probe: rebuild when needed, drop pending holds of dead requests."""
        if self.gate is None:
            return
        try:
            if not self.usable or not await self.gate.is_ready():
                if await self.resync():
                    self._set_usable(True)
                return
            stale = await self.gate.stale_pending(int(time.time() * 1000))
            if stale:
                await self.gate.settle(clear=stale)
                STALE_PENDING.inc(len(stale))
                log.info("dropped pending holds of dead requests", extra={"count": len(stale)})
        except GateUnavailable as exc:
            self.failed(exc)

    async def run(self) -> None:
        """Probe forever."""
        while True:
            await self.check()
            await asyncio.sleep(self._settings.redis_probe_interval_s)
