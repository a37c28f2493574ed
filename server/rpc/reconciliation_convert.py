"""Protobuf <-> domain conversion for the reconciliation API."""

from __future__ import annotations

from google.protobuf import duration_pb2
from stockcore.v1 import reconciliation_pb2 as pb

from server.domain.reconciliation import (
    DailyClose,
    Discrepancy,
    LateItem,
    Money,
    StatementLine,
)
from server.rpc.convert import timestamp


def _amount(value: Money | None) -> pb.Amount | None:
    return (
        None
        if value is None
        else pb.Amount(amount_minor=value.amount_minor, currency_code=value.currency)
    )


def _lag(seconds: float) -> duration_pb2.Duration:
    lag = duration_pb2.Duration()
    lag.FromNanoseconds(round(seconds * 1e9))
    return lag


def statement_line(value: StatementLine) -> pb.StatementLine:
    """The wire form of a statement line."""
    return pb.StatementLine(
        statement_id=value.statement_id,
        subject_kind=pb.SubjectKind.ValueType(int(value.subject_kind)),
        subject_id=value.subject_id,
        order_id=value.order_id or "",
        verdict=pb.Verdict.ValueType(int(value.verdict)),
        ours=_amount(value.ours),
        theirs=_amount(value.theirs),
        recovered=value.recovered,
        corrects_statement_id=value.corrects or 0,
        fact_time=timestamp(value.fact_at),
        state_time=timestamp(value.stated_at),
        lag=_lag(value.lag_s),
        exception_id=value.exception_id or 0,
        resolution=pb.Resolution.ValueType(int(value.resolution or 0)),
    )


def discrepancy(value: Discrepancy) -> pb.ReconciliationException:
    """The wire form of an exception with its line."""
    return pb.ReconciliationException(
        exception_id=value.exception_id,
        reason=pb.Verdict.ValueType(int(value.reason)),
        open_time=timestamp(value.opened_at),
        resolution=pb.Resolution.ValueType(int(value.resolution or 0)),
        resolved_by=value.resolved_by or "",
        resolved_why=value.resolved_why or "",
        resolve_time=timestamp(value.resolved_at),
        statement=statement_line(value.statement),
    )


def _late_item(value: LateItem) -> pb.LateItem:
    return pb.LateItem(
        transfer_id=value.transfer_id,
        txn_id=value.txn_id,
        type=value.type,
        amount_minor=value.amount_minor,
        belongs_to=value.belongs_to.isoformat(),
    )


def daily_close(value: DailyClose) -> pb.DailyClose:
    """The wire form of a day's close."""
    return pb.DailyClose(
        currency_code=value.currency,
        day=value.day.isoformat(),
        closed=value.closed,
        opening_minor=value.opening_minor,
        charges_minor=value.charges_minor,
        refunds_minor=value.refunds_minor,
        fees_minor=value.fees_minor,
        payouts_minor=value.payouts_minor,
        refund_failures_minor=value.refund_failures_minor,
        closing_minor=value.closing_minor,
        close_time=timestamp(value.closed_at),
        closed_by=value.closed_by or "",
        late_items=[_late_item(i) for i in value.late_items],
    )
