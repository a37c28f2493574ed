"""Stock holds: the values, the limits on requests, and the reservation life cycle."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from server.domain.errors import (
    FieldViolation,
    IllegalTransition,
    InvalidArgument,
    PermissionDenied,
)

MAX_LINES = 100
MAX_QUANTITY = 1_000_000
MAX_SKUS_PER_READ = 1_000
MAX_ADJUSTMENT = 1_000_000_000
MAX_REASON = 200

SKU_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
ID_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
# Path segments that name nothing (RFC 3986 dot-segments, and the empty one): no part of an
# id between slashes may be one of these.
_UNNAMED_SEGMENTS = frozenset({"", ".", ".."})


class ReservationStatus(IntEnum):
    """Where a reservation stands; the values are stored in PostgreSQL."""

    HELD = 1
    COMMITTED = 2
    RELEASED = 3
    EXPIRED = 4


class Finish(IntEnum):
    """The ways a hold ends, named by the status each leads to."""

    COMMIT = ReservationStatus.COMMITTED
    RELEASE = ReservationStatus.RELEASED
    EXPIRE = ReservationStatus.EXPIRED


# The reservation life cycle, in one table: for each way of ending a hold and each
# status it may meet, whether the call succeeds with the reservation as it stands.
# HELD is absent: from HELD every finish applies (a commit past expiry expires instead).
_ACCEPTED_AFTER: dict[Finish, frozenset[ReservationStatus]] = {
    Finish.COMMIT: frozenset({ReservationStatus.COMMITTED}),
    Finish.RELEASE: frozenset({ReservationStatus.RELEASED, ReservationStatus.EXPIRED}),
    Finish.EXPIRE: frozenset(
        {ReservationStatus.COMMITTED, ReservationStatus.RELEASED, ReservationStatus.EXPIRED}
    ),
}


def check_finish(reservation_id: str, finish: Finish, status: ReservationStatus) -> None:
    """Raise IllegalTransition unless a `finish` that met `status` counts as success."""
    if status in _ACCEPTED_AFTER[finish]:
        return
    verb = finish.name.lower()
    raise IllegalTransition(
        reservation_id,
        status.name,
        ReservationStatus(finish.value).name,
        f"cannot {verb} reservation {reservation_id!r}: it is {status.name}"
        + (" (its hold lapsed before the commit)" if status is ReservationStatus.EXPIRED else ""),
    )


# ErrorInfo reason of a customer's token naming what is not that customer's (part of the
# API; server/domain/orders.py refuses orders with it too).
OTHER_CUSTOMER = "OTHER_CUSTOMER"


def not_held_for(customer_id: str, reservation_id: str) -> PermissionDenied:
    """A reservation that is not held for the customer a caller's token is bound to (or, for
    an order made of it, not for the order's customer)."""
    return PermissionDenied(
        OTHER_CUSTOMER, f"reservation {reservation_id!r} is not held for customer {customer_id!r}"
    )


def not_held(reservation_id: str, status: ReservationStatus, wanted: str) -> IllegalTransition:
    """A change (`wanted`: what the caller meant to make of it) of a reservation that is no
    longer HELD; a HELD one past its expiry counts as EXPIRED (the sweep has yet to end it)."""
    current = ReservationStatus.EXPIRED if status is ReservationStatus.HELD else status
    return IllegalTransition(
        reservation_id,
        current.name,
        wanted,
        f"reservation {reservation_id!r} is {current.name}: only a HELD reservation can {wanted}",
    )


