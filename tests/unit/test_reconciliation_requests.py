"""ReconciliationService's requests validated as plain code, and its answers converted."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from server.domain.errors import InvalidArgument
from server.domain.reconciliation import (
    MAX_PAGE_SIZE,
    Discrepancy,
    Money,
    Resolution,
    StatementLine,
    SubjectKind,
    Verdict,
    daily_close_of,
    list_exceptions,
    resolve_exception,
    statement_of,
)
from server.rpc import reconciliation_convert as convert


def _fields(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in error.value.violations]


def test_a_page_token_carries_the_last_exception_and_its_filters() -> None:
    first = list_exceptions(False, int(Verdict.AMOUNT_DIFFERS), 2, "")
    assert (first.after, first.page_size, first.reason) == (0, 2, Verdict.AMOUNT_DIFFERS)
    second = list_exceptions(False, int(Verdict.AMOUNT_DIFFERS), 2, first.token(41))
    assert second.after == 41
    with pytest.raises(InvalidArgument) as other:
        list_exceptions(True, int(Verdict.AMOUNT_DIFFERS), 2, first.token(41))
    assert [v.description for v in other.value.violations] == [
        "belongs to a query with other filters"
    ]
    assert list_exceptions(False, 0, 0, "").page_size == 50


def test_bad_list_requests_name_every_field() -> None:
    with pytest.raises(InvalidArgument) as bad:
        list_exceptions(False, 99, MAX_PAGE_SIZE + 1, "!!")
    assert _fields(bad) == ["reason", "page_size", "page_token"]
    with pytest.raises(InvalidArgument) as matched:
        list_exceptions(False, int(Verdict.MATCHED), 0, "")
    assert _fields(matched) == ["reason"]


def test_only_a_persons_resolution_with_a_reason_is_accepted() -> None:
    done = resolve_exception(3, int(Resolution.WRITTEN_OFF), "under a cent", "finance")
    assert (done.exception_id, done.resolution, done.by) == (3, Resolution.WRITTEN_OFF, "finance")
    for resolution in (0, int(Resolution.CORRECTED), 9):
        with pytest.raises(InvalidArgument) as refused:
            resolve_exception(3, resolution, "why", "finance")
        assert _fields(refused) == ["resolution"]
    with pytest.raises(InvalidArgument) as bad:
        resolve_exception(-1, int(Resolution.ACCEPTED), "two\nlines", "finance")
    assert _fields(bad) == ["exception_id", "why"]


def test_a_statement_id_and_a_day_are_checked() -> None:
    assert statement_of("ch_1") == "ch_1"
    with pytest.raises(InvalidArgument):
        statement_of("")
    assert daily_close_of("EUR", "2026-03-01") == ("EUR", date(2026, 3, 1))
    for currency, day in (("eur", "2026-03-01"), ("EUR", "2026-02-30"), ("EUR", "1999-12-31")):
        with pytest.raises(InvalidArgument):
            daily_close_of(currency, day)


def test_an_exception_converts_with_its_line_and_no_side_left_unset() -> None:
    line = StatementLine(
        statement_id=5,
        subject_kind=SubjectKind.CHARGE,
        subject_id="ch_1",
        order_id=None,
        verdict=Verdict.MISSING_HERE,
        ours=None,
        theirs=Money(700, "EUR"),
        recovered=False,
        corrects=4,
        fact_at=datetime(2026, 3, 1, tzinfo=UTC),
        stated_at=datetime(2026, 3, 1, 0, 5, tzinfo=UTC),
        lag_s=300.25,
        exception_id=2,
        resolution=None,
    )
    found = Discrepancy(2, Verdict.MISSING_HERE, line.stated_at, None, None, None, None, line)
    message = convert.discrepancy(found)
    assert (message.exception_id, message.resolution, message.resolved_by) == (2, 0, "")
    assert not message.HasField("resolve_time")
    wire = message.statement
    assert not wire.HasField("ours") and wire.theirs.amount_minor == 700
    assert (wire.order_id, wire.corrects_statement_id) == ("", 4)
    assert wire.lag.ToNanoseconds() == 300_250_000_000
