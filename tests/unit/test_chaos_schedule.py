"""The chaos run's fault schedule is a function of its seed alone."""

from __future__ import annotations

from loadtests.chaos import FAULTS, schedule


def test_the_same_seed_replays_the_same_schedule() -> None:
    assert schedule(7, 180, 12) == schedule(7, 180, 12)
    assert schedule(7, 180, 12) != schedule(8, 180, 12)


def test_a_run_long_enough_strikes_with_every_kind_of_fault_inside_the_run() -> None:
    faults = schedule(3, 180, 12)
    assert {f.kind for f in faults} == set(FAULTS)
    assert all(10 <= f.at < 160 and 1 <= f.seconds <= 4 for f in faults)
    assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_forced_kinds_strike_first_in_their_order() -> None:
    forced = ("kill-reconciler", "kill-receiver", "kill-refund-sender")
    faults = schedule(3, 40, 1, forced)
    assert [f.kind for f in faults][:3] == list(forced)
    assert schedule(3, 40, 1, forced) == faults