@dataclass(frozen=True, slots=True)
class Line:
    """A quantity of one SKU."""

    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class StockLevel:
    """One SKU's stock."""

    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        """What can still be reserved."""
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on stock and what became of it."""

    reservation_id: str
    status: ReservationStatus
    lines: tuple[Line, ...]
    created_at: datetime
    expires_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    """A validated request to hold stock: lines merged per SKU and sorted; `customer_id`
    names the customer it is held for (a checkout page's token's), None for a service."""

    reservation_id: str
    lines: tuple[Line, ...]
    ttl_ms: int
    caller: str
    customer_id: str | None = None

    @property
    def fingerprint(self) -> bytes:
        """What makes two requests with one id the same request (the same customer's, for
        a customer's: another customer's is a different request)."""
        body = "|".join(f"{line.sku}={line.quantity}" for line in self.lines)
        text = f"reserve|{body}|{self.ttl_ms}"
        if self.customer_id is not None:
            text += f"|customer {self.customer_id}"
        return hashlib.sha256(text.encode()).digest()[:16]


@dataclass(frozen=True, slots=True)
class SetLine:
    """A validated SetReservationLine: reservation `reservation_id` is to hold
    `line.quantity` units of `line.sku` (0: none, the line goes) for `ttl_ms` from the
    change, which `change_id` names. `customer_id`: the customer the caller's token is
    bound to (it may change only that customer's reservations), None for a service."""

    reservation_id: str
    change_id: str
    line: Line
    ttl_ms: int
    caller: str
    customer_id: str | None = None

    @property
    def fingerprint(self) -> bytes:
        """What makes two changes with one change_id the same change."""
        text = f"set-line|{self.reservation_id}|{self.line.sku}={self.line.quantity}|{self.ttl_ms}"
        return hashlib.sha256(text.encode()).digest()[:16]


@dataclass(frozen=True, slots=True)
class AdjustCommand:
    """A validated stock adjustment: exactly one of delta and on_hand is set."""

    sku: str
    delta: int | None
    on_hand: int | None
    reason: str
    idempotency_key: str
    caller: str

    @property
    def fingerprint(self) -> bytes:
        """What makes two adjustments with one key the same adjustment."""
        text = f"adjust|{self.sku}|{self.delta}|{self.on_hand}|{self.reason}"
        return hashlib.sha256(text.encode()).digest()[:16]


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)


def check_sku(sku: str, field: str) -> list[FieldViolation]:
    """Violations of the SKU format."""
    if not sku:
        return [_violation(field, "must not be empty")]
    if SKU_PATTERN.fullmatch(sku) is None:
        return [
            _violation(
                field, "must be 1-64 characters of [A-Za-z0-9._:/-] starting with a letter or digit"
            )
        ]
    return []


def check_id(value: str, field: str) -> list[FieldViolation]:
    """Violations of the id format (order, customer, payment and reservation ids,
    idempotency keys)."""
    if not value:
        return [_violation(field, "must not be empty")]
    if ID_PATTERN.fullmatch(value) is None:
        return [_violation(field, "must be 1-128 characters of [A-Za-z0-9._:/-]")]
    # An id reaches partners' URLs and other systems' paths: split at its slashes, every
    # part must name something, or a normalising server collapses it into another id.
    if any(segment in _UNNAMED_SEGMENTS for segment in value.split("/")):
        return [
            _violation(
                field, "must not start or end with '/', hold '//', or have a '.' or '..' segment"
            )
        ]
    return []


def check_reason(value: str, field: str = "reason") -> list[FieldViolation]:
    """Violations of a free-text reason: 1-200 characters, not only spaces, and none of
    them a control character (NUL, newlines, escapes): it lands in the audit trail."""
    if not value.strip() or len(value) > MAX_REASON:
        return [_violation(field, f"must be 1-{MAX_REASON} characters, not only spaces")]
    if not value.isprintable():
        return [_violation(field, "must not contain control characters (NUL, newlines, tabs ...)")]
    return []


def require_id(value: str, field: str) -> str:
    """Return `value` or raise InvalidArgument."""
    violations = check_id(value, field)
    if violations:
        raise InvalidArgument(violations)
    return value


def merge_lines(raw: Sequence[tuple[str, int]], field: str = "lines") -> tuple[Line, ...]:
    """Validate lines and sum duplicates; the result is sorted by SKU."""
    violations: list[FieldViolation] = []
    if not raw:
        violations.append(_violation(field, "must hold at least one line"))
    if len(raw) > MAX_LINES:
        violations.append(_violation(field, f"must hold at most {MAX_LINES} lines, got {len(raw)}"))
    totals: dict[str, int] = {}
    for index, (sku, quantity) in enumerate(raw[:MAX_LINES]):
        violations += check_sku(sku, f"{field}[{index}].sku")
        if not 1 <= quantity <= MAX_QUANTITY:
            violations.append(
                _violation(
                    f"{field}[{index}].quantity", f"must be 1 to {MAX_QUANTITY}, got {quantity}"
                )
            )
        totals[sku] = totals.get(sku, 0) + quantity
    for sku, total in totals.items():
        if total > MAX_QUANTITY and sku:
            violations.append(_violation(field, f"{sku} totals {total}, more than {MAX_QUANTITY}"))
    if violations:
        raise InvalidArgument(violations)
    return tuple(Line(sku, quantity) for sku, quantity in sorted(totals.items()))


