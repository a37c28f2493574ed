"""The inventory core: reserve, commit, release, read and adjust stock.

Reserve: the Redis gate admits or rejects every line at once; admitted (and
undecidable) requests then go to PostgreSQL in one transaction per batch, whose
conditional UPDATEs decide for good. An answer is sent only after PostgreSQL
committed, and Redis is told the outcome afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from server.config import Settings
from server.domain.errors import (
    AlreadyExists,
    IllegalTransition,
    InsufficientStock,
    NotFound,
    Shortage,
    StockFloorViolation,
    Unavailable,
)
from server.domain.inventory import (
    AdjustCommand,
    Finish,
    Reservation,
    ReserveCommand,
    StockLevel,
    check_finish,
)
from server.inventory import expiry
from server.inventory.batching import Batcher
from server.inventory.mirror import Mirror
from server.metrics import HOLDS
from server.storage.postgres import (
    AdjustCode,
    FinishCode,
    FinishResult,
    MirrorLevel,
    ReserveCode,
    ReserveResult,
    StockStore,
    Within,
)
from server.storage.redis_gate import AdmitCode

log = logging.getLogger(__name__)

Followup = Callable[[], Awaitable[None]] | None
FinishGuard = Callable[[Sequence[str]], Awaitable[dict[str, IllegalTransition]]]


class InventoryCore:
    """Two-phase stock holds over the Redis gate and PostgreSQL."""

    def __init__(self, settings: Settings, store: StockStore, mirror: Mirror) -> None:
        self.settings = settings
        self.store = store
        self.mirror = mirror
        self._reserver: Batcher[ReserveCommand, Reservation] = Batcher(
            "reserve", self.hold, max_batch=settings.batch_max, concurrency=2
        )
        self._finishers: dict[Finish, Batcher[tuple[str, str], Reservation]] = {
            finish: Batcher(
                finish.name.lower(),
                partial(self._finish_unowned, finish),
                max_batch=settings.batch_max,
                concurrency=2,
            )
            for finish in (Finish.COMMIT, Finish.RELEASE)
        }
        self._tasks: list[asyncio.Task[None]] = []
        # Work that must commit with each expiry (orders register theirs before start()).
        self.expiry_hooks: list[Within[FinishResult]] = []
        # Owners of reservations that Commit and Release may not finish (an order's hold
        # ends only through the order); each maps ids to a refusal for those it owns.
        self.finish_guards: list[FinishGuard] = []

    async def start(self) -> None:
        """Load the gate, then start the batchers, the expiry sweeper and the gate probe."""
        await self.mirror.check()
        self._reserver.start()
        for finisher in self._finishers.values():
            finisher.start()
        self._tasks = [
            asyncio.create_task(
                expiry.run(self.store, self.mirror, self.settings, self.expiry_hooks), name="expiry"
            ),
            asyncio.create_task(self.mirror.run(), name="redis-probe"),
        ]

    async def stop(self) -> None:
        """Finish batches in flight and stop background work."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._reserver.stop()
        for finisher in self._finishers.values():
            await finisher.stop()

    async def reserve(self, command: ReserveCommand, deadline: float | None = None) -> Reservation:
        """Hold every line of `command`, or none."""
        return await self._reserver.submit(command, deadline)

    async def commit(
        self, reservation_id: str, caller: str, deadline: float | None = None
    ) -> Reservation:
        """Turn a hold into a deduction from on-hand."""
        return await self._finishers[Finish.COMMIT].submit((reservation_id, caller), deadline)

    async def release(
        self, reservation_id: str, caller: str, deadline: float | None = None
    ) -> Reservation:
        """Give a hold back."""
        return await self._finishers[Finish.RELEASE].submit((reservation_id, caller), deadline)

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """One reservation as stored."""
        found = await self.store.get_reservation(reservation_id)
        if found is None:
            raise NotFound("reservation", [reservation_id])
        return found

    async def get_stock(self, skus: Sequence[str]) -> list[StockLevel]:
        """Levels of `skus` in the given order; any unknown SKU fails the call."""
        levels = await self.store.get_stock(skus)
        missing = [sku for sku in skus if sku not in levels]
        if missing:
            raise NotFound("sku", missing)
        return [levels[sku] for sku in skus]

    async def adjust(self, command: AdjustCommand) -> tuple[StockLevel, int]:
        """Apply an adjustment; returns the level after it and the applied delta."""
        result = await self.store.adjust(command)
        if result.code is AdjustCode.CONFLICT:
            raise AlreadyExists("adjustment", command.idempotency_key)
        if result.code is AdjustCode.REFUSED:
            raise StockFloorViolation(
                command.sku, result.level.on_hand, result.level.reserved, result.applied_delta
            )
        if result.code is AdjustCode.APPLIED and result.version is not None:
            level = result.level
            await self.mirror.settle(
                levels=[MirrorLevel(level.sku, level.on_hand, level.reserved, result.version)]
            )
        return result.level, result.applied_delta

    async def hold(
        self, commands: Sequence[ReserveCommand], within: Within[ReserveResult] | None = None
    ) -> tuple[list[Reservation | BaseException], Followup]:
        """Gate, then hold in PostgreSQL, a batch of reservations; `within` joins the
        PostgreSQL transaction. Returns per-command outcomes and the Redis follow-up,
        to run once callers have their answers."""
        results: list[Reservation | BaseException | None] = [None] * len(commands)
        admitted: list[str] = []
        to_database = list(range(len(commands)))
        verdicts = await self.mirror.admit(commands)
        if verdicts is not None:
            to_database = []
            for i, verdict in enumerate(verdicts):
                if verdict.code is AdmitCode.REJECTED:
                    HOLDS.labels("rejected_by_gate").inc()
                    results[i] = InsufficientStock(
                        [
                            Shortage(line.sku, line.quantity, verdict.available[line.sku])
                            for line in commands[i].lines
                            if line.sku in verdict.available
                        ]
                    )
                    continue
                if verdict.code is AdmitCode.ADMITTED:
                    admitted.append(commands[i].reservation_id)
                to_database.append(i)

        known: list[tuple[str, int]] = []
        levels: list[MirrorLevel] = []
        if to_database:
            try:
                outcomes, levels = await self.store.reserve_batch(
                    [commands[i] for i in to_database], _realign(within, to_database, len(commands))
                )
            except Unavailable as exc:
                for i in to_database:
                    results[i] = exc
                outcomes = []
            for i, outcome in zip(to_database, outcomes, strict=False):
                command = commands[i]
                if outcome.code is ReserveCode.HELD or outcome.code is ReserveCode.REPEAT:
                    assert outcome.reservation is not None
                    HOLDS.labels(
                        "admitted" if outcome.code is ReserveCode.HELD else "repeated"
                    ).inc()
                    results[i] = outcome.reservation
                    known.append(
                        (
                            command.reservation_id,
                            self.mirror.forget_at_ms(outcome.reservation.expires_at),
                        )
                    )
                elif outcome.code is ReserveCode.CONFLICT:
                    HOLDS.labels("conflicting").inc()
                    results[i] = AlreadyExists("reservation", command.reservation_id)
                elif outcome.unknown_skus:
                    HOLDS.labels("rejected_by_database").inc()
                    results[i] = NotFound("sku", outcome.unknown_skus)
                else:
                    HOLDS.labels("rejected_by_database").inc()
                    results[i] = InsufficientStock(outcome.shortages)

        async def settle() -> None:
            await self.mirror.settle(clear=admitted, known=known, levels=levels)

        return results, settle  # type: ignore[return-value]

    async def finish(
        self,
        finish: Finish,
        requests: Sequence[tuple[str, str]],
        within: Within[FinishResult] | None = None,
    ) -> tuple[list[Reservation | BaseException], Followup]:
        """Commit or release a batch of (reservation id, caller); `within` joins the
        PostgreSQL transaction. Returns outcomes and the Redis follow-up."""
        ids = [rid for rid, _ in requests]
        outcomes, levels = await self.store.finish_batch(
            ids, finish, [caller for _, caller in requests], within
        )
        results: list[Reservation | BaseException] = []
        for rid, outcome in zip(ids, outcomes, strict=True):
            if outcome.code is FinishCode.UNKNOWN or outcome.reservation is None:
                results.append(NotFound("reservation", [rid]))
                continue
            try:
                check_finish(rid, finish, outcome.reservation.status)
            except IllegalTransition as exc:
                results.append(exc)
            else:
                results.append(outcome.reservation)

        async def settle() -> None:
            await self.mirror.settle(levels=levels)

        return results, settle

    async def _finish_unowned(
        self, finish: Finish, requests: Sequence[tuple[str, str]]
    ) -> tuple[list[Reservation | BaseException], Followup]:
        """`finish` for callers of Commit and Release: reservations a guard claims are
        refused, the rest finished."""
        refused: dict[str, IllegalTransition] = {}
        for guard in self.finish_guards:
            refused.update(await guard([rid for rid, _ in requests]))
        if not refused:
            return await self.finish(finish, requests)
        results: dict[int, Reservation | BaseException] = {
            i: refused[rid] for i, (rid, _) in enumerate(requests) if rid in refused
        }
        kept = [i for i in range(len(requests)) if i not in results]
        followup: Followup = None
        if kept:
            done, followup = await self.finish(finish, [requests[i] for i in kept])
            results.update(zip(kept, done, strict=True))
        return [results[i] for i in range(len(requests))], followup


def _realign(
    within: Within[ReserveResult] | None, positions: Sequence[int], size: int
) -> Within[ReserveResult] | None:
    """Adapt `within` to a sub-batch: it sees one result per original command, None
    (typed as absent) for commands the gate already turned away."""
    if within is None:
        return None

    async def realigned(conn: Any, results: list[ReserveResult]) -> None:
        full: list[Any] = [None] * size
        for position, result in zip(positions, results, strict=True):
            full[position] = result
        await within(conn, full)

    return realigned
