"""What the fulfilment worker needs from its partners, as one interface per kind of
partner, and the errors every adapter answers with.

A real warehouse or carrier plugs in by writing one adapter: a class with these methods
that speaks the partner's own API (its URLs, formats, credentials) and maps its replies to
these values and its failures to these errors. The shape follows the multi-carrier
libraries' (a carrier is a settings object plus book / track / cancel operations turning a
unified request into the carrier's and its reply back); fulfilment/http_partners.py
holds the adapters of the project's simulators.

The errors say what a retry may assume, which is what keeps an order from being booked
twice: `NotApplied` means the partner provably did nothing (the request never got through,
or the partner's contract says this reply applied nothing), `OutcomeUnknown` that it may
have applied the request, `Rejected` that it refused it for good."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# The errors every adapter answers with are every partner caller's (runtime/partner_http.py).
from runtime.partner_http import (
    MalformedReply,
    NotApplied,
    OutcomeUnknown,
    PartnerError,
    Rejected,
)

__all__ = [
    "Booking",
    "BookingRequest",
    "Carrier",
    "HandOff",
    "HandOffAck",
    "MalformedReply",
    "NotApplied",
    "OutcomeUnknown",
    "PackState",
    "PackStatus",
    "PartnerError",
    "Rejected",
    "TrackingUpdate",
    "Warehouse",
]


@dataclass(frozen=True)
class HandOff:
    """A paid order handed to the warehouse to pick and pack."""

    order_id: str
    customer_id: str
    lines: tuple[tuple[str, int], ...]
    paid_at: datetime


@dataclass(frozen=True)
class HandOffAck:
    """The warehouse's acknowledgement of a hand-off: its own reference for the order."""

    order_id: str
    warehouse_ref: str


class PackState(enum.Enum):
    """Where the warehouse has got with an order."""

    ACCEPTED = "accepted"
    PACKED = "packed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    """The warehouse does not know the order (it lost the hand-off)."""


@dataclass(frozen=True)
class PackStatus:
    """One order's state at the warehouse."""

    order_id: str
    state: PackState
    packed_at: datetime | None = None


@dataclass(frozen=True)
class BookingRequest:
    """A packed parcel to book with a carrier; `booking_key` is the idempotency key: a
    carrier books one parcel per key, however often it is sent."""

    order_id: str
    booking_key: str
    customer_id: str
    lines: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Booking:
    """A carrier's acknowledgement of a booking: the tracking number and its ack id."""

    carrier: str
    booking_key: str
    tracking_no: str
    carrier_ack_id: str


@dataclass(frozen=True)
class TrackingUpdate:
    """What a carrier reports of one parcel (its times are the carrier's)."""

    tracking_no: str
    known: bool
    in_transit_at: datetime | None = None
    delivered_at: datetime | None = None


class Warehouse(Protocol):
    """The warehouse the orders are packed in."""

    @property
    def name(self) -> str:
        """The partner's name in metrics, logs and histories."""
        ...

    async def hand_off(self, order: HandOff) -> HandOffAck:
        """Give an order to the warehouse; idempotent on the order id."""
        ...

    async def statuses(self, order_ids: Sequence[str]) -> Mapping[str, PackStatus]:
        """Where the warehouse has got with these orders."""
        ...

    async def cancel(self, order_id: str) -> None:
        """Take an order back (nothing to take back is not an error)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Carrier(Protocol):
    """A carrier parcels are booked with and tracked at."""

    @property
    def name(self) -> str:
        """The carrier code ShipOrder is given (one of the server's allowed carriers)."""
        ...

    async def book(self, request: BookingRequest) -> Booking:
        """Book a parcel; idempotent on the booking key."""
        ...

    async def track(self, tracking_nos: Sequence[str]) -> Mapping[str, TrackingUpdate]:
        """The scans of these parcels."""
        ...

    async def cancel(self, booking_key: str) -> None:
        """Void a booking (nothing booked under the key is not an error)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
