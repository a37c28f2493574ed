"""Summing py-spy's raw stacks into shares by area of code and by leaf function."""

from __future__ import annotations

from pathlib import Path

from loadtests.profile import read_raw


def test_samples_count_once_per_area_on_their_stack_and_by_leaf(tmp_path: Path) -> None:
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        "run (uvloop/__init__.py:82);observed (server/rpc/observe.py:120);"
        "decode (server/rpc/observe.py:58) 7\n"
        "run (uvloop/__init__.py:82);_flush (server/inventory/batching.py:170);"
        "fetch (asyncpg/connection.py:690);_do_execute (asyncpg/connection.py:1800) 3\n"
        "garbage line\n"
    )

    stacks = read_raw(raw)

    assert stacks.samples == 10
    assert stacks.by_area["gRPC edge: servicers, conversion, admission (server/rpc)"] == 7
    assert stacks.by_area["batchers (server/inventory/batching.py)"] == 3
    assert stacks.by_area["asyncpg"] == 3
    assert stacks.by_leaf == {
        "decode (server/rpc/observe.py)": 7,
        "_do_execute (asyncpg/connection.py)": 3,
    }
