"""What a run leaves beside Locust's statistics: the shape's plan and the business tallies."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from loadtests.locust.record import install_tally, read_plan, read_tallies, write_plan


def test_the_plan_is_read_back_as_written(tmp_path: Path) -> None:
    write_plan(str(tmp_path / "run"), {"started_at": 12.5, "plateau": [10.0, 25.0]})

    assert read_plan(tmp_path / "run") == {"started_at": 12.5, "plateau": [10.0, 25.0]}
    assert read_plan(tmp_path / "elsewhere") == {}


def _environment(run_dir: Path) -> tuple[Any, list[Any]]:
    listeners: list[Any] = []
    quitting = SimpleNamespace(add_listener=listeners.append)
    environment = SimpleNamespace(
        parsed_options=SimpleNamespace(run_dir=str(run_dir)),
        events=SimpleNamespace(quitting=quitting),
    )
    return environment, listeners


def test_each_load_process_writes_its_tally_on_quitting_and_they_add_up(tmp_path: Path) -> None:
    environment, listeners = _environment(tmp_path)
    tally: Counter[str] = Counter()
    install_tally(environment, tally)
    tally.update(units_paid=3, orders_placed=2)

    [write] = listeners
    write(environment=environment)
    # Another load process's file, as it would have written it.
    (tmp_path / "tally-1.json").write_text('{"units_paid": 4}')

    assert read_tallies(tmp_path) == Counter(units_paid=7, orders_placed=2)


def test_a_process_that_counted_nothing_writes_no_tally(tmp_path: Path) -> None:
    environment, listeners = _environment(tmp_path)
    install_tally(environment, Counter())

    [write] = listeners
    write(environment=environment)

    assert list(tmp_path.iterdir()) == []
