"""`stockctl fulfilment ...`: what each subcommand parses into and what it rejects."""

from __future__ import annotations

import pytest

from clients.cli import ExitCode, parse_args
from fulfilment.admin import (
    FulfilmentDlqList,
    FulfilmentDlqReplay,
    FulfilmentDlqShow,
    FulfilmentShow,
    FulfilmentStatus,
    default_pg,
)


def test_status_takes_the_database_from_the_environment_else_make_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STOCKCORE_PG_DSN", raising=False)
    assert parse_args(["fulfilment", "status"])[1] == FulfilmentStatus(default_pg())
    monkeypatch.setenv("STOCKCORE_PG_DSN", "postgresql://db/x")
    assert parse_args(["fulfilment", "status"])[1] == FulfilmentStatus("postgresql://db/x")
    assert parse_args(["fulfilment", "status", "--pg", "postgresql://o/y"])[1] == (
        FulfilmentStatus("postgresql://o/y")
    )


def test_show_and_dead_letter_commands_take_their_ids() -> None:
    pg = ["--pg", "postgresql://db/x"]
    assert parse_args(["fulfilment", "show", "o-1", *pg])[1] == FulfilmentShow(
        "postgresql://db/x", "o-1"
    )
    assert parse_args(["fulfilment", "dlq", "list", *pg])[1] == FulfilmentDlqList(
        "postgresql://db/x", 100, False
    )
    assert parse_args(["fulfilment", "dlq", "list", "--limit", "5", "--replayed", *pg])[1] == (
        FulfilmentDlqList("postgresql://db/x", 5, True)
    )
    assert parse_args(["fulfilment", "dlq", "show", "7", *pg])[1] == FulfilmentDlqShow(
        "postgresql://db/x", 7
    )


def test_replay_names_ids_or_all_and_records_the_caller() -> None:
    pg = ["--pg", "postgresql://db/x"]
    _, some = parse_args(["fulfilment", "dlq", "replay", "3", "4", "--caller", "ops-anna", *pg])
    assert some == FulfilmentDlqReplay("postgresql://db/x", (3, 4), "ops-anna")
    _, every = parse_args(["fulfilment", "dlq", "replay", "--all", *pg])
    assert every == FulfilmentDlqReplay("postgresql://db/x", (), "stockctl")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["fulfilment"], "COMMAND"),
        (["fulfilment", "show"], "ORDER"),
        (["fulfilment", "dlq", "show", "x"], "not an integer"),
        (["fulfilment", "dlq", "show", "0"], "must be at least 1"),
        (["fulfilment", "dlq", "replay"], "one of the arguments"),
        (["fulfilment", "dlq", "replay", "--all", "3"], "not allowed with"),
        (["fulfilment", "dlq", "list", "--limit", "0"], "1-10000"),
    ],
)
def test_bad_fulfilment_commands_are_usage_errors(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == ExitCode.USAGE
    assert complaint in capsys.readouterr().err
