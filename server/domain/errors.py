"""Expected failures, as types. Anything else is a bug and surfaces as INTERNAL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """Base of every expected failure."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request."""

    field: str
    description: str


# The most violations an error lists; the rest are counted.
MAX_VIOLATIONS = 20


class InvalidArgument(DomainError):
    """The request itself is malformed; retrying it unchanged cannot succeed. Its text
    (and a status's details) list at most MAX_VIOLATIONS of the violations; `violations`
    keeps them all, for an error made of several (they are few: every repeated field of
    a request is bounded before its entries are checked)."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.listed)
        if len(self.violations) > len(self.listed):
            text += f"; and {len(self.violations) - len(self.listed)} more"
            text += f" ({len(self.violations)} violations)"
        super().__init__(text)

    @property
    def listed(self) -> tuple[FieldViolation, ...]:
        """The violations an answer lists."""
        return self.violations[:MAX_VIOLATIONS]


class NotFound(DomainError):
    """A named SKU, reservation, order or order line does not exist; `message` says more
    than "unknown <kind>" when given."""

    def __init__(self, kind: str, names: Sequence[str], message: str | None = None) -> None:
        self.kind = kind
        self.names = tuple(names)
        super().__init__(message or f"unknown {kind}: {', '.join(self.names)}")


class NoSuchLine(NotFound):
    """A line named by its SKU is not one of the order's lines."""

    def __init__(self, order_id: str, sku: str, lines: Sequence[str]) -> None:
        super().__init__(
            "order line",
            [sku],
            f"order {order_id!r} has no line of SKU {sku!r}; its lines: {', '.join(lines)}",
        )
        self.order_id = order_id


