"""Where an order's fulfilment stands: the stages the fulfilment workers store and
`stockctl fulfilment` shows, defined once for both."""

from __future__ import annotations

import enum


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

    @property
    def active(self) -> bool:
        """Whether a worker still has something to do."""
        return self in ACTIVE


ACTIVE = frozenset(
    {
        Stage.HAND_OFF,
        Stage.PACKING,
        Stage.BOOKING,
        Stage.RECORDING,
        Stage.TRACKING,
        Stage.CANCELLING,
    }
)


def stage_name(value: int) -> str:
    """The name of a stored stage number (the number itself if no stage has it)."""
    try:
        return Stage(value).name
    except ValueError:
        return str(value)
