"""Conversion of grpc.aio errors, with google.rpc.Status details, into the client's error types."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from stockcore.v1 import inventory_pb2

from clients.errors import (
    STATUS_DETAILS_KEY,
    AlreadyExists,
    DeadlineExceeded,
    ErrorInfo,
    EventBeforeOrder,
    FailedPrecondition,
    FieldViolation,
    InsufficientStock,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Shortage,
    StatusCode,
    StockcoreError,
    Unavailable,
    from_rpc_error,
    make_error,
)

Violation = error_details_pb2.PreconditionFailure.Violation
BadField = error_details_pb2.BadRequest.FieldViolation


def _packed(*details: Message) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return packed


def _rpc_error(
    code: grpc.StatusCode,
    message: str,
    *details: Message,
    status_code: grpc.StatusCode | None = None,
    trailer: bytes | None = None,
) -> grpc.aio.AioRpcError:
    """An AioRpcError whose trailer carries a google.rpc.Status the way grpc sends it."""
    if trailer is None and details:
        status = status_pb2.Status(
            code=(status_code or code).value[0], message=message, details=_packed(*details)
        )
        trailer = status.SerializeToString()
    trailing = grpc.aio.Metadata(("x-request-id", "abc"))
    if trailer is not None:
        trailing.add(STATUS_DETAILS_KEY, trailer)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def _insufficient(*violations: tuple[str, str]) -> error_details_pb2.PreconditionFailure:
    return error_details_pb2.PreconditionFailure(
        violations=[
            Violation(type="INSUFFICIENT_STOCK", subject=sku, description=text)
            for sku, text in violations
        ]
    )


def _short(*figures: tuple[str, int, int]) -> inventory_pb2.StockShortages:
    return inventory_pb2.StockShortages(
        shortages=[
            inventory_pb2.StockShortage(sku=sku, available=available, requested=requested)
            for sku, available, requested in figures
        ]
    )


def test_short_stock_becomes_insufficient_stock_with_available_by_sku() -> None:
    failure = _insufficient(
        ("A-1", "available 3, requested 5"), ("B-2", "available 0, requested 1")
    )
    figures = _short(("A-1", 3, 5), ("B-2", 0, 1))
    error = from_rpc_error(
        _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "insufficient stock", failure, figures)
    )

    assert isinstance(error, InsufficientStock)
    assert isinstance(error, FailedPrecondition)
    assert error.code is StatusCode.FAILED_PRECONDITION
    assert error.message == "insufficient stock"
    assert error.shortages == {"A-1": 3, "B-2": 0}
    assert error.stock_shortages == (Shortage("A-1", 3, 5), Shortage("B-2", 0, 1))
    assert error.precondition_violations == (
        PreconditionViolation("INSUFFICIENT_STOCK", "A-1", "available 3, requested 5"),
        PreconditionViolation("INSUFFICIENT_STOCK", "B-2", "available 0, requested 1"),
    )


def test_error_info_reason_alone_marks_insufficient_stock() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="INSUFFICIENT_STOCK", domain="stockcore", metadata={"sku": "A-1"}
    )
    error = from_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", info))

    assert isinstance(error, InsufficientStock)
    assert error.error_info == ErrorInfo("INSUFFICIENT_STOCK", "stockcore", {"sku": "A-1"})
    assert error.shortages == {}


def test_other_failed_precondition_is_not_insufficient_stock() -> None:
    failure = error_details_pb2.PreconditionFailure(
        violations=[Violation(type="RESERVATION_STATE", subject="r-1", description="RELEASED")]
    )
    error = from_rpc_error(
        _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "commit after release", failure)
    )

    assert type(error) is FailedPrecondition
    assert error.shortages == {}
    assert error.precondition_violations[0].subject == "r-1"


def test_a_carrier_time_before_the_order_is_its_own_failed_precondition() -> None:
    info = error_details_pb2.ErrorInfo(reason="EVENT_BEFORE_ORDER", domain="stockcore.v1")
    error = from_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "too early", info))

    assert isinstance(error, EventBeforeOrder) and isinstance(error, FailedPrecondition)
    assert not isinstance(error, InsufficientStock)


def test_figures_come_from_the_typed_detail_never_from_description_text() -> None:
    failure = _insufficient(("A-1", "available 3, requested 5"), ("B-2", "not enough"))
    error = from_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", failure))

    assert isinstance(error, InsufficientStock)
    assert error.shortages == {}
    assert [v.subject for v in error.precondition_violations] == ["A-1", "B-2"]


def test_the_typed_detail_alone_marks_insufficient_stock() -> None:
    error = from_rpc_error(
        _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", _short(("A-1", 1, 4)))
    )

    assert isinstance(error, InsufficientStock)
    assert error.shortages == {"A-1": 1}


def test_bad_request_field_violations_are_listed_in_server_order() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            BadField(field="lines[0].quantity", description="must be 1 to 1000000"),
            BadField(field="ttl", description="must be 1 s to 24 h"),
        ]
    )
    error = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad request", bad))

    assert isinstance(error, InvalidArgument)
    assert error.field_violations == [
        ("lines[0].quantity", "must be 1 to 1000000"),
        ("ttl", "must be 1 s to 24 h"),
    ]
    assert error.field_violations[1] == FieldViolation(
        field="ttl", description="must be 1 s to 24 h"
    )


def test_all_detail_kinds_in_one_status_are_all_read() -> None:
    error = from_rpc_error(
        _rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "short",
            _insufficient(("A-1", "available 1, requested 2")),
            _short(("A-1", 1, 2)),
            error_details_pb2.BadRequest(field_violations=[BadField(field="f", description="d")]),
            error_details_pb2.ErrorInfo(reason="INSUFFICIENT_STOCK", domain="stockcore"),
            error_details_pb2.RetryInfo(),
        )
    )

    assert error.shortages == {"A-1": 1}
    assert error.field_violations == [("f", "d")]
    assert error.error_info is not None
    assert error.error_info.domain == "stockcore"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_each_handled_code_maps_to_its_class_without_details(
    code: grpc.StatusCode, cls: type[StockcoreError]
) -> None:
    error = from_rpc_error(_rpc_error(code, "went wrong"))

    assert type(error) is cls
    assert error.code.name == code.name
    assert error.message == "went wrong"
    assert error.precondition_violations == ()
    assert error.field_violations == []
    assert error.error_info is None


def test_other_codes_become_the_base_error_with_their_code() -> None:
    error = from_rpc_error(_rpc_error(grpc.StatusCode.INTERNAL, "boom"))

    assert type(error) is StockcoreError
    assert error.code is StatusCode.INTERNAL
    assert str(error) == "INTERNAL: boom"


def test_missing_message_and_metadata_give_empty_message() -> None:
    error = from_rpc_error(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None))

    assert isinstance(error, Unavailable)
    assert error.message == ""


def test_details_of_a_different_status_code_are_ignored() -> None:
    failure = _insufficient(("A-1", "available 3, requested 5"))
    error = from_rpc_error(
        _rpc_error(
            grpc.StatusCode.UNAVAILABLE,
            "proxy: upstream gone",
            failure,
            status_code=grpc.StatusCode.FAILED_PRECONDITION,
        )
    )

    assert type(error) is Unavailable
    assert error.shortages == {}


def test_garbled_details_trailer_keeps_code_and_message() -> None:
    error = from_rpc_error(
        _rpc_error(grpc.StatusCode.NOT_FOUND, "unknown sku: A-1", trailer=b"\xff\xff\xff")
    )

    assert type(error) is NotFound
    assert error.message == "unknown sku: A-1"
    assert error.precondition_violations == ()


def test_status_code_mirrors_every_grpc_code_by_name_and_number() -> None:
    for code in grpc.StatusCode:
        mirrored = StatusCode.from_grpc(code)
        assert mirrored.name == code.name
        assert mirrored.value == code.value[0]
    assert len(StatusCode) == len(grpc.StatusCode)


def test_errors_built_by_hand_pick_the_same_classes() -> None:
    error = make_error(
        StatusCode.FAILED_PRECONDITION,
        "short",
        stock_shortages=[Shortage("A-1", 2, 9)],
    )

    assert isinstance(error, InsufficientStock)
    assert error.shortages == {"A-1": 2}


@pytest.mark.parametrize(("value", "delay"), [("250", 0.25), (b"1200", 1.2), ("-1", None)])
def test_a_refusal_without_retry_info_takes_grpcs_retry_pushback(
    value: str | bytes, delay: float | None
) -> None:
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-retry-pushback-ms", value)),
        details="busy",
    )

    assert from_rpc_error(refused).retry_delay == delay


def test_retry_info_wins_over_the_pushback() -> None:
    error = _rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "busy",
        error_details_pb2.RetryInfo(retry_delay={"nanos": 300_000_000}),
    )
    error.trailing_metadata().add("grpc-retry-pushback-ms", "5000")

    assert from_rpc_error(error).retry_delay == 0.3
