"""Shares: each caller held to its share of a resource, everyone to the total."""

from __future__ import annotations

import pytest

from server.domain.errors import CallerLimit, Overloaded
from server.shares import Shares


def shares(per_caller: int = 2, total: int | None = 3) -> Shares:
    return Shares("streams", per_caller, total, retry_after=1.0, rand=lambda: 0.5)


def test_a_caller_at_its_share_is_refused_while_another_is_admitted() -> None:
    s = shares()
    s.take("alice")
    s.take("alice")

    with pytest.raises(CallerLimit) as refused:
        s.take("alice")
    s.take("bob")

    assert (refused.value.resource, refused.value.limit) == ("streams", 2)
    assert refused.value.retry_after == 1.0
    assert (s.held_by("alice"), s.held_by("bob"), s.in_use) == (2, 1, 3)


def test_everyone_is_refused_at_the_total_even_within_their_share() -> None:
    s = shares()
    for holder in ("alice", "alice", "bob"):
        s.take(holder)

    with pytest.raises(Overloaded):
        s.take("carol")
    assert s.held_by("carol") == 0


def test_what_is_given_back_can_be_taken_again_and_idle_callers_are_forgotten() -> None:
    s = shares()
    s.take("alice")
    s.take("alice")
    s.give_back("alice")
    s.take("alice")
    s.give_back("alice")
    s.give_back("alice")

    assert s.in_use == 0
    assert s._held == {}


def test_a_block_holds_one_until_it_ends_even_when_it_raises() -> None:
    s = shares()
    with pytest.raises(RuntimeError), s.holding("alice"):
        assert s.held_by("alice") == 1
        raise RuntimeError("the call failed")

    assert s.held_by("alice") == 0


def test_callers_that_cannot_be_told_apart_are_bounded_by_the_total_alone() -> None:
    s = shares(per_caller=1, total=3)
    for _ in range(3):
        s.take(None)

    with pytest.raises(Overloaded):
        s.take(None)


def test_without_a_total_only_the_shares_bound() -> None:
    s = shares(per_caller=1, total=None)
    for i in range(1000):
        s.take(f"caller-{i}")

    assert s.in_use == 1000


def test_refusals_are_jittered_around_the_delay() -> None:
    draws = iter([0.0, 0.99])
    s = Shares("reads", 1, retry_after=0.2, rand=lambda: next(draws))
    s.take("alice")

    delays = []
    for _ in range(2):
        with pytest.raises(CallerLimit) as refused:
            s.take("alice")
        delays.append(refused.value.retry_after)

    assert delays == [pytest.approx(0.1), pytest.approx(0.298)]


@pytest.mark.parametrize(
    ("per_caller", "total", "retry_after"), [(0, None, 1.0), (3, 2, 1.0), (1, 1, 0.0)]
)
def test_bounds_that_cannot_work_are_refused(
    per_caller: int, total: int | None, retry_after: float
) -> None:
    with pytest.raises(ValueError):
        Shares("streams", per_caller, total, retry_after=retry_after)
