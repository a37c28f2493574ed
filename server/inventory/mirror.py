"""Keeps the Redis gate in step with PostgreSQL and decides whether it may be used.

Any Redis error turns the gate off in this process: requests then go to PostgreSQL
alone (correct, slower). Nothing PostgreSQL decides meanwhile is dropped: the SKUs whose
levels this process could not tell Redis are remembered, and before the gate is used
again (after the probe found the mirror loaded, or loaded it itself) their levels are
read from PostgreSQL and written, version-stamped, to Redis. A full rebuild happens only
when the mirror is not loaded on the Redis server at hand (see lua/ready.lua).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from server.config import Settings
from server.domain.errors import Unavailable
from server.domain.inventory import ReserveCommand, StockLevel
from server.metrics import (
    REDIS_FALLBACK,
    REDIS_MEMORY_MAX,
    REDIS_MEMORY_USED,
    REDIS_RESYNCS,
    STALE_PENDING,
)
from server.storage.postgres import MirrorLevel, StockStore
from server.storage.redis_gate import Admission, AdmissionGate, GateUnavailable

log = logging.getLogger(__name__)

# SKUs remembered one by one while Redis is not told; past this, all are read again.
_MAX_DIRTY = 100_000
_CHUNK = 1000
# A hold goes straight to PostgreSQL, past the gate, when each of its SKUs was seen, this
# recently, with at least this many units available beyond it (see Mirror.plentiful).
_PLENTY_FRESH_S = 0.25
_PLENTY_UNITS = 50
_PLENTY_FACTOR = 10


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
        # Whether this process said that Redis' memory is unbounded or evicts keys.
        self._warned_memory = False
        # SKUs whose levels changed while Redis was not told (too many: read them all).
        self._dirty: set[str] = set()
        self._all_dirty = False
        # Units available per SKU as last seen here, and when (monotonic seconds).
        self._seen: dict[str, tuple[int, float]] = {}
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

    def plentiful(self, command: ReserveCommand) -> bool:
        """Whether every line of `command` was seen moments ago with stock to spare: then
        the gate, there to turn sold-out storms away from PostgreSQL, has nothing to do
        for it, and PostgreSQL, which decides every hold anyway, is asked directly. A wrong
        guess costs a PostgreSQL refusal, never an oversell."""
        now = time.monotonic()
        for line in command.lines:
            seen = self._seen.get(line.sku)
            if seen is None or now - seen[1] > _PLENTY_FRESH_S:
                return False
            if seen[0] - line.quantity < max(_PLENTY_UNITS, _PLENTY_FACTOR * line.quantity):
                return False
        return True

    def _note(self, levels: Sequence[MirrorLevel]) -> None:
        if len(self._seen) > _MAX_DIRTY:
            self._seen.clear()  # a bound: entries matter for a quarter of a second
        now = time.monotonic()
        for level in levels:
            self._seen[level.sku] = (level.on_hand - level.reserved, now)

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
        now = time.monotonic()
        for sku, (on_hand, reserved) in found.items():
            self._seen[sku] = (on_hand - reserved, now)
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
        """Tell the gate what PostgreSQL decided; a failure only bypasses the gate, and
        the SKUs it could not tell are caught up before the gate is used again."""
        self._note(levels)
        if self.gate is None:
            return
        if not self.usable:
            self._remember(levels)
            return
        try:
            await self.gate.settle(clear=clear, known=known, levels=levels)
        except GateUnavailable as exc:
            self._remember(levels)
            self.failed(exc)

    def _remember(self, levels: Sequence[MirrorLevel]) -> None:
        self._remember_skus([level.sku for level in levels])

    async def _catch_up(self) -> int:
        """Write to Redis what changed while it was not told; returns the SKUs written."""
        assert self.gate is not None
        written = 0
        while self._dirty or self._all_dirty:
            if self._all_dirty:
                self._all_dirty = False
                self._dirty.clear()
                async for chunk in self._store.all_levels():
                    await self.gate.settle(levels=chunk)
                    written += len(chunk)
                continue
            skus, self._dirty = sorted(self._dirty), set()
            for i in range(0, len(skus), _CHUNK):
                found = await self._store.get_stock(skus[i : i + _CHUNK])
                await self.gate.settle(levels=list(found.values()))
                written += len(found)
        return written

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

    async def remember_recent(self, seconds: float) -> None:
        """Mark the SKUs moved in the last `seconds` to be written to Redis again: a
        process that died (kill -9, OOM) may have changed them in PostgreSQL without
        telling Redis, and a mirror that stayed loaded would keep the old levels, so the
        gate could refuse what PostgreSQL accepts. Called once as a process starts."""
        if self.gate is None:
            return
        try:
            self._remember_skus(await self._store.recently_moved_skus(seconds))
        except Unavailable as exc:
            # The whole mirror is rebuilt when it cannot be caught up precisely.
            log.warning("recent changes unknown; the mirror is rebuilt", extra={"error": str(exc)})
            self._all_dirty = True

    def _remember_skus(self, skus: Sequence[str]) -> None:
        if self._all_dirty:
            return
        self._dirty.update(skus)
        if len(self._dirty) > _MAX_DIRTY:
            self._dirty.clear()
            self._all_dirty = True

    async def check(self) -> None:
        """One probe: report Redis' memory against its maxmemory, rebuild or catch up when
        needed, drop pending holds of dead requests."""
        if self.gate is None:
            return
        try:
            # A Redis at its maxmemory refuses writes (noeviction): the gate is bypassed
            # then. The gauges let an alert fire well before.
            memory = await self.gate.memory()
            REDIS_MEMORY_USED.set(memory.used_bytes)
            REDIS_MEMORY_MAX.set(memory.max_bytes)
            if not (memory.bounded_without_eviction or self._warned_memory):
                self._warned_memory = True
                log.warning(
                    "Redis should have a maxmemory and maxmemory-policy noeviction: without "
                    "a limit it grows unbounded, and an eviction policy may drop the gate's "
                    "keys (README, Redis memory)",
                    extra={"maxmemory": memory.max_bytes, "policy": memory.policy},
                )
            ready = await self.gate.is_ready()
            if not ready or not self.usable:
                if not ready:
                    # A rebuild reads everything: what changed before it started needs no
                    # catching up; what changes while it reads is remembered from here on.
                    self._set_usable(False)
                    remembered = (set(self._dirty), self._all_dirty)
                    self._dirty.clear()
                    self._all_dirty = False
                    if not await self.resync():
                        # Another process is rebuilding; its read may have missed what
                        # changed here: keep that remembered.
                        self._dirty.update(remembered[0])
                        self._all_dirty = self._all_dirty or remembered[1]
                        return
                await self._catch_up()
                self._set_usable(True)
                # Levels that changed between the catch-up and now were remembered.
                await self._catch_up()
                return
            stale = await self.gate.stale_pending(int(time.time() * 1000))
            if stale:
                # Their requests died after the gate admitted them; any PostgreSQL did hold
                # before the death is remembered as known, so a retry reaches PostgreSQL,
                # and its SKUs' levels are read again (the dead process may have committed
                # them without telling Redis).
                held = await self._store.get_reservations(stale)
                known = [(rid, self.forget_at_ms(r.expires_at)) for rid, r in held.items()]
                await self.gate.settle(clear=stale, known=known)
                self._dirty.update(line.sku for r in held.values() for line in r.lines)
                await self._catch_up()
                STALE_PENDING.inc(len(stale))
                log.info("dropped pending holds of dead requests", extra={"count": len(stale)})
        except GateUnavailable as exc:
            self.failed(exc)
        except Unavailable as exc:
            log.warning("redis gate probe skipped: database unavailable", extra={"error": str(exc)})

    async def run(self) -> None:
        """Probe forever."""
        while True:
            await self.check()
            await asyncio.sleep(self._settings.redis_probe_interval_s)
