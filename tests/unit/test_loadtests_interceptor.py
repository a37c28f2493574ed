"""The Locust reporting interceptor: names, deadlines, caller metadata, expected rejections."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from stockcore.v1 import inventory_pb2 as pb

from loadtests.locust.interceptor import (
    CALLER_METADATA_KEY,
    CallDetails,
    GrpcStatusError,
    LocustReporter,
    RejectionPolicy,
    rpc_name,
)

_RESERVE = "/stockcore.v1.InventoryService/Reserve"
_SOLD_OUT = RejectionPolicy(
    {"InventoryService/Reserve": frozenset({grpc.StatusCode.FAILED_PRECONDITION})}
)


class _Outcome:
    def __init__(self, code: grpc.StatusCode, response: Any = None) -> None:
        self._code = code
        self._response = response

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "why"

    def result(self) -> Any:
        return self._response


class _Clock:
    def __init__(self, step: float) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _call(
    code: grpc.StatusCode,
    policy: RejectionPolicy = _SOLD_OUT,
    timeout: float | None = None,
    metadata: Any = None,
) -> tuple[dict[str, Any], CallDetails, Any]:
    reports: list[dict[str, Any]] = []
    sent: list[CallDetails] = []
    response = pb.ReserveResponse(reservation=pb.Reservation(reservation_id="r1"))
    outcome = _Outcome(code, response if code is grpc.StatusCode.OK else None)

    def continuation(details: CallDetails, request: Any) -> _Outcome:
        sent.append(details)
        return outcome

    reporter = LocustReporter(
        lambda **kw: reports.append(kw),
        policy,
        caller="tester",
        deadline_s=3.0,
        clock=_Clock(0.0125),
        wall_clock=lambda: 1000.0,
    )
    details = CallDetails(_RESERVE, timeout, metadata, None, None, None)
    returned = reporter.intercept_unary_unary(continuation, details, pb.ReserveRequest())
    assert returned is outcome
    (report,) = reports
    return report, sent[0], response


def test_rpc_name_drops_the_package() -> None:
    assert rpc_name(_RESERVE) == "InventoryService/Reserve"
    assert rpc_name(b"/stockcore.v1.OrderService/CreateOrder") == "OrderService/CreateOrder"


def test_ok_call_is_reported_by_rpc_name_with_time_and_size() -> None:
    report, _, response = _call(grpc.StatusCode.OK)

    assert report["name"] == "InventoryService/Reserve"
    assert report["request_type"] == "grpc"
    assert report["response_time"] == pytest.approx(12.5)
    assert report["response_length"] == response.ByteSize()
    assert report["exception"] is None
    assert report["start_time"] == 1000.0
    assert report["context"] == {"code": "OK"}


def test_unexpected_status_is_a_failure_named_by_its_code() -> None:
    report, _, _ = _call(grpc.StatusCode.UNAVAILABLE)

    assert report["name"] == "InventoryService/Reserve"
    assert isinstance(report["exception"], GrpcStatusError)
    assert repr(report["exception"]) == "UNAVAILABLE"
    assert report["context"] == {"code": "UNAVAILABLE"}


def test_expected_rejection_is_reported_under_a_suffixed_name_not_as_a_failure() -> None:
    report, _, _ = _call(grpc.StatusCode.FAILED_PRECONDITION)

    assert report["name"] == "InventoryService/Reserve [FAILED_PRECONDITION]"
    assert report["exception"] is None


def test_rejection_of_another_rpc_is_still_a_failure() -> None:
    policy = RejectionPolicy(
        {"InventoryService/Commit": frozenset({grpc.StatusCode.FAILED_PRECONDITION})}
    )

    report, _, _ = _call(grpc.StatusCode.FAILED_PRECONDITION, policy)

    assert repr(report["exception"]) == "FAILED_PRECONDITION"


def test_a_call_without_deadline_gets_the_default_and_one_with_keeps_its_own() -> None:
    _, sent, _ = _call(grpc.StatusCode.OK)
    assert sent.timeout == 3.0

    _, sent, _ = _call(grpc.StatusCode.OK, timeout=0.5)
    assert sent.timeout == 0.5


def test_caller_metadata_is_added_unless_the_call_names_one() -> None:
    _, sent, _ = _call(grpc.StatusCode.OK, metadata=[("x-request-id", "r")])
    assert (CALLER_METADATA_KEY, "tester") in sent.metadata
    assert ("x-request-id", "r") in sent.metadata

    _, sent, _ = _call(grpc.StatusCode.OK, metadata=[(CALLER_METADATA_KEY, "someone")])
    assert [v for k, v in sent.metadata if k == CALLER_METADATA_KEY] == ["someone"]
