"""What the programs `make run` starts find in their environment."""

from __future__ import annotations

import pytest

from devstack.stack import program_env


def test_a_program_with_a_token_file_never_takes_the_shells_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The README has the user export a token of their own; `make run` may be started
    # again from that shell.
    monkeypatch.setenv("STOCKCORE_TOKEN", "the-users-own-token")
    env = program_env({"STOCKCORE_TOKEN_FILE": "/data/auth/worker.token"}, {"X": "1"})
    assert "STOCKCORE_TOKEN" not in env
    assert (env["STOCKCORE_TOKEN_FILE"], env["X"]) == ("/data/auth/worker.token", "1")


def test_without_a_token_file_the_shells_token_is_what_the_program_presents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKCORE_TOKEN", "the-users-own-token")
    monkeypatch.delenv("STOCKCORE_TOKEN_FILE", raising=False)
    assert program_env(None, {})["STOCKCORE_TOKEN"] == "the-users-own-token"
