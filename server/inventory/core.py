"""The inventory core: reserve, change a held reservation line by line, commit, release,
read and adjust stock.

Reserve and SetReservationLine: the Redis gate admits or rejects every line at once; admitted (and undecidable)
requests then go to PostgreSQL, one statement per batch, whose conditional UPDATEs
decide for good. The mirror is told the outcome before the callers get their answers,
so a mirror read after an acknowledged change sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import Enum
from functools import partial
from typing import Any

from server.config import Settings
from server.domain.errors import (
    AlreadyExists,
    IllegalTransition,
    InsufficientStock,
    NotFound,
    ReservationFull,
    Shortage,
    StockFloorViolation,
    Unavailable,
)
from server.domain.inventory import (
    MAX_LINES,
    AdjustCommand,
    Finish,
    Reservation,
    ReserveCommand,
    SetLine,
    StockLevel,
    check_finish,
    not_held,
    not_held_for,
)
from server.inventory import expiry, gating
from server.inventory.batching import Batcher
from server.inventory.mirror import Mirror
from server.inventory.watched import WatchedStock
from server.metrics import HOLDS
from server.queue_delay import Queues
from server.shares import Shares
from server.shutdown import cancel_and_wait
from server.storage.postgres import (
    AdjustCode,
    FinishCode,
    LineCode,
    LineResult,
    MirrorLevel,
    ReserveCode,
    ReserveResult,
    StockStore,
)

log = logging.getLogger(__name__)

# How far back a starting process reads the SKUs changed by others (one that died may
# not have told Redis): longer than a restart takes.
RECENT_CHANGES_S = 300.0

Answer = Reservation | BaseException


class Consistency(Enum):
    """How fresh a stock read must be."""

    MIRROR = "mirror"
    """The Redis mirror (PostgreSQL when the gate is bypassed or lacks a SKU)."""
    STRONG = "strong"
    """PostgreSQL itself."""


class InventoryCore:
    """Two-phase stock holds over the Redis gate and PostgreSQL."""

    def __init__(
        self,
        settings: Settings,
        store: StockStore,
        mirror: Mirror,
        queues: Queues,
        readers: Shares,
    ) -> None:
        self.settings = settings
        self.store = store
        self.mirror = mirror
        # Each reader's share of the reads in PostgreSQL at once (shared with OrderCore).
        self.readers = readers
        writes, reads = queues.batch_options(settings.batch_max, settings.batch_concurrency)
        self._reserver: Batcher[ReserveCommand, Reservation] = Batcher(
            "reserve", self._reserve_batch, **writes
        )
        self._line_setter: Batcher[SetLine, Reservation] = Batcher(
            "set_line", self._set_line_batch, **writes
        )
        self._finishers: dict[Finish, Batcher[tuple[str, str, str | None], Reservation]] = {
            finish: Batcher(finish.name.lower(), partial(self._finish_batch, finish), **writes)
            for finish in (Finish.COMMIT, Finish.RELEASE)
        }
        self._reservation_reader: Batcher[str, Reservation] = Batcher(
            "get_reservation", self._read_reservations, **reads
        )
        self._mirror_reader: Batcher[tuple[str, ...], dict[str, StockLevel]] = Batcher(
            "get_stock", self._read_mirror, **reads
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def _batchers(self) -> list[Batcher[Any, Any]]:
        return [
            self._reserver,
            self._line_setter,
            *self._finishers.values(),
            self._reservation_reader,
            self._mirror_reader,
        ]

    async def start(self) -> None:
        """Load the gate, then start the batchers, the expiry sweeper and the gate probe."""
        await self.mirror.remember_recent(RECENT_CHANGES_S)
        await self.mirror.check()
        for batcher in self._batchers:
            batcher.start()
        self._tasks = [
            asyncio.create_task(expiry.run(self.store, self.mirror, self.settings), name="expiry"),
            asyncio.create_task(self.mirror.run(), name="redis-probe"),
        ]
        if self.settings.watched_skus:
            watched = WatchedStock(self.store, self.mirror, self.settings.watched_skus)
            self._tasks.append(
                asyncio.create_task(
                    watched.run(self.settings.watched_skus_interval_s), name="watched-stock"
                )
            )

    async def stop(self) -> None:
        """Finish batches in flight and stop background work."""
        await cancel_and_wait(self._tasks, "inventory background tasks")
        for batcher in self._batchers:
            await batcher.stop()

    async def reserve(self, command: ReserveCommand, deadline: float | None = None) -> Reservation:
        """Hold every line of `command`, or none."""
        return await self._reserver.submit(command, deadline)

    async def set_line(self, change: SetLine, deadline: float | None = None) -> Reservation:
        """Set one line of a HELD reservation (adding units only if they are available,
        giving back what it no longer holds) and hold it for the change's time-to-live."""
        return await self._line_setter.submit(change, deadline)

    async def commit(
        self, reservation_id: str, caller: str, deadline: float | None = None
    ) -> Reservation:
        """Turn a hold into a deduction from on-hand."""
        return await self._finishers[Finish.COMMIT].submit((reservation_id, caller, None), deadline)

    async def release(
        self,
        reservation_id: str,
        caller: str,
        deadline: float | None = None,
        customer_id: str | None = None,
    ) -> Reservation:
        """Give a hold back; with `customer_id` (a customer's token), only a reservation
        held for that customer."""
        return await self._finishers[Finish.RELEASE].submit(
            (reservation_id, caller, customer_id), deadline
        )

    async def get_reservation(self, reservation_id: str, reader: str | None = None) -> Reservation:
        """One reservation as stored, read within `reader`'s share of reads in PostgreSQL
        (None: a reader without one)."""
        with self.readers.holding(reader):
            return await self._reservation_reader.submit(reservation_id)

    async def get_stock(
        self,
        skus: Sequence[str],
        consistency: Consistency = Consistency.MIRROR,
        reader: str | None = None,
    ) -> list[StockLevel]:
        """Levels of `skus` in the given order; any unknown SKU fails the call. What is read
        from PostgreSQL (STRONG, or what the mirror cannot answer) is read within
        `reader`'s share of reads there, a row a SKU; the mirror is read without one."""
        found: dict[str, StockLevel] = {}
        if consistency is Consistency.MIRROR and self.mirror.usable:
            found = await self._mirror_reader.submit(tuple(skus))
        missing = [sku for sku in skus if sku not in found]
        if missing:
            with self.readers.holding(reader, cost=len(missing)):
                read = await self.store.read_levels(missing)
            found.update(
                (sku, StockLevel(sku, level.on_hand, level.reserved)) for sku, level in read.items()
            )
        unknown = [sku for sku in skus if sku not in found]
        if unknown:
            raise NotFound("sku", unknown)
        return [found[sku] for sku in skus]

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

    async def _reserve_batch(self, commands: Sequence[ReserveCommand]) -> list[Answer]:
        """Gate, then hold in PostgreSQL, a batch of reservations."""
        async with gating.holding(self.mirror, self.store, commands) as batch:
            if batch.to_database:
                try:
                    outcomes, batch.levels = await self.store.reserve_batch(
                        [commands[i] for i in batch.to_database]
                    )
                except Unavailable as exc:
                    batch.fail(exc)
                    outcomes = []
                for i, outcome in zip(batch.to_database, outcomes, strict=False):
                    answer = _answer(commands[i], outcome)
                    held = None
                    if outcome.reservation is not None and not isinstance(answer, BaseException):
                        held = (commands[i].reservation_id, outcome.reservation.expires_at)
                    batch.decide(i, answer, held)
        return batch.answers  # type: ignore[return-value]

    async def _set_line_batch(self, changes: Sequence[SetLine]) -> list[Answer]:
        """Gate what the changes add, then decide them in PostgreSQL, one statement."""
        async with gating.changing(self.mirror, self.store, changes) as batch:
            if batch.to_database:
                try:
                    outcomes, batch.levels = await self.store.set_lines(
                        [changes[i] for i in batch.to_database]
                    )
                except Unavailable as exc:
                    batch.fail(exc)
                    outcomes = []
                for i, outcome in zip(batch.to_database, outcomes, strict=False):
                    held = None
                    if outcome.code is LineCode.APPLIED and outcome.reservation is not None:
                        held = (changes[i].reservation_id, outcome.reservation.expires_at)
                    batch.decide(i, _line_answer(changes[i], outcome), held)
        return batch.answers  # type: ignore[return-value]

    async def _finish_batch(
        self, finish: Finish, requests: Sequence[tuple[str, str, str | None]]
    ) -> list[Answer]:
        """Commit or release a batch of (reservation id, caller, customer the caller is
        bound to); an order's hold is refused (it ends only through the order)."""
        ids = [rid for rid, _, _ in requests]
        outcomes, levels = await self.store.finish_batch(
            ids,
            finish,
            [caller for _, caller, _ in requests],
            [customer for _, _, customer in requests],
        )
        await self.mirror.settle(levels=levels)
        results: list[Answer] = []
        for (rid, _, customer), outcome in zip(requests, outcomes, strict=True):
            if outcome.code is FinishCode.OTHER_CUSTOMER and customer is not None:
                results.append(not_held_for(customer, rid))
            elif outcome.code is FinishCode.UNKNOWN or outcome.reservation is None:
                results.append(NotFound("reservation", [rid]))
            elif outcome.code is FinishCode.ORDER_OWNED:
                results.append(_order_owned(rid))
            else:
                try:
                    check_finish(rid, finish, outcome.reservation.status)
                except IllegalTransition as exc:
                    results.append(exc)
                else:
                    results.append(outcome.reservation)
        return results

    async def _read_mirror(
        self, requests: Sequence[tuple[str, ...]]
    ) -> list[dict[str, StockLevel] | BaseException]:
        """One mirror read for a batch of GetStock requests."""
        found = await self.mirror.levels(list({sku: None for skus in requests for sku in skus}))
        return [{sku: found[sku] for sku in skus if sku in found} for skus in requests]

    async def _read_reservations(self, ids: Sequence[str]) -> list[Answer]:
        """GetReservation reads plain reservations only: an order's hold is the order's,
        read through GetOrder, and its id is refused here as Commit/Release refuse it."""
        found, order_holds = await self.store.plain_reservations(ids)
        return [
            _order_owned(rid, "GetOrder") if rid in order_holds
            else found.get(rid) or NotFound("reservation", [rid])
            for rid in ids
        ]  # fmt: skip


