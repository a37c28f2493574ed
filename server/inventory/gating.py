"""The admission gate's part of a batch of holds (plain reservations or orders) and of
changes of held reservations: what the Redis gate turned away before PostgreSQL, and
what to tell the mirror after it.

`holding` is the one skeleton of a batch of holds, shared by Reserve and CreateOrder,
and `changing` its twin for SetReservationLine: gate, then the caller's one PostgreSQL
statement for what the gate let through, then the settle, which runs also when the
statement failed (its pending units go back to the gate).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from server.domain.errors import InsufficientStock, Shortage, Unavailable
from server.domain.inventory import Line, ReserveCommand, SetLine
from server.inventory.mirror import Mirror
from server.metrics import HOLDS
from server.storage.postgres import MirrorLevel, StockStore
from server.storage.redis_gate import AdmitCode


@dataclass
class GatedBatch:
    """A batch after the gate: positions PostgreSQL must decide, and the refusals the gate
    already made (sold out as mirrored), by position."""

    to_database: list[int]
    refused: dict[int, InsufficientStock | Unavailable] = field(default_factory=dict)
    # Ids the gate holds pending units for, which the settle must clear.
    pending: list[str] = field(default_factory=list)


async def admit(
    mirror: Mirror, store: StockStore, commands: Sequence[ReserveCommand]
) -> GatedBatch:
    """Run the batch through the gate; with the gate bypassed, everything goes on.

    The gate knows the ids it saw held, but not always every one (a hold made while it
    was bypassed, or whose process died before telling it, or older than it keeps ids):
    before a refusal is sent, one lookup asks PostgreSQL whether any refused id is held
    already, and those go on to PostgreSQL, which answers a retry with its first outcome.
    """
    asked = [i for i, command in enumerate(commands) if not mirror.plentiful(command)]
    verdicts = await mirror.admit([commands[i] for i in asked]) if asked else []
    if verdicts is None:
        return GatedBatch(list(range(len(commands))))
    batch = GatedBatch(sorted(set(range(len(commands))) - set(asked)))
    refused = [asked[j] for j, v in enumerate(verdicts) if v.code is AdmitCode.REJECTED]
    retries: set[str] | Unavailable = set()
    if refused:
        try:
            retries = await store.existing_reservations(
                [commands[i].reservation_id for i in refused]
            )
        except Unavailable as exc:
            retries = exc
    for i, verdict in zip(asked, verdicts, strict=True):
        if verdict.code is AdmitCode.REJECTED:
            if isinstance(retries, Unavailable):
                batch.refused[i] = retries  # cannot tell a retry from a new request
                continue
            if commands[i].reservation_id in retries:
                batch.to_database.append(i)
                continue
            HOLDS.labels("rejected_by_gate").inc()
            batch.refused[i] = InsufficientStock(
                [
                    Shortage(line.sku, line.quantity, verdict.available[line.sku])
                    for line in commands[i].lines
                    if line.sku in verdict.available
                ]
            )
            continue
        if verdict.code is AdmitCode.ADMITTED:
            batch.pending.append(commands[i].reservation_id)
        batch.to_database.append(i)
    return batch


async def settle(
    mirror: Mirror,
    batch: GatedBatch,
    held: Sequence[tuple[str, datetime]],
    levels: Sequence[MirrorLevel],
) -> None:
    """Tell the mirror what PostgreSQL decided: pending units cleared, the ids now held
    (id, expiry) remembered, and the levels after."""
    known = [(rid, mirror.forget_at_ms(expires_at)) for rid, expires_at in held]
    await mirror.settle(clear=batch.pending, known=known, levels=levels)


@dataclass
class HoldBatch:
    """A batch of holds inside `holding`: the positions the caller must decide in
    PostgreSQL, and the answers, the gate's refusals already in place."""

    to_database: list[int]
    answers: list[object]
    """By position: a caller's answer (a value or an exception), None until decided."""
    levels: list[MirrorLevel] = field(default_factory=list)
    """The stock levels the statement returned, for the mirror."""
    _held: list[tuple[str, datetime]] = field(default_factory=list)

    def decide(self, position: int, answer: object, held: tuple[str, datetime] | None) -> None:
        """The answer at `position`, and (id, expiry) when it holds stock now."""
        self.answers[position] = answer
        if held is not None:
            self._held.append(held)

    def fail(self, error: BaseException) -> None:
        """The statement failed: every position it was to decide gets `error`."""
        for position in self.to_database:
            self.answers[position] = error