class AlreadyExists(DomainError):
    """An idempotency id was reused with different content; `owner` names what the id
    belongs to when that is something else (the order a payment id paid)."""

    def __init__(self, kind: str, name: str, owner: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.owner = owner
        super().__init__(
            f"{kind} {name!r} already belongs to {owner}; a {kind} id is used once"
            if owner
            else f"{kind} {name!r} already exists with different content;"
            " use a new id for a new request"
        )


@dataclass(frozen=True)
class Shortage:
    """A SKU that cannot cover a requested quantity."""

    sku: str
    requested: int
    available: int


class InsufficientStock(DomainError):
    """Some lines cannot be held; nothing was held."""

    def __init__(self, shortages: Sequence[Shortage]) -> None:
        self.shortages = tuple(shortages)
        super().__init__(
            "insufficient stock: "
            + ", ".join(
                f"{s.sku} (available {s.available}, requested {s.requested})"
                for s in self.shortages
            )
        )


class IllegalTransition(DomainError):
    """A reservation or order is not in a state that allows the operation; `allowed`
    names the states it may move to next, when the caller can act on them."""

    def __init__(
        self, subject: str, current: str, wanted: str, reason: str, allowed: Sequence[str] = ()
    ) -> None:
        self.subject = subject
        self.current = current
        self.wanted = wanted
        self.allowed = tuple(allowed)
        super().__init__(reason)


class NotRefundable(DomainError):
    """An order or line that RefundLine cannot refund at all: the order was not paid, or
    what it was paid is owed back already (`check` STATUS, `subject` the order), or the
    line cost nothing (`check` PRICE, `subject` the SKU). Nothing was changed."""

    def __init__(self, check: str, subject: str, description: str, message: str) -> None:
        self.check = check
        self.subject = subject
        self.description = description
        super().__init__(message)


class LineRefundExceeded(DomainError):
    """More units of a line asked to be refunded than it has left (`bought` less
    `refunded` already); nothing was changed."""

    def __init__(self, order_id: str, sku: str, bought: int, refunded: int, asked: int) -> None:
        self.order_id = order_id
        self.sku = sku
        self.bought = bought
        self.refunded = refunded
        self.asked = asked
        super().__init__(
            f"order {order_id!r} has {self.left} of {bought} units of {sku!r} left to refund"
            f" ({refunded} refunded already); {asked} asked"
        )

    @property
    def left(self) -> int:
        """Units the line may still be refunded."""
        return self.bought - self.refunded


class PaymentMismatch(DomainError):
    """A payment's amount or currency differs from the order's; nothing was changed."""

    def __init__(self, order_id: str, expected: str, paid: str) -> None:
        self.order_id = order_id
        self.expected = expected
        self.paid = paid
        super().__init__(f"payment of {paid} does not match order {order_id!r} total {expected}")


class EventBeforeOrder(DomainError):
    """A carrier's event time is before the order it reports on was created; nothing was
    changed. Times are ISO 8601 text, for the caller to read."""

    def __init__(self, order_id: str, event_time: str, created_at: str) -> None:
        self.order_id = order_id
        self.event_time = event_time
        self.created_at = created_at
        super().__init__(
            f"event_time {event_time} is before order {order_id!r} was created ({created_at})"
        )


class ReservationFull(DomainError):
    """A new line for a reservation that holds the most lines one may hold."""

    def __init__(self, reservation_id: str, limit: int) -> None:
        self.reservation_id = reservation_id
        self.limit = limit
        super().__init__(
            f"reservation {reservation_id!r} holds {limit} lines, the most it may: change or"
            " remove one first"
        )


class LinesDiffer(DomainError):
    """An order made from a held reservation lists other lines than the reservation holds
    (it changed since the caller read it); nothing was changed. `held` and `requested` are
    the lines, as text for the caller to read."""

    def __init__(self, reservation_id: str, held: str, requested: str) -> None:
        self.reservation_id = reservation_id
        self.held = held
        self.requested = requested
        super().__init__(
            f"reservation {reservation_id!r} holds {held or 'no line'}; the order lists"
            f" {requested}: send the reservation's lines"
        )


class StockFloorViolation(DomainError):
    """An adjustment would leave on_hand below reserved or below zero."""

    def __init__(self, sku: str, on_hand: int, reserved: int, delta: int) -> None:
        self.sku = sku
        self.on_hand = on_hand
        self.reserved = reserved
        self.delta = delta
        super().__init__(
            f"adjustment of {delta:+d} on {sku} would leave on_hand {on_hand + delta} "
            f"below reserved {reserved}"
        )


class Unavailable(DomainError):
    """A dependency (PostgreSQL) is unreachable; the request may be retried with the same id."""


class DeadlineExpired(DomainError):
    """The caller's deadline passed while the request waited for its batch: it was not
    applied. (A deadline that passes once the batch is in PostgreSQL ends the call
    without this error; that outcome is unknown until a retry with the same id.)"""


class Unauthenticated(DomainError):
    """The call carries no credentials the server accepts (no token, an expired one, one
    that does not verify); `reason` says which, as ErrorInfo names it."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class PermissionDenied(DomainError):
    """The caller is who it says, but may not do this: a scope it lacks, or another
    customer's data. `metadata` goes into ErrorInfo (the scope it needs, say)."""

    def __init__(self, reason: str, message: str, metadata: dict[str, str] | None = None) -> None:
        self.reason = reason
        self.metadata = dict(metadata or {})
        super().__init__(message)


class Overloaded(DomainError):
    """The server is at its bound of calls in flight: the call was refused before any
    work (nothing was applied); send it again, with the same id, after `retry_after`."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"the server is at capacity; nothing was done: retry after {retry_after:.2f} s"
        )
        self.retry_after = retry_after


class CallerLimit(DomainError):
    """The caller already holds its share of something the server bounds per caller (open
    streams, reads in PostgreSQL; for the health service, watches from one address), or
    started its share of them in the last second (`per` "a second", not "at once"):
    refused before any work (nothing was applied); send it again after `retry_after`, or
    once one of its own has ended. `resource` names what is bounded, as ErrorInfo says."""

    def __init__(
        self, resource: str, limit: int, retry_after: float, *, per: str = "at once"
    ) -> None:
        what = "already has" if per == "at once" else "already used"
        super().__init__(
            f"this caller {what} {limit} {resource.replace('_', ' ')} {per}, its share;"
            f" nothing was done: retry after {retry_after:.2f} s"
        )
        self.resource = resource
        self.limit = limit
        self.retry_after = retry_after
        self.per = per


class ShuttingDown(Unavailable):
    """The server process is shutting down and took no new work: nothing was applied;
    send the call again, with the same id (a new connection reaches a live process)."""

    def __init__(self) -> None:
        super().__init__(
            "this server process is shutting down; nothing was done: retry with the same id"
        )


class AlreadyResolved(DomainError):
    """A reconciliation exception was resolved before: the first resolution stands."""

    def __init__(self, exception_id: int, resolution: str, resolved_by: str) -> None:
        self.exception_id = exception_id
        self.resolution = resolution
        self.resolved_by = resolved_by
        super().__init__(
            f"exception {exception_id} was resolved already ({resolution} by {resolved_by});"
            " the first resolution stands"
        )