def _answer(command: ReserveCommand, outcome: ReserveResult) -> Answer:
    """What PostgreSQL's outcome of one reservation means to its caller."""
    if outcome.code is ReserveCode.HELD or outcome.code is ReserveCode.REPEAT:
        assert outcome.reservation is not None
        HOLDS.labels("admitted" if outcome.code is ReserveCode.HELD else "repeated").inc()
        return outcome.reservation
    if outcome.code is ReserveCode.CONFLICT:
        HOLDS.labels("conflicting").inc()
        return AlreadyExists("reservation", command.reservation_id)
    HOLDS.labels("rejected_by_database").inc()
    if outcome.unknown_skus:
        return NotFound("sku", outcome.unknown_skus)
    return InsufficientStock(outcome.shortages)


def _line_answer(change: SetLine, outcome: LineResult) -> Answer:
    """What PostgreSQL's outcome of one change means to its caller."""
    rid = change.reservation_id
    code, found = outcome.code, outcome.reservation
    if code is LineCode.UNKNOWN:
        return NotFound("reservation", [rid])
    if code is LineCode.OTHER_CUSTOMER:
        return not_held_for(change.customer_id or "", rid)
    if code is LineCode.ORDER_OWNED:
        return _order_owned(rid, "CancelOrder")
    if code is LineCode.CONFLICT:
        return AlreadyExists("change", change.change_id)
    if code is LineCode.FULL:
        return ReservationFull(rid, MAX_LINES)
    if found is None:
        raise RuntimeError(f"set_reservation_lines answered {code.name} without the reservation")
    if code is LineCode.NOT_HELD:
        return not_held(rid, found.status, "change")
    if code is LineCode.REJECTED:
        HOLDS.labels("rejected_by_database").inc()
        if outcome.available is None:
            return NotFound("sku", [change.line.sku])
        return InsufficientStock(
            [Shortage(change.line.sku, change.line.quantity, outcome.available)]
        )
    return found


def _order_owned(
    reservation_id: str, use: str = "ConfirmPayment or CancelOrder"
) -> IllegalTransition:
    return IllegalTransition(
        reservation_id,
        f"held by order {reservation_id}",
        "finished",
        f"reservation {reservation_id!r} is the hold of order {reservation_id!r}: use"
        f" {use} of OrderService",
    )
