"""Typed async client of stockcore.v1.ReconciliationService, with deadlines and safe
retries: read what the reconciler found, resolve its exceptions, read a daily close.

Its StatementLine, ReconciliationException and DailyClose are the client-side view of the
contract's messages (times as timezone-aware datetimes, amounts not stated as None); the
verdicts and resolutions are the contract's own enums."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

import grpc.aio
from stockcore.v1 import reconciliation_pb2 as pb
from stockcore.v1 import reconciliation_pb2_grpc as pb_grpc

from clients.credentials import Credentials
from clients.inventory import (
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_RETRY_POLICY,
    ChannelClient,
    RetryPolicy,
    call_with_retry,
    check_timeout,
    to_datetime,
)
from clients.orders import REQUEST_ID_METADATA_KEY

_T = TypeVar("_T")
_V = TypeVar("_V")
_Request = TypeVar("_Request")

#: What the reconciler found: the contract's enum (`Verdict.VERDICT_MATCHED`).
Verdict = pb.Verdict
#: How an exception was resolved: the contract's enum.
Resolution = pb.Resolution
#: What a line is about: a charge or a refund.
SubjectKind = pb.SubjectKind


def _short_name(name: Callable[[_V], str], value: _V, prefix: str) -> str:
    try:
        return name(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def verdict_name(verdict: Verdict.ValueType) -> str:
    """A verdict as people read it (`AMOUNT_DIFFERS`)."""
    return _short_name(Verdict.Name, verdict, "VERDICT_")


def resolution_name(resolution: Resolution.ValueType) -> str:
    """A resolution as people read it (`WRITTEN_OFF`); `OPEN` for none."""
    if resolution == Resolution.RESOLUTION_UNSPECIFIED:
        return "OPEN"
    return _short_name(Resolution.Name, resolution, "RESOLUTION_")


def subject_kind_name(kind: SubjectKind.ValueType) -> str:
    """A subject kind as people read it (`CHARGE`)."""
    return _short_name(SubjectKind.Name, kind, "SUBJECT_KIND_")


@dataclass(frozen=True)
class Amount:
    """Money in minor units of a currency."""

    amount_minor: int
    currency_code: str


@dataclass(frozen=True)
class StatementLine:
    """One finding of the reconciler; ours/theirs None when that side has nothing."""

    statement_id: int
    subject_kind: SubjectKind.ValueType
    subject_id: str
    order_id: str
    verdict: Verdict.ValueType
    ours: Amount | None
    theirs: Amount | None
    recovered: bool
    corrects_statement_id: int
    fact_time: datetime
    state_time: datetime
    lag: timedelta
    exception_id: int
    resolution: Resolution.ValueType


@dataclass(frozen=True)
class Statement:
    """The lines about one id, oldest first."""

    lines: tuple[StatementLine, ...]
    truncated: bool


@dataclass(frozen=True)
class ReconciliationException:
    """A discrepancy and its resolution (UNSPECIFIED and None times while open)."""

    exception_id: int
    reason: Verdict.ValueType
    open_time: datetime
    resolution: Resolution.ValueType
    resolved_by: str
    resolved_why: str
    resolve_time: datetime | None
    statement: StatementLine


@dataclass(frozen=True)
class ExceptionPage:
    """One page of ListExceptions; next_page_token is empty on the last page."""

    exceptions: tuple[ReconciliationException, ...]
    next_page_token: str


@dataclass(frozen=True)
class LateItem:
    """A transfer counted after the closed day its provider time belongs to."""

    transfer_id: int
    txn_id: str
    type: str
    amount_minor: int
    belongs_to: date


@dataclass(frozen=True)
class DailyClose:
    """A currency's provider balance over one UTC day, closed or as it stands."""

    currency_code: str
    day: date
    closed: bool
    opening_minor: int
    charges_minor: int
    refunds_minor: int
    fees_minor: int
    payouts_minor: int
    refund_failures_minor: int
    closing_minor: int
    close_time: datetime | None
    closed_by: str
    late_items: tuple[LateItem, ...]


