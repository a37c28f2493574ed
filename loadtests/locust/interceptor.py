"""A client interceptor that reports every unary call to Locust, with a deadline on each.

It knows nothing of Locust itself: it is handed the function to call per completed request
(Locust's `events.request.fire`), so it can be tested without gevent.

A call is reported under its RPC name, "InventoryService/Reserve". A non-OK status is reported
as a failure whose exception is a `GrpcStatusError`, which Locust lists by the status code
name alone ("DEADLINE_EXCEEDED"). Expected business rejections (sold out is
FAILED_PRECONDITION) are not failures: a `RejectionPolicy` says which codes of which RPCs are
expected, and they are reported under a suffixed name ("OrderService/CreateOrder
[FAILED_PRECONDITION]").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc

CALLER_METADATA_KEY = "stockcore-caller"
"""The metadata key that names the caller; the server records it on every stock movement."""

DEFAULT_DEADLINE_S = 5.0
"""The deadline given to a call that was made without one."""


class GrpcStatusError(Exception):
    """A call ended with a status code the scenario did not expect."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(code.name, details)
        self.code = code
        self.details = details or ""

    def __repr__(self) -> str:
        # Locust keys and lists failures by repr(): the code name keeps them grouped by status.
        return self.code.name

    __str__ = __repr__


@dataclass(frozen=True)
class RejectionPolicy:
    """Which status codes of which RPCs are business outcomes rather than failures."""

    expected: Mapping[str, frozenset[grpc.StatusCode]] = field(default_factory=dict)

    def is_expected(self, name: str, code: grpc.StatusCode) -> bool:
        """Whether `code` from RPC `name` is an expected rejection."""
        return code in self.expected.get(name, frozenset())

    @staticmethod
    def report_name(name: str, code: grpc.StatusCode) -> str:
        """The request name an expected rejection is reported under: the RPC's, with the
        code appended in brackets, so Locust counts it apart from the calls that went through."""
        return f"{name} [{code.name}]"


def rpc_name(method: str | bytes) -> str:
    """ "/stockcore.v1.InventoryService/Reserve" -> "InventoryService/Reserve"."""
    text = method.decode() if isinstance(method, bytes) else method
    service, _, rpc = text.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{rpc}"


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class CallDetails(_CallDetails, grpc.ClientCallDetails):
    """Concrete call details: grpc.ClientCallDetails is abstract."""


RequestReporter = Callable[..., None]
"""Called once per completed call with Locust's request-event keyword arguments."""


class LocustReporter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Times each unary call, gives it a deadline and the caller metadata, and reports it."""

    def __init__(
        self,
        report: RequestReporter,
        policy: RejectionPolicy,
        *,
        caller: str,
        deadline_s: float = DEFAULT_DEADLINE_S,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._report = report
        self._policy = policy
        self._caller = caller
        self._deadline_s = deadline_s
        self._clock = clock
        self._wall_clock = wall_clock

    def _details(self, details: grpc.ClientCallDetails) -> CallDetails:
        metadata = list(details.metadata or ())
        if not any(key == CALLER_METADATA_KEY for key, _ in metadata):
            metadata.append((CALLER_METADATA_KEY, self._caller))
        return CallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._deadline_s,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Make the call, wait for its outcome, report it, and hand the outcome back unchanged."""
        name = rpc_name(client_call_details.method)
        started_at = self._wall_clock()
        began = self._clock()
        outcome = continuation(self._details(client_call_details), request)
        code = outcome.code()  # blocks this greenlet (not the process) until the call ends
        elapsed_ms = (self._clock() - began) * 1000.0
        exception: Exception | None = None
        length = 0
        if code is grpc.StatusCode.OK:
            length = outcome.result().ByteSize()
        elif self._policy.is_expected(name, code):
            name = self._policy.report_name(name, code)
        else:
            exception = GrpcStatusError(code, outcome.details())
        self._report(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={"code": code.name},
            start_time=started_at,
            response=None,
            url=None,
        )
        return outcome
