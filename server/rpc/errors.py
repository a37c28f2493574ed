"""The one table from domain errors to gRPC status codes, with google.rpc details."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from stockcore.v1 import inventory_pb2

from server.domain.errors import (
    AlreadyExists,
    AlreadyResolved,
    CallerLimit,
    DeadlineExpired,
    DomainError,
    EventBeforeOrder,
    IllegalTransition,
    InsufficientStock,
    InvalidArgument,
    LineRefundExceeded,
    LinesDiffer,
    NoSuchLine,
    NotFound,
    NotRefundable,
    Overloaded,
    PaymentMismatch,
    PermissionDenied,
    ReservationFull,
    ShuttingDown,
    StockFloorViolation,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "stockcore.v1"

STATUS_OF: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InsufficientStock: grpc.StatusCode.FAILED_PRECONDITION,
    IllegalTransition: grpc.StatusCode.FAILED_PRECONDITION,
    StockFloorViolation: grpc.StatusCode.FAILED_PRECONDITION,
    PaymentMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    EventBeforeOrder: grpc.StatusCode.FAILED_PRECONDITION,
    ReservationFull: grpc.StatusCode.FAILED_PRECONDITION,
    LinesDiffer: grpc.StatusCode.FAILED_PRECONDITION,
    NotRefundable: grpc.StatusCode.FAILED_PRECONDITION,
    LineRefundExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyResolved: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CallerLimit: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code_for(exc: DomainError) -> grpc.StatusCode:
    """The gRPC code of a domain error (by type, most specific first)."""
    for kind in type(exc).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


# ErrorInfo.reason values are part of the API: callers may match on them.
_REASONS: dict[type[DomainError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    NoSuchLine: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    Unavailable: "UNAVAILABLE",
    DeadlineExpired: "DEADLINE_EXPIRED",
    Overloaded: "OVERLOADED",
    ShuttingDown: "SHUTTING_DOWN",
    CallerLimit: "CALLER_LIMIT",
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _precondition(*violations: tuple[str, str, str]) -> any_pb2.Any:
    """A google.rpc.PreconditionFailure of (type, subject, description) violations."""
    return _pack(
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=kind, subject=subject, description=description
                )
                for kind, subject, description in violations
            ]
        )
    )


def _retry_info(seconds: float) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return _pack(error_details_pb2.RetryInfo(retry_delay=delay))


def _details(exc: DomainError) -> list[any_pb2.Any]:
    reason = _REASONS.get(type(exc), "ERROR")
    details: list[any_pb2.Any] = []
    metadata: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        reason = exc.reason
    elif isinstance(exc, PermissionDenied):
        reason = exc.reason
        metadata = exc.metadata
    elif isinstance(exc, InvalidArgument):
        if len(exc.violations) > len(exc.listed):
            metadata = {"violations": str(len(exc.violations)), "listed": str(len(exc.listed))}
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.listed
                    ]
                )
            )
        )
    elif isinstance(exc, InsufficientStock):
        reason = "INSUFFICIENT_STOCK"
        details.append(
            _precondition(
                *(
                    (
                        "INSUFFICIENT_STOCK",
                        s.sku,
                        f"available {s.available}, requested {s.requested}",
                    )
                    for s in exc.shortages
                )
            )
        )
        details.append(
            _pack(
                inventory_pb2.StockShortages(
                    shortages=[
                        inventory_pb2.StockShortage(
                            sku=s.sku, available=s.available, requested=s.requested
                        )
                        for s in exc.shortages
                    ]
                )
            )
        )
    elif isinstance(exc, IllegalTransition):
        reason = "ILLEGAL_TRANSITION"
        allowed = f"; allowed next: {', '.join(exc.allowed)}" if exc.allowed else ""
        details.append(_precondition(("STATUS", exc.subject, f"status is {exc.current}{allowed}")))
    elif isinstance(exc, StockFloorViolation):
        reason = "STOCK_FLOOR"
        floor = f"on_hand {exc.on_hand}, reserved {exc.reserved}, delta {exc.delta}"
        details.append(_precondition(("STOCK_FLOOR", exc.sku, floor)))
    elif isinstance(exc, PaymentMismatch):
        reason = "PAYMENT_MISMATCH"
        paid = f"order total {exc.expected}, paid {exc.paid}"
        details.append(_precondition(("PAYMENT_MISMATCH", exc.order_id, paid)))
    elif isinstance(exc, EventBeforeOrder):
        reason = "EVENT_BEFORE_ORDER"
        when = f"event_time {exc.event_time} is before the order's create_time {exc.created_at}"
        details.append(_precondition(("EVENT_TIME", exc.order_id, when)))
    elif isinstance(exc, ReservationFull):
        reason = "RESERVATION_FULL"
        full = f"holds {exc.limit} lines, the most it may"
        details.append(_precondition(("RESERVATION_FULL", exc.reservation_id, full)))
    elif isinstance(exc, LinesDiffer):
        reason = "RESERVATION_LINES"
        lines = f"holds {exc.held or 'no line'}; the order lists {exc.requested}"
        details.append(_precondition(("RESERVATION_LINES", exc.reservation_id, lines)))
    elif isinstance(exc, NotRefundable):
        reason = "NOT_REFUNDABLE"
        details.append(_precondition((exc.check, exc.subject, exc.description)))
    elif isinstance(exc, LineRefundExceeded):
        reason = "LINE_REFUND_EXCEEDED"
        metadata = {"bought": str(exc.bought), "refunded": str(exc.refunded), "left": str(exc.left)}
        left = f"bought {exc.bought}, refunded {exc.refunded} already: at most {exc.left} more"
        details.append(_precondition(("LINE_REFUND", exc.sku, left)))
    elif isinstance(exc, AlreadyResolved):
        reason = "ALREADY_RESOLVED"
        how = f"resolved as {exc.resolution} by {exc.resolved_by}"
        details.append(_precondition(("RESOLVED", f"exception {exc.exception_id}", how)))
    elif isinstance(exc, AlreadyExists) and exc.owner:
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=exc.kind, resource_name=exc.name, owner=exc.owner
                )
            )
        )
    elif isinstance(exc, NoSuchLine):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=exc.kind,
                    resource_name=exc.names[0],
                    owner=f"order {exc.order_id}",
                )
            )
        )
    elif isinstance(exc, NotFound):
        details.extend(
            _pack(error_details_pb2.ResourceInfo(resource_type=exc.kind, resource_name=name))
            for name in exc.names
        )
    elif isinstance(exc, ShuttingDown):
        # Long enough for this process to be gone, and its callers' next attempts to
        # open a connection to a live one.
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay={"nanos": 500_000_000})))
    elif isinstance(exc, Unavailable):
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay={"nanos": 100_000_000})))
    elif isinstance(exc, Overloaded):
        details.append(_retry_info(exc.retry_after))
    elif isinstance(exc, CallerLimit):
        metadata = {"resource": exc.resource, "limit": str(exc.limit), "per": exc.per}
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=exc.resource,
                            description=f"at most {exc.limit} per caller {exc.per}",
                        )
                    ]
                )
            )
        )
        details.append(_retry_info(exc.retry_after))
    details.insert(
        0, _pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    )
    return details


def to_status(exc: DomainError) -> grpc.Status:
    """A grpc.Status carrying a google.rpc.Status with details, for abort_with_status."""
    code = status_code_for(exc)
    message = str(exc)
    rich = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=_details(exc)
    )
    status = rpc_status.to_status(rich)
    if isinstance(exc, Overloaded | CallerLimit):
        # The delay also as gRPC's own retry pushback, which clients with a retry policy
        # in their service config honour without reading the details.
        pushback = ("grpc-retry-pushback-ms", str(max(0, round(exc.retry_after * 1000))))
        return _WithMetadata(status.code, status.details, (*status.trailing_metadata, pushback))
    return status


def plain_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    """A status of `code` and `message` alone, without details."""
    return _WithMetadata(code, message, ())


class _WithMetadata(grpc.Status):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[Any, ...]
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata
