"""`stockctl events dlq ...`: what each subcommand parses into and what it rejects."""

from __future__ import annotations

import pytest

from clients.cli import ExitCode, parse_args
from clients.events import STREAM
from clients.events_cli import (
    DEFAULT_REDIS,
    DeadLetterDrop,
    DeadLetterList,
    DeadLetterReplay,
    DeadLetterShow,
)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == ExitCode.USAGE
    return capsys.readouterr().err


def test_list_has_defaults_and_takes_the_redis_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STOCKCORE_REDIS_URL", raising=False)
    _, command = parse_args(["events", "dlq", "list", "--group", "billing"])
    assert command == DeadLetterList(DEFAULT_REDIS, STREAM, "billing", 100, "-")
    monkeypatch.setenv("STOCKCORE_REDIS_URL", "redis://elsewhere:6379/2")
    _, command = parse_args(["events", "dlq", "list", "--group", "g", "--limit", "5"])
    assert command == DeadLetterList("redis://elsewhere:6379/2", STREAM, "g", 5, "-")


def test_show_replay_and_drop_take_dead_letter_ids() -> None:
    common = ["--group", "g", "--redis", "redis://r:1/0"]
    _, show = parse_args(["events", "dlq", "show", *common, "1700000000000-3"])
    assert show == DeadLetterShow("redis://r:1/0", STREAM, "g", "1700000000000-3")
    _, replay = parse_args(["events", "dlq", "replay", *common, "1-0", "2-0"])
    assert replay == DeadLetterReplay("redis://r:1/0", STREAM, "g", ("1-0", "2-0"))
    _, every = parse_args(["events", "dlq", "replay", *common, "--all"])
    assert every == DeadLetterReplay("redis://r:1/0", STREAM, "g", ())
    _, drop = parse_args(["events", "dlq", "drop", *common, "3-1"])
    assert drop == DeadLetterDrop("redis://r:1/0", STREAM, "g", ("3-1",))


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["events", "dlq", "list"], "--group"),
        (["events", "dlq", "show", "--group", "g", "not-an-id"], "stream entry id"),
        (["events", "dlq", "replay", "--group", "g"], "one of the arguments"),
        (["events", "dlq", "replay", "--group", "g", "--all", "1-0"], "not allowed with"),
        (["events", "dlq", "drop", "--group", "g"], "ID"),
        (["events", "dlq", "list", "--group", "g", "--limit", "0"], "1-10000"),
    ],
)
def test_bad_dead_letter_commands_are_usage_errors(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert complaint in _usage_error(argv, capsys)
