"""A paid order's way through fulfilment: the stages it passes, the row the workers keep for
it, and the outcome a worker records after a step (plain values; the store turns them into
SQL)."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


class Stage(enum.IntEnum):
    """Where an order's fulfilment stands; the values are stored (server/storage/sql/011_fulfilment.sql)."""

    HAND_OFF = 1
    PACKING = 2
    BOOKING = 3
    RECORDING = 4
    TRACKING = 5
    DELIVERED = 6
    CANCELLING = 7
    CANCELLED = 8
    DEAD = 9
    ELSEWHERE = 10


# Stages a cancellation still stops: nothing has shipped yet.
CANCELLABLE = frozenset({Stage.HAND_OFF, Stage.PACKING, Stage.BOOKING, Stage.RECORDING})


@dataclass(frozen=True)
class Fulfilment:
    """One order's fulfilment row, as claimed by a worker (`lease` fences what it records)."""

    order_id: str
    stage: Stage
    customer_id: str
    lines: tuple[tuple[str, int], ...]
    paid_at: datetime
    lease: int
    attempts: int = 0
    warehouse_ref: str | None = None
    handed_off_at: datetime | None = None
    packed_at: datetime | None = None
    carrier: str | None = None
    booking_key: str | None = None
    tracking_no: str | None = None
    carrier_ack_id: str | None = None
    shipped_at: datetime | None = None
    in_transit_at: datetime | None = None
    delivered_at: datetime | None = None
    cancel_requested: bool = False
    last_error: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One line of an order's fulfilment history."""

    partner: str
    what: str
    detail: str = ""


@dataclass
class Outcome:
    """What a step did to one row. Only the fields set change; `bind` writes carrier and
    booking_key (both None: the order is free to go to any carrier again)."""

    row: Fulfilment
    stage: Stage
    due_in_s: float = 0.0
    attempts: int = 0
    last_error: str | None = None
    synced: bool = False
    warehouse_ref: str | None = None
    handed_off: bool = False
    packed_at: datetime | None = None
    bind: bool = False
    carrier: str | None = None
    booking_key: str | None = None
    tracking_no: str | None = None
    carrier_ack_id: str | None = None
    booked: bool = False
    shipped: bool = False
    in_transit_at: datetime | None = None
    delivered_at: datetime | None = None
    dead_stage: Stage | None = None
    dead_partner: str | None = None
    history: list[HistoryEntry] = field(default_factory=list)

    def note(self, partner: str, what: str, detail: str = "") -> Outcome:
        """Add a history line; returns self."""
        self.history.append(HistoryEntry(partner, what, detail))
        return self


def step_backoff(
    attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait before a step's next try after `attempt` failed tries: exponential, with
    half of it jittered so that orders failed together do not come back together."""
    ceiling: float = min(max_s, initial_s * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + ceiling / 2 * rand()