def ttl_ms(ttl_s: float | None, *, default_s: float, min_s: float, max_s: float) -> int:
    """Validate a hold's time-to-live (None means the default) and return milliseconds."""
    if ttl_s is None:
        return round(default_s * 1000)
    if not min_s <= ttl_s <= max_s:
        raise InvalidArgument(
            [_violation("ttl", f"must be {min_s:g} s to {max_s:g} s, got {ttl_s:g} s")]
        )
    return round(ttl_s * 1000)


def reserve_command(
    reservation_id: str,
    lines: Sequence[tuple[str, int]],
    ttl_s: float | None,
    caller: str,
    *,
    default_ttl_s: float,
    min_ttl_s: float,
    max_ttl_s: float,
    customer_id: str | None = None,
) -> ReserveCommand:
    """Validate a Reserve request, reporting every violation at once."""
    violations = check_id(reservation_id, "reservation_id")
    try:
        merged = merge_lines(lines)
    except InvalidArgument as exc:
        violations += exc.violations
        merged = ()
    try:
        ttl = ttl_ms(ttl_s, default_s=default_ttl_s, min_s=min_ttl_s, max_s=max_ttl_s)
    except InvalidArgument as exc:
        violations += exc.violations
        ttl = 0
    if violations:
        raise InvalidArgument(violations)
    return ReserveCommand(reservation_id, merged, ttl, caller, customer_id)


def set_line(
    reservation_id: str,
    change_id: str,
    sku: str,
    quantity: int,
    ttl_s: float | None,
    caller: str,
    *,
    default_ttl_s: float,
    min_ttl_s: float,
    max_ttl_s: float,
    customer_id: str | None = None,
) -> SetLine:
    """Validate a SetReservationLine request, reporting every violation at once."""
    violations = check_id(reservation_id, "reservation_id") + check_id(change_id, "change_id")
    violations += check_sku(sku, "sku")
    if not 0 <= quantity <= MAX_QUANTITY:
        violations.append(
            _violation("quantity", f"must be 0 (no line) to {MAX_QUANTITY}, got {quantity}")
        )
    try:
        ttl = ttl_ms(ttl_s, default_s=default_ttl_s, min_s=min_ttl_s, max_s=max_ttl_s)
    except InvalidArgument as exc:
        violations += exc.violations
        ttl = 0
    if violations:
        raise InvalidArgument(violations)
    return SetLine(reservation_id, change_id, Line(sku, quantity), ttl, caller, customer_id)


def adjust_command(
    sku: str,
    delta: int | None,
    on_hand: int | None,
    reason: str,
    idempotency_key: str,
    caller: str,
) -> AdjustCommand:
    """Validate an AdjustStock request."""
    violations = check_sku(sku, "sku") + check_id(idempotency_key, "idempotency_key")
    if (delta is None) == (on_hand is None):
        violations.append(_violation("change", "set exactly one of delta and on_hand"))
    if delta is not None and not (delta != 0 and abs(delta) <= MAX_ADJUSTMENT):
        violations.append(
            _violation("delta", f"must be non-zero and at most {MAX_ADJUSTMENT} in size")
        )
    if on_hand is not None and not 0 <= on_hand <= MAX_ADJUSTMENT:
        violations.append(_violation("on_hand", f"must be 0 to {MAX_ADJUSTMENT}"))
    violations += check_reason(reason)
    if violations:
        raise InvalidArgument(violations)
    return AdjustCommand(sku, delta, on_hand, reason, idempotency_key, caller)


def distinct_skus(skus: Iterable[str], field: str = "skus") -> tuple[str, ...]:
    """Validate a list of SKUs to read; duplicates are kept once, in first-seen order."""
    listed = list(skus)
    violations: list[FieldViolation] = []
    if not listed:
        violations.append(_violation(field, "must name at least one SKU"))
    if len(listed) > MAX_SKUS_PER_READ:
        violations.append(_violation(field, f"must name at most {MAX_SKUS_PER_READ} SKUs"))
    for index, sku in enumerate(listed[:MAX_SKUS_PER_READ]):
        violations += check_sku(sku, f"{field}[{index}]")
    if violations:
        raise InvalidArgument(violations)
    return tuple(dict.fromkeys(listed))
