"""`stockctl recon ...`: what each subcommand parses into, what it rejects, and how a
statement and a close print."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from clients.cli import ExitCode, parse_args
from clients.recon_cli import (
    ListExceptions,
    ReadClose,
    ReadStatement,
    ResolveException,
    format_close,
    format_statement,
    line_data,
)
from clients.reconciliation import (
    Amount,
    DailyClose,
    LateItem,
    Resolution,
    StatementLine,
    SubjectKind,
    Verdict,
)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == ExitCode.USAGE
    return capsys.readouterr().err


def test_each_recon_command_parses_into_its_command() -> None:
    assert parse_args(["recon", "statement", "order-42"])[1] == ReadStatement("order-42")
    assert parse_args(["recon", "exceptions"])[1] == ListExceptions(
        False, Verdict.VERDICT_UNSPECIFIED, 0, ""
    )
    assert parse_args(
        ["recon", "exceptions", "--all", "--reason", "amount-differs", "--page-size", "5"]
    )[1] == ListExceptions(True, Verdict.VERDICT_AMOUNT_DIFFERS, 5, "")
    assert parse_args(["recon", "resolve", "7", "--as", "written-off", "--why", "under a cent"])[
        1
    ] == ResolveException(7, Resolution.RESOLUTION_WRITTEN_OFF, "under a cent")
    assert parse_args(["recon", "close", "eur", "2026-03-01"])[1] == ReadClose(
        "EUR", date(2026, 3, 1)
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["recon", "resolve", "7", "--as", "corrected", "--why", "x"], "invalid choice"),
        (["recon", "resolve", "7", "--as", "accepted"], "--why"),
        (["recon", "resolve", "0", "--as", "accepted", "--why", "x"], "at least 1"),
        (["recon", "exceptions", "--reason", "matched"], "opens no exception"),
        (["recon", "exceptions", "--reason", "lost"], "is not a reason"),
        (["recon", "close", "EURO", "2026-03-01"], "three-letter"),
        (["recon", "close", "EUR", "2026-02-30"], "YYYY-MM-DD"),
    ],
)
def test_bad_recon_arguments_are_usage_errors(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in _usage_error(argv, capsys)


LINE = StatementLine(
    statement_id=3,
    subject_kind=SubjectKind.SUBJECT_KIND_CHARGE,
    subject_id="ch_1",
    order_id="order-42",
    verdict=Verdict.VERDICT_AMOUNT_DIFFERS,
    ours=Amount(5999, "EUR"),
    theirs=Amount(6000, "EUR"),
    recovered=False,
    corrects_statement_id=0,
    fact_time=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
    state_time=datetime(2026, 3, 1, 10, 0, 2, tzinfo=UTC),
    lag=timedelta(seconds=2),
    exception_id=9,
    resolution=Resolution.RESOLUTION_UNSPECIFIED,
)


def test_a_statement_prints_one_row_per_line_with_its_exception() -> None:
    text = format_statement((LINE,))
    header, row = text.splitlines()
    assert header.split() == [
        "LINE", "SUBJECT", "ORDER", "VERDICT", "OURS", "THEIRS", "LAG_S", "CORRECTS", "EXCEPTION"
    ]  # fmt: skip
    assert "charge ch_1" in row and "AMOUNT_DIFFERS" in row and "9 OPEN" in row
    data = line_data(LINE)
    assert data["fact_time"] == "2026-03-01T10:00:00.000Z"
    assert (data["ours"], data["resolution"], data["lag_s"]) == (
        {"amount_minor": 5999, "currency": "EUR"},
        "OPEN",
        2.0,
    )


def test_a_close_prints_its_equation_and_late_items() -> None:
    close = DailyClose(
        currency_code="EUR",
        day=date(2026, 3, 2),
        closed=False,
        opening_minor=100,
        charges_minor=50,
        refunds_minor=10,
        fees_minor=5,
        payouts_minor=0,
        refund_failures_minor=0,
        closing_minor=135,
        close_time=None,
        closed_by="",
        late_items=(LateItem(4, "txn_4", "charge", 20, date(2026, 3, 1)),),
    )
    text = format_close(close)
    assert text.splitlines()[0].split() == [
        "EUR",
        "2026-03-02",
        "open",
        "(figures",
        "as",
        "they",
        "stand)",
    ]
    assert "closing" in text and "135" in text and "2026-03-01" in text
