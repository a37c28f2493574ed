"""`make plots`: the key plot of the newest run of each kind, copied under a stable name."""

from __future__ import annotations

from pathlib import Path

from loadtests.plots import publish


def _run(reports: Path, name: str, plot: str) -> Path:
    folder = reports / name
    folder.mkdir(parents=True)
    (folder / plot).write_bytes(name.encode())
    return folder


def test_the_newest_run_of_each_kind_is_published_under_the_kinds_name(tmp_path: Path) -> None:
    reports, docs = tmp_path / ".reports", tmp_path / "docs"
    _run(reports, "day-20261126-090000", "day.png")
    _run(reports, "report-20261126-100000", "day.png")  # load-report draws the day too
    _run(reports, "knee-20261126-080000", "knee.png")
    _run(reports, "knee-20261126-070000", "knee.png")
    _run(reports, "bench-20261126-110000", "summary.md")  # a bench run without its plot
    _run(reports, "soak-20261126-120000", "day.png")  # a soak draws the day beside its own
    (reports / "soak-20261126-120000" / "soak.png").write_bytes(b"soak-20261126-120000")

    copied = publish([], reports, docs)

    assert sorted(p.name for _, p in copied) == ["day.png", "knee.png", "soak.png"]
    assert (docs / "day.png").read_bytes() == b"report-20261126-100000"
    assert (docs / "knee.png").read_bytes() == b"knee-20261126-080000"
    assert (docs / "soak.png").read_bytes() == b"soak-20261126-120000"
    assert not (docs / "bench.png").exists()


def test_named_runs_are_published_instead_of_the_newest(tmp_path: Path) -> None:
    reports, docs = tmp_path / ".reports", tmp_path / "docs"
    older = _run(reports, "day-20261126-090000", "day.png")
    _run(reports, "day-20261126-100000", "day.png")

    publish([older], reports, docs)

    assert (docs / "day.png").read_bytes() == b"day-20261126-090000"
