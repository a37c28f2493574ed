"""The reconciler's findings and the daily closes as the server reads and resolves them
(sql/live/reconciliation.sql, sql/live/closing.sql): reads on the readers' pool, the one
write (a resolution) one function call answering with a code."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from server.domain.errors import AlreadyResolved, NotFound
from server.domain.reconciliation import (
    MAX_STATEMENT_LINES,
    DailyClose,
    Discrepancy,
    LateItem,
    ListExceptions,
    Money,
    Resolution,
    Resolved,
    ResolveException,
    Statement,
    StatementLine,
    SubjectKind,
    Verdict,
)
from server.storage.postgres import StockStore

_STATEMENT = "SELECT * FROM stockcore.statement_lines($1, $2)"
_EXCEPTIONS = "SELECT * FROM stockcore.reconciliation_exception_page($1, $2, $3, $4)"
_ONE_EXCEPTION = "SELECT * FROM stockcore.reconciliation_exception_page(true, NULL, $1 - 1, 1)"
_RESOLVE = "SELECT stockcore.resolve_reconciliation_exception($1, $2, $3, $4) AS answer"
_CLOSE = "SELECT * FROM stockcore.daily_close_figures($1, $2)"
_LATE = "SELECT * FROM stockcore.daily_close_late_items($1, $2)"


def _money(amount: int | None, currency: str | None) -> Money | None:
    return None if amount is None or currency is None else Money(amount, currency)


def _line(row: Mapping[str, Any]) -> StatementLine:
    resolution = row["resolution"]
    return StatementLine(
        statement_id=row["statement_id"],
        subject_kind=SubjectKind(row["subject_kind"]),
        subject_id=row["subject_id"],
        order_id=row["order_id"],
        verdict=Verdict(row["verdict"]),
        ours=_money(row["ours_amount"], row["ours_currency"]),
        theirs=_money(row["theirs_amount"], row["theirs_currency"]),
        recovered=row["recovered"],
        corrects=row["corrects"],
        fact_at=row["fact_at"],
        stated_at=row["stated_at"],
        lag_s=row["lag_s"],
        exception_id=row["exception_id"],
        resolution=None if resolution is None else Resolution(resolution),
    )


def _discrepancy(row: Mapping[str, Any]) -> Discrepancy:
    resolution = None if row["resolution"] is None else Resolution(row["resolution"])
    return Discrepancy(
        exception_id=row["exception_id"],
        reason=Verdict(row["reason"]),
        opened_at=row["opened_at"],
        resolution=resolution,
        resolved_by=row["resolved_by"],
        resolved_why=row["resolved_why"],
        resolved_at=row["resolved_at"],
        statement=_line(row),
    )


class ReconciliationReader:
    """ReconciliationService's storage, through the server's pools."""

    def __init__(self, store: StockStore) -> None:
        self._store = store

    async def statement(self, subject: str) -> Statement:
        """The lines about `subject` (a charge, a refund or an order id); NotFound when none."""
        rows = await self._store.read(
            lambda c: c.fetch(_STATEMENT, subject, MAX_STATEMENT_LINES + 1)
        )
        if not rows:
            raise NotFound("payment, refund or order with statement lines", [subject])
        lines = tuple(_line(r) for r in rows[:MAX_STATEMENT_LINES])
        return Statement(lines, truncated=len(rows) > MAX_STATEMENT_LINES)

    async def exceptions(self, query: ListExceptions) -> tuple[list[Discrepancy], str]:
        """One page of exceptions and the token of the next ("" on the last)."""
        reason = None if query.reason is None else int(query.reason)
        rows = await self._store.read(
            lambda c: c.fetch(
                _EXCEPTIONS, query.include_resolved, reason, query.after, query.page_size + 1
            )
        )
        page = [_discrepancy(r) for r in rows[: query.page_size]]
        token = query.token(page[-1].exception_id) if len(rows) > query.page_size else ""
        return page, token

    async def _exception(self, exception_id: int) -> Discrepancy | None:
        rows = await self._store.read(lambda c: c.fetch(_ONE_EXCEPTION, exception_id))
        return _discrepancy(rows[0]) if rows else None

    async def resolve(self, command: ResolveException) -> Discrepancy:
        """Resolve an open exception (decided under its row's lock, in SQL). A repeat of
        the same resolution, reason and caller answers with the exception as it is (a
        resolved row never changes again, so reading it after is safe); another one is
        AlreadyResolved."""
        row = await self._store.call(
            _RESOLVE, command.exception_id, int(command.resolution), command.by, command.why
        )
        answer = Resolved(row["answer"])
        if answer is Resolved.UNKNOWN:
            raise NotFound("reconciliation exception", [str(command.exception_id)])
        # REFUSED cannot come from a validated command: a bug, surfacing as INTERNAL.
        assert answer is not Resolved.REFUSED, answer
        found = await self._exception(command.exception_id)
        assert found is not None and found.resolution is not None
        if answer is Resolved.ALREADY_RESOLVED and (
            found.resolution,
            found.resolved_by,
            found.resolved_why,
        ) != (command.resolution, command.by, command.why):
            raise AlreadyResolved(
                command.exception_id, found.resolution.name, found.resolved_by or ""
            )
        return found

    async def daily_close(self, currency: str, day: date) -> DailyClose:
        """A currency's close of a day: as closed, or as it stands; NotFound for a currency
        the provider never moved."""
        row = await self._store.read(lambda c: c.fetchrow(_CLOSE, currency, day))
        if row is None or row["opening_minor"] is None:
            raise NotFound("currency with provider transfers", [currency])
        late = await self._store.read(lambda c: c.fetch(_LATE, currency, day))
        return DailyClose(
            currency=currency,
            day=day,
            closed=row["closed"],
            opening_minor=row["opening_minor"],
            charges_minor=row["charges_minor"],
            refunds_minor=row["refunds_minor"],
            fees_minor=row["fees_minor"],
            payouts_minor=row["payouts_minor"],
            refund_failures_minor=row["refund_failures_minor"],
            closing_minor=row["closing_minor"],
            closed_at=row["closed_at"],
            closed_by=row["closed_by"],
            late_items=tuple(
                LateItem(
                    r["transfer_id"], r["txn_id"], r["type"], r["amount_minor"], r["belongs_to"]
                )
                for r in late
            ),
        )
