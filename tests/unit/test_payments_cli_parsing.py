"""`stockctl payments ...`: what each subcommand parses into and what it rejects."""

from __future__ import annotations

import pytest

from clients.cli import parse_args
from payments.admin import PaymentsEvent, PaymentsReturns, default_pg


def test_returns_takes_the_database_from_the_environment_else_make_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STOCKCORE_PG_DSN", raising=False)
    assert parse_args(["payments", "returns"])[1] == PaymentsReturns(default_pg(), False)
    monkeypatch.setenv("STOCKCORE_PG_DSN", "postgresql://db/x")
    assert parse_args(["payments", "returns", "--all"])[1] == PaymentsReturns(
        "postgresql://db/x", True
    )


def test_event_takes_its_id() -> None:
    parsed = parse_args(["payments", "event", "evt_1", "--pg", "postgresql://db/x"])[1]
    assert parsed == PaymentsEvent("postgresql://db/x", "evt_1")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [(["payments"], "COMMAND"), (["payments", "event"], "EVENT_ID"), (["payments", "x"], "x")],
)
def test_incomplete_commands_are_refused(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
