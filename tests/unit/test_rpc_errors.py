"""The table from domain errors to gRPC status codes, and the google.rpc details sent."""

from __future__ import annotations

import re
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.domain.errors import (
    AlreadyExists,
    AlreadyResolved,
    CallerLimit,
    DeadlineExpired,
    DomainError,
    EventBeforeOrder,
    FieldViolation,
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
    Shortage,
    ShuttingDown,
    StockFloorViolation,
    Unauthenticated,
    Unavailable,
)
from server.rpc.errors import DOMAIN, STATUS_OF, status_code_for, to_status

DETAILS_KEY = "grpc-status-details-bin"
M = TypeVar("M", bound=Message)

EXAMPLES: list[tuple[DomainError, grpc.StatusCode]] = [
    (
        InvalidArgument([FieldViolation("sku", "must not be empty")]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (NotFound("sku", ["A"]), grpc.StatusCode.NOT_FOUND),
    (AlreadyExists("reservation", "r-1"), grpc.StatusCode.ALREADY_EXISTS),
    (InsufficientStock([Shortage("A", 5, 2)]), grpc.StatusCode.FAILED_PRECONDITION),
    (
        IllegalTransition("r-1", "RELEASED", "COMMITTED", "cannot commit"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (StockFloorViolation("A", 5, 4, -3), grpc.StatusCode.FAILED_PRECONDITION),
    (PaymentMismatch("o-1", "500 EUR", "400 EUR"), grpc.StatusCode.FAILED_PRECONDITION),
    (
        EventBeforeOrder("o-1", "1999-12-31T23:00:00+00:00", "2030-01-01T00:00:00+00:00"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (ReservationFull("cart-1", 100), grpc.StatusCode.FAILED_PRECONDITION),
    (LinesDiffer("cart-1", "A x 2", "A x 3"), grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyResolved(7, "ACCEPTED", "finance"), grpc.StatusCode.FAILED_PRECONDITION),
    (
        NotRefundable("STATUS", "o-1", "status is EXPIRED: nothing was paid", "not paid"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (LineRefundExceeded("o-1", "A", 3, 2, 2), grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable("database unreachable"), grpc.StatusCode.UNAVAILABLE),
    (DeadlineExpired("too late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unauthenticated("TOKEN_EXPIRED", "the token has expired"), grpc.StatusCode.UNAUTHENTICATED),
    (
        PermissionDenied("SCOPE_MISSING", "needs a scope", {"required_scope": "stock:adjust"}),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (Overloaded(0.25), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CallerLimit("streams", 3, 1.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def rich_status(exc: DomainError) -> tuple[grpc.Status, status_pb2.Status]:
    status = to_status(exc)
    metadata = dict(status.trailing_metadata)
    # A refusal also carries gRPC's own retry pushback; nothing else rides beside the details.
    assert set(metadata) - {"grpc-retry-pushback-ms"} == {DETAILS_KEY}
    assert ("grpc-retry-pushback-ms" in metadata) is isinstance(exc, Overloaded | CallerLimit)
    return status, status_pb2.Status.FromString(metadata[DETAILS_KEY])


def unpack(rich: status_pb2.Status, kind: type[M]) -> list[M]:
    found = []
    for detail in rich.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            assert detail.Unpack(message)
            found.append(message)
    return found


def error_info(rich: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    infos = unpack(rich, error_details_pb2.ErrorInfo)
    assert len(infos) == 1
    return infos[0]


@pytest.mark.parametrize(("exc", "code"), EXAMPLES, ids=[type(exc).__name__ for exc, _ in EXAMPLES])
def test_domain_error_maps_to_its_status_code(exc: DomainError, code: grpc.StatusCode) -> None:
    assert status_code_for(exc) is code


def test_every_domain_error_type_has_a_status_code() -> None:
    assert set(STATUS_OF) == {type(exc) for exc, _ in EXAMPLES}


def test_subclass_of_a_domain_error_takes_its_parents_code() -> None:
    class ReservationNotFound(NotFound):
        pass

    assert status_code_for(ReservationNotFound("reservation", ["r-1"])) is (
        grpc.StatusCode.NOT_FOUND
    )


def test_unmapped_domain_error_is_internal() -> None:
    assert status_code_for(DomainError("surprise")) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("exc", "code"), EXAMPLES, ids=[type(exc).__name__ for exc, _ in EXAMPLES])
def test_status_carries_code_message_and_rich_status(
    exc: DomainError, code: grpc.StatusCode
) -> None:
    status, rich = rich_status(exc)

    assert status.code is code
    assert status.details == str(exc)
    assert rich.code == getattr(code_pb2, code.name)
    assert rich.code == code.value[0]
    assert rich.message == str(exc)


@pytest.mark.parametrize(("exc", "code"), EXAMPLES, ids=[type(exc).__name__ for exc, _ in EXAMPLES])
def test_status_details_start_with_error_info_in_the_stockcore_domain(
    exc: DomainError, code: grpc.StatusCode
) -> None:
    _, rich = rich_status(exc)

    first = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(first)
    assert first.domain == DOMAIN == "stockcore.v1"
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", first.reason)


def test_invalid_argument_lists_every_field_violation_as_bad_request() -> None:
    exc = InvalidArgument(
        [
            FieldViolation("reservation_id", "must not be empty"),
            FieldViolation("lines[1].quantity", "must be 1 to 1000000, got 0"),
        ]
    )

    _, rich = rich_status(exc)

    (bad_request,) = unpack(rich, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("reservation_id", "must not be empty"),
        ("lines[1].quantity", "must be 1 to 1000000, got 0"),
    ]


def test_insufficient_stock_lists_one_precondition_violation_per_short_sku() -> None:
    exc = InsufficientStock([Shortage("A-1", requested=5, available=2), Shortage("B-2", 9, 0)])

    _, rich = rich_status(exc)

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("INSUFFICIENT_STOCK", "A-1", "available 2, requested 5"),
        ("INSUFFICIENT_STOCK", "B-2", "available 0, requested 9"),
    ]
    assert error_info(rich).reason == "INSUFFICIENT_STOCK"


def test_illegal_transition_names_the_reservation_and_its_status() -> None:
    exc = IllegalTransition("r-1", "RELEASED", "COMMITTED", "cannot commit 'r-1': it is RELEASED")

    _, rich = rich_status(exc)

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("STATUS", "r-1", "status is RELEASED"),
    ]
    assert error_info(rich).reason == "ILLEGAL_TRANSITION"


def test_illegal_order_transition_also_names_the_allowed_next_statuses() -> None:
    exc = IllegalTransition("o-1", "PAID", "EXPIRED", "cannot", ["SHIPPED", "CANCELLED"])

    _, rich = rich_status(exc)

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.subject, v.description) for v in failure.violations] == [
        ("o-1", "status is PAID; allowed next: SHIPPED, CANCELLED"),
    ]


def test_payment_mismatch_names_the_order_and_both_amounts() -> None:
    _, rich = rich_status(PaymentMismatch("o-1", "500 EUR", "400 EUR"))

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("PAYMENT_MISMATCH", "o-1", "order total 500 EUR, paid 400 EUR"),
    ]
    assert error_info(rich).reason == "PAYMENT_MISMATCH"


def test_an_event_before_the_order_names_the_order_and_both_times() -> None:
    _, rich = rich_status(
        EventBeforeOrder("o-1", "2029-12-31T23:00:00+00:00", "2030-01-01T00:00:00+00:00")
    )

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        (
            "EVENT_TIME",
            "o-1",
            "event_time 2029-12-31T23:00:00+00:00 is before the order's"
            " create_time 2030-01-01T00:00:00+00:00",
        ),
    ]
    assert error_info(rich).reason == "EVENT_BEFORE_ORDER"


def test_stock_floor_violation_names_the_sku_and_its_levels() -> None:
    _, rich = rich_status(StockFloorViolation("A-1", on_hand=5, reserved=4, delta=-3))

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("STOCK_FLOOR", "A-1", "on_hand 5, reserved 4, delta -3"),
    ]
    assert error_info(rich).reason == "STOCK_FLOOR"


def test_not_found_names_each_missing_resource() -> None:
    _, rich = rich_status(NotFound("sku", ["A-1", "B-2"]))

    infos = unpack(rich, error_details_pb2.ResourceInfo)
    assert [(i.resource_type, i.resource_name) for i in infos] == [
        ("sku", "A-1"),
        ("sku", "B-2"),
    ]


def test_a_line_the_order_lacks_is_not_found_and_names_its_order() -> None:
    exc = NoSuchLine("o-1", "C", ["A", "B"])
    status, rich = rich_status(exc)

    assert status.code is grpc.StatusCode.NOT_FOUND
    (info,) = unpack(rich, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name, info.owner) == ("order line", "C", "order o-1")
    assert error_info(rich).reason == "NOT_FOUND"
    assert "its lines: A, B" in str(exc)


def test_an_order_not_refundable_names_what_stands_in_the_way() -> None:
    _, rich = rich_status(
        NotRefundable("PRICE", "GIFT", "the line cost nothing", "line 'GIFT' cost nothing")
    )

    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("PRICE", "GIFT", "the line cost nothing"),
    ]
    assert error_info(rich).reason == "NOT_REFUNDABLE"


def test_a_refund_beyond_the_line_gives_the_figures_as_numbers() -> None:
    _, rich = rich_status(LineRefundExceeded("o-1", "A", bought=3, refunded=2, asked=2))

    info = error_info(rich)
    assert info.reason == "LINE_REFUND_EXCEEDED"
    assert dict(info.metadata) == {"bought": "3", "refunded": "2", "left": "1"}
    (failure,) = unpack(rich, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("LINE_REFUND", "A", "bought 3, refunded 2 already: at most 1 more"),
    ]


def test_unavailable_suggests_a_retry_delay() -> None:
    _, rich = rich_status(Unavailable("database unreachable"))

    (retry,) = unpack(rich, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 100


def test_errors_without_structured_details_carry_only_error_info() -> None:
    for exc in (AlreadyExists("reservation", "r-1"), DeadlineExpired("too late")):
        _, rich = rich_status(exc)

        assert len(rich.details) == 1
        assert error_info(rich).domain == DOMAIN


def test_each_error_type_has_its_own_error_info_reason() -> None:
    reasons = {error_info(rich_status(exc)[1]).reason for exc, _ in EXAMPLES}

    assert len(reasons) == len(EXAMPLES)


def test_unmapped_domain_error_becomes_an_internal_status() -> None:
    status, rich = rich_status(DomainError("surprise"))

    assert status.code is grpc.StatusCode.INTERNAL
    assert rich.code == code_pb2.INTERNAL
    assert error_info(rich).domain == DOMAIN


def test_refusals_name_their_reason_and_what_was_missing_in_error_info() -> None:
    _, unauthenticated = rich_status(Unauthenticated("TOKEN_EXPIRED", "expired"))
    _, denied = rich_status(
        PermissionDenied("SCOPE_MISSING", "needs a scope", {"required_scope": "stock:adjust"})
    )

    assert error_info(unauthenticated).reason == "TOKEN_EXPIRED"
    info = error_info(denied)
    assert (info.reason, dict(info.metadata)) == (
        "SCOPE_MISSING",
        {"required_scope": "stock:adjust"},
    )


def test_a_refusal_at_capacity_says_when_to_come_back() -> None:
    status, rich = rich_status(Overloaded(0.25))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    (retry,) = unpack(rich, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 250
    assert dict(status.trailing_metadata)["grpc-retry-pushback-ms"] == "250"
    (info,) = unpack(rich, error_details_pb2.ErrorInfo)
    assert info.reason == "OVERLOADED"


def test_a_caller_past_its_share_is_told_what_is_bounded_and_when_to_come_back() -> None:
    status, rich = rich_status(CallerLimit("database_reads", 4, 0.2))

    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(rich)
    assert (info.reason, dict(info.metadata)) == (
        "CALLER_LIMIT",
        {"resource": "database_reads", "limit": "4", "per": "at once"},
    )
    (quota,) = unpack(rich, error_details_pb2.QuotaFailure)
    assert [v.subject for v in quota.violations] == ["database_reads"]
    (retry,) = unpack(rich, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 200
    assert dict(status.trailing_metadata)["grpc-retry-pushback-ms"] == "200"
    assert "4 database reads" in rich.message


def test_a_caller_past_its_rate_is_told_the_rate_and_when_to_come_back() -> None:
    status, rich = rich_status(CallerLimit("database_rows", 400, 0.05, per="a second"))

    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(rich)
    assert dict(info.metadata) == {"resource": "database_rows", "limit": "400", "per": "a second"}
    (quota,) = unpack(rich, error_details_pb2.QuotaFailure)
    assert [v.description for v in quota.violations] == ["at most 400 per caller a second"]
    assert dict(status.trailing_metadata)["grpc-retry-pushback-ms"] == "50"
    assert "already used 400 database rows a second" in rich.message


def test_a_refusal_while_shutting_down_is_unavailable_with_a_retry_delay() -> None:
    status, rich = rich_status(ShuttingDown())
    assert status.code is grpc.StatusCode.UNAVAILABLE
    (retry,) = unpack(rich, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 500
    (info,) = unpack(rich, error_details_pb2.ErrorInfo)
    assert info.reason == "SHUTTING_DOWN"


def test_a_second_resolution_names_the_first_in_its_details() -> None:
    status = to_status(AlreadyResolved(7, "ACCEPTED", "finance"))
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info, failure = error_details_pb2.ErrorInfo(), error_details_pb2.PreconditionFailure()
    assert rich.details[0].Unpack(info) and rich.details[1].Unpack(failure)
    assert (info.reason, info.domain) == ("ALREADY_RESOLVED", DOMAIN)
    [violation] = failure.violations
    assert (violation.type, violation.subject) == ("RESOLVED", "exception 7")
    assert violation.description == "resolved as ACCEPTED by finance"