async def admit_changes(
    mirror: Mirror, store: StockStore, changes: Sequence[SetLine]
) -> GatedBatch:
    """Run the units each change adds through the gate, as a hold of its own; with the
    gate bypassed, everything goes on.

    Redis knows levels, not what a reservation holds: a change that may add units to a SKU
    not plentiful here is first read in PostgreSQL, without a lock (one statement for the
    batch), for the units its reservation holds of the SKU; the gate then holds the
    difference, all of it or none. A change that adds nothing (a removal, a smaller
    quantity), one whose reservation is not HELD, and a retry of an applied change go
    straight to PostgreSQL, which decides every change under its locks: a reservation
    changed meanwhile costs at worst a refusal the gate made on an old quantity, never an
    oversell."""
    everything = GatedBatch(list(range(len(changes))))
    adding = [
        i
        for i, change in enumerate(changes)
        if change.line.quantity > 0 and not mirror.plentiful(_as_hold(change, change.line))
    ]
    if not adding or mirror.gate is None or not mirror.usable:
        return everything
    try:
        found = await store.held_lines([changes[i] for i in adding])
    except Unavailable:
        return everything  # PostgreSQL answers for itself
    asked: list[tuple[int, int]] = []
    holds: list[ReserveCommand] = []
    for i, held in zip(adding, found, strict=True):
        line = changes[i].line
        if held.held and not held.known_change and line.quantity > held.quantity:
            asked.append((i, held.quantity))
            holds.append(_as_hold(changes[i], Line(line.sku, line.quantity - held.quantity)))
    verdicts = await mirror.admit(holds) if holds else []
    if verdicts is None:
        return everything
    batch = GatedBatch(sorted(set(range(len(changes))) - {i for i, _ in asked}))
    for (i, quantity), hold, verdict in zip(asked, holds, verdicts, strict=True):
        line = changes[i].line
        if verdict.code is AdmitCode.REJECTED:
            HOLDS.labels("rejected_by_gate").inc()
            batch.refused[i] = InsufficientStock(
                [Shortage(line.sku, line.quantity, quantity + verdict.available[line.sku])]
            )
            continue
        if verdict.code is AdmitCode.ADMITTED:
            batch.pending.append(hold.reservation_id)
        batch.to_database.append(i)
    batch.to_database.sort()
    return batch


def _as_hold(change: SetLine, line: Line) -> ReserveCommand:
    # The gate's pending units of a change are keyed by an id of their own: '#' is in no
    # reservation id, so it names no reservation the gate remembers.
    return ReserveCommand(f"#{uuid.uuid4().hex}", (line,), change.ttl_ms, change.caller)


@contextlib.asynccontextmanager
async def holding(
    mirror: Mirror, store: StockStore, holds: Sequence[ReserveCommand]
) -> AsyncIterator[HoldBatch]:
    """Gate `holds`, yield the batch for the caller to decide what the gate let through,
    then settle the mirror with what was decided, also when deciding failed."""
    gated = await admit(mirror, store, holds)
    batch = HoldBatch(gated.to_database, [None] * len(holds))
    for position, refusal in gated.refused.items():
        batch.answers[position] = refusal
    try:
        yield batch
    finally:
        await settle(mirror, gated, batch._held, batch.levels)


@contextlib.asynccontextmanager
async def changing(
    mirror: Mirror, store: StockStore, changes: Sequence[SetLine]
) -> AsyncIterator[HoldBatch]:
    """`holding` for changes of held reservations (admit_changes): yield the batch for the
    caller to decide what the gate let through, then settle the mirror, also when deciding
    failed."""
    gated = await admit_changes(mirror, store, changes)
    batch = HoldBatch(gated.to_database, [None] * len(changes))
    for position, refusal in gated.refused.items():
        batch.answers[position] = refusal
    try:
        yield batch
    finally:
        await settle(mirror, gated, batch._held, batch.levels)