class ReconciliationClient(ChannelClient):
    """Async client of the reconciliation service over one reused channel; create it
    inside a loop."""

    def __init__(
        self,
        target: str,
        *,
        credentials: Credentials | None = None,
        default_timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        super().__init__(
            target,
            credentials=credentials,
            default_timeout=default_timeout,
            retry=retry,
            channel_options=channel_options,
        )
        self._stub = pb_grpc.ReconciliationServiceStub(self._channel)

    async def get_statement(self, id: str, *, timeout: float | None = None) -> Statement:
        """Every line about a payment (charge) id, a provider refund id or an order id;
        NotFound when none."""
        request = pb.GetStatementRequest(id=id)
        reply = await self._call(self._stub.GetStatement, request, read=True, timeout=timeout)
        return Statement(tuple(line_from_message(m) for m in reply.lines), reply.truncated)

    async def list_exceptions(
        self,
        *,
        include_resolved: bool = False,
        reason: Verdict.ValueType = Verdict.VERDICT_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> ExceptionPage:
        """One page of exceptions, oldest first: the open ones unless include_resolved."""
        request = pb.ListExceptionsRequest(
            include_resolved=include_resolved,
            reason=reason,
            page_size=page_size,
            page_token=page_token,
        )
        reply = await self._call(self._stub.ListExceptions, request, read=True, timeout=timeout)
        return ExceptionPage(
            tuple(exception_from_message(m) for m in reply.exceptions), reply.next_page_token
        )

    async def resolve_exception(
        self,
        exception_id: int,
        resolution: Resolution.ValueType,
        why: str,
        *,
        timeout: float | None = None,
    ) -> ReconciliationException:
        """Resolve an open exception as ACCEPTED, REFUNDED or WRITTEN_OFF, saying why. One
        resolved already is FailedPrecondition (ErrorInfo reason ALREADY_RESOLVED), unless
        this is the same resolution by the same caller for the same reason (a retry)."""
        request = pb.ResolveExceptionRequest(
            exception_id=exception_id, resolution=resolution, why=why
        )
        # Safe to retry: a repeat of the same resolution answers as the first did.
        reply = await self._call(self._stub.ResolveException, request, read=True, timeout=timeout)
        return exception_from_message(reply.exception)

    async def get_daily_close(
        self, currency_code: str, day: date, *, timeout: float | None = None
    ) -> DailyClose:
        """A currency's close of a UTC day; NotFound for a currency the provider never moved."""
        request = pb.GetDailyCloseRequest(currency_code=currency_code, day=day.isoformat())
        reply = await self._call(self._stub.GetDailyClose, request, read=True, timeout=timeout)
        return close_from_message(reply.close)

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _T],
        request: _Request,
        *,
        read: bool,
        timeout: float | None,
    ) -> _T:
        budget = self._default_timeout if timeout is None else timeout
        check_timeout(budget)
        metadata = (*self._auth(), (REQUEST_ID_METADATA_KEY, uuid.uuid4().hex))

        async def send(seconds_left: float) -> _T:
            return await method(request, timeout=seconds_left, metadata=metadata)

        return await call_with_retry(
            send, policy=self._retry, read=read, timeout=budget, throttle=self._throttle
        )


def _amount(message: pb.StatementLine, name: str) -> Amount | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    value: pb.Amount = getattr(message, name)
    return Amount(value.amount_minor, value.currency_code)


def line_from_message(message: pb.StatementLine) -> StatementLine:
    """A statement line from its wire form."""
    return StatementLine(
        statement_id=message.statement_id,
        subject_kind=message.subject_kind,
        subject_id=message.subject_id,
        order_id=message.order_id,
        verdict=message.verdict,
        ours=_amount(message, "ours"),
        theirs=_amount(message, "theirs"),
        recovered=message.recovered,
        corrects_statement_id=message.corrects_statement_id,
        fact_time=to_datetime(message.fact_time),
        state_time=to_datetime(message.state_time),
        lag=message.lag.ToTimedelta(),
        exception_id=message.exception_id,
        resolution=message.resolution,
    )


def exception_from_message(message: pb.ReconciliationException) -> ReconciliationException:
    """An exception from its wire form."""
    return ReconciliationException(
        exception_id=message.exception_id,
        reason=message.reason,
        open_time=to_datetime(message.open_time),
        resolution=message.resolution,
        resolved_by=message.resolved_by,
        resolved_why=message.resolved_why,
        resolve_time=to_datetime(message.resolve_time)
        if message.HasField("resolve_time")
        else None,
        statement=line_from_message(message.statement),
    )


def close_from_message(message: pb.DailyClose) -> DailyClose:
    """A daily close from its wire form."""
    return DailyClose(
        currency_code=message.currency_code,
        day=date.fromisoformat(message.day),
        closed=message.closed,
        opening_minor=message.opening_minor,
        charges_minor=message.charges_minor,
        refunds_minor=message.refunds_minor,
        fees_minor=message.fees_minor,
        payouts_minor=message.payouts_minor,
        refund_failures_minor=message.refund_failures_minor,
        closing_minor=message.closing_minor,
        close_time=to_datetime(message.close_time) if message.HasField("close_time") else None,
        closed_by=message.closed_by,
        late_items=tuple(
            LateItem(
                i.transfer_id,
                i.txn_id,
                i.type,
                i.amount_minor,
                date.fromisoformat(i.belongs_to),
            )
            for i in message.late_items
        ),
    )
