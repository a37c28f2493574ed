"""The client's error types, and the one conversion from gRPC transport errors into them."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

# googleapis-common-protos has no py.typed marker; mypy is told to skip it (pyproject.toml),
# every value taken from these messages is converted to a plain str/int below.
from google.rpc import error_details_pb2, status_pb2
from stockcore.v1 import inventory_pb2

#: Trailing metadata key under which gRPC carries a serialised google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: PreconditionFailure violation type the server uses for a SKU that cannot cover a request.
INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"

#: ErrorInfo reason of a carrier event time before the order was created.
EVENT_BEFORE_ORDER = "EVENT_BEFORE_ORDER"


class StatusCode(enum.IntEnum):
    """gRPC status codes, numbered as on the wire."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_grpc(cls, code: grpc.StatusCode) -> StatusCode:
        """Return the member with the same name as a grpc.StatusCode."""
        return cls[code.name]


class FieldViolation(NamedTuple):
    """One invalid request field, as (field, description)."""

    field: str
    description: str


class Shortage(NamedTuple):
    """One SKU that could not cover a request (a stockcore.v1.StockShortages detail)."""

    sku: str
    available: int
    requested: int


class PreconditionViolation(NamedTuple):
    """One unmet precondition, as (type, subject, description)."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class ErrorInfo:
    """Why an error happened, as a stable machine-readable reason within a domain."""

    reason: str
    domain: str
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)


class StockcoreError(Exception):
    """A call to stockcore failed; subclasses name the codes callers commonly handle."""

    def __init__(
        self,
        code: StatusCode,
        message: str,
        *,
        precondition_violations: Iterable[PreconditionViolation] = (),
        field_violations: Iterable[FieldViolation] = (),
        error_info: ErrorInfo | None = None,
        retry_delay: float | None = None,
        stock_shortages: Iterable[Shortage] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.precondition_violations = tuple(precondition_violations)
        #: The short SKUs with their figures (a stockcore.v1.StockShortages detail).
        self.stock_shortages = tuple(stock_shortages)
        self._field_violations = tuple(field_violations)
        self.error_info = error_info
        #: Seconds the server asked the caller to wait before trying again
        #: (google.rpc.RetryInfo), when it said.
        self.retry_delay = retry_delay

    @property
    def field_violations(self) -> list[FieldViolation]:
        """Invalid request fields named by a google.rpc.BadRequest detail, in server order."""
        return list(self._field_violations)

    @property
    def shortages(self) -> dict[str, int]:
        """Available quantity of each SKU the server reported as short, by SKU."""
        return {shortage.sku: shortage.available for shortage in self.stock_shortages}


class InvalidArgument(StockcoreError):
    """The request is malformed; sending it again unchanged cannot succeed."""


class NotFound(StockcoreError):
    """A named SKU or reservation does not exist."""


class AlreadyExists(StockcoreError):
    """An idempotency id was reused with different content."""


class FailedPrecondition(StockcoreError):
    """The system is not in a state that allows the operation (e.g. commit after release)."""


class InsufficientStock(FailedPrecondition):
    """Some lines could not be held; nothing was held. See `shortages`."""


class EventBeforeOrder(FailedPrecondition):
    """RecordInTransit or RecordDelivery named a time before the order was created;
    nothing changed, and the same report is refused again."""


class Unavailable(StockcoreError):
    """The service could not be reached or could not serve; retrying with the same id is safe."""


class ResourceExhausted(StockcoreError):
    """The server is at capacity (error_info reason OVERLOADED), or this caller already
    holds its share of open streams or of reads in PostgreSQL (CALLER_LIMIT, metadata
    `resource` and `limit`), and refused the call before doing anything; send it again
    (with the same id) after `retry_delay` seconds."""


class DeadlineExceeded(StockcoreError):
    """The call's deadline passed before an answer arrived: the outcome is unknown, and a
    retry with the same id returns it."""


class Unauthenticated(StockcoreError):
    """The call carried no token the server accepts: none, an expired one (error_info
    reason TOKEN_EXPIRED: get a fresh one), or one that does not verify (TOKEN_INVALID)."""


class PermissionDenied(StockcoreError):
    """The caller may not do this: a scope it lacks (reason SCOPE_MISSING, metadata
    required_scope), or, for a customer's token, another customer's order (OTHER_CUSTOMER)
    or an order already paid (PAID_ORDER)."""


_CLASS_BY_CODE: dict[StatusCode, type[StockcoreError]] = {
    StatusCode.INVALID_ARGUMENT: InvalidArgument,
    StatusCode.NOT_FOUND: NotFound,
    StatusCode.ALREADY_EXISTS: AlreadyExists,
    StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    StatusCode.UNAVAILABLE: Unavailable,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    StatusCode.UNAUTHENTICATED: Unauthenticated,
    StatusCode.PERMISSION_DENIED: PermissionDenied,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def make_error(
    code: StatusCode,
    message: str,
    *,
    precondition_violations: Iterable[PreconditionViolation] = (),
    field_violations: Iterable[FieldViolation] = (),
    error_info: ErrorInfo | None = None,
    retry_delay: float | None = None,
    stock_shortages: Iterable[Shortage] = (),
) -> StockcoreError:
    """Build the most specific StockcoreError subclass for a code and its details."""
    violations = tuple(precondition_violations)
    shortages = tuple(stock_shortages)
    cls = _CLASS_BY_CODE.get(code, StockcoreError)
    if code is StatusCode.FAILED_PRECONDITION and (
        shortages
        or any(v.type == INSUFFICIENT_STOCK for v in violations)
        or (error_info is not None and error_info.reason == INSUFFICIENT_STOCK)
    ):
        cls = InsufficientStock
    elif (
        code is StatusCode.FAILED_PRECONDITION
        and error_info is not None
        and error_info.reason == EVENT_BEFORE_ORDER
    ):
        cls = EventBeforeOrder
    return cls(
        code,
        message,
        precondition_violations=violations,
        field_violations=field_violations,
        error_info=error_info,
        retry_delay=retry_delay,
        stock_shortages=shortages,
    )


def error_from_status(
    code: StatusCode,
    message: str,
    trailing_metadata: Iterable[tuple[str, str | bytes]],
) -> StockcoreError:
    """Build the error for a failed call from its status and trailing metadata."""
    precondition: list[PreconditionViolation] = []
    fields: list[FieldViolation] = []
    info: ErrorInfo | None = None
    retry_delay: float | None = None
    shortages: list[Shortage] = []
    for status in _rich_status(code, trailing_metadata):
        for detail in status.details:
            if detail.Is(inventory_pb2.StockShortages.DESCRIPTOR):
                short = inventory_pb2.StockShortages()
                detail.Unpack(short)
                shortages.extend(Shortage(s.sku, s.available, s.requested) for s in short.shortages)
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                precondition.extend(
                    PreconditionViolation(str(v.type), str(v.subject), str(v.description))
                    for v in failure.violations
                )
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend(
                    FieldViolation(str(v.field), str(v.description)) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
            elif info is None and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                raw = error_details_pb2.ErrorInfo()
                detail.Unpack(raw)
                info = ErrorInfo(
                    reason=str(raw.reason),
                    domain=str(raw.domain),
                    metadata={str(k): str(v) for k, v in raw.metadata.items()},
                )
    if retry_delay is None:
        retry_delay = _pushback(trailing_metadata)
    return make_error(
        code,
        message,
        precondition_violations=precondition,
        field_violations=fields,
        error_info=info,
        retry_delay=retry_delay,
        stock_shortages=shortages,
    )


def _pushback(trailing_metadata: Iterable[tuple[str, str | bytes]]) -> float | None:
    """gRPC's own retry pushback (`grpc-retry-pushback-ms`), for a refusal that carries
    no RetryInfo (a proxy's, say); a negative or unreadable value means none."""
    for key, value in trailing_metadata:
        if key == "grpc-retry-pushback-ms":
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return int(text) / 1000 if text.isdigit() else None
    return None


def from_rpc_error(error: grpc.aio.AioRpcError) -> StockcoreError:
    """Convert a failed grpc.aio call into the matching StockcoreError."""
    # grpc-stubs describes the sync API's metadata objects here; grpc.aio hands back a
    # grpc.aio.Metadata, which iterates as (key, value) pairs.
    trailing = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    return error_from_status(StatusCode.from_grpc(error.code()), error.details() or "", trailing)


def _rich_status(
    code: StatusCode, trailing_metadata: Iterable[tuple[str, str | bytes]]
) -> list[status_pb2.Status]:
    """Return the google.rpc.Status carried in the trailer, if it belongs to this status."""
    for key, value in trailing_metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            # A garbled trailer must not hide the status code, which is what callers act on.
            return []
        # A proxy may replace the status while passing the trailer through; details of
        # another status would then describe the wrong failure.
        if status.code != code.value:
            return []
        return [status]
    return []
