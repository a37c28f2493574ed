"""A long-running caller follows the short-lived tokens written to its token file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clients.credentials import Credentials, TokenFile


def test_a_rewritten_token_file_is_taken_up_after_the_check_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    credentials = Credentials.from_env(
        {"STOCKCORE_TOKEN_FILE": str(path), "STOCKCORE_PLAINTEXT": "1"}
    )
    assert (credentials.token, credentials.token_file) == ("first", str(path))

    now = [1000.0]
    monkeypatch.setattr("clients.credentials.time.monotonic", lambda: now[0])
    watched = TokenFile(credentials.token_file)
    path.write_text("second\n")
    os.utime(path, ns=(1, 1))  # a different stamp, whatever the clock's resolution

    assert watched.changed() is None  # not looked at again yet
    now[0] += TokenFile.CHECK_S
    assert watched.changed() == "second"
    now[0] += TokenFile.CHECK_S
    assert watched.changed() is None  # unchanged since


def test_a_token_given_directly_has_no_file_to_follow() -> None:
    credentials = Credentials.from_env({"STOCKCORE_TOKEN": "t", "STOCKCORE_PLAINTEXT": "1"})
    assert credentials.token_file is None
    assert TokenFile(None).changed() is None
