"""The standing-queue test that admission by waiting time rests on."""

from __future__ import annotations

import pytest

from server.queue_delay import QueueDelay, Queues

TARGET, INTERVAL = 0.05, 0.5


def delay() -> QueueDelay:
    return QueueDelay("test", TARGET, INTERVAL)


def test_a_burst_shorter_than_the_interval_refuses_nothing() -> None:
    q = delay()
    for now in (10.0, 10.1, 10.2, 10.4):
        q.head_waited(0.2, now)
    assert not q.standing
    assert not q.too_late(1.0)


def test_waits_past_the_target_for_a_whole_interval_make_the_queue_stand() -> None:
    q = delay()
    for now in (10.0, 10.2, 10.4):
        q.head_waited(0.08, now)
    assert not q.standing
    q.head_waited(0.08, 10.5)
    assert q.standing
    assert q.too_late(TARGET + 0.001)
    assert not q.too_late(TARGET - 0.001)


def test_one_batch_within_the_target_ends_the_state_and_restarts_the_interval() -> None:
    q = delay()
    q.head_waited(0.2, 10.0)
    q.head_waited(0.01, 10.3)  # the queue emptied: no standing queue
    q.head_waited(0.2, 10.4)
    q.head_waited(0.2, 10.7)
    assert not q.standing  # only 0.3 s above the target since the last good batch


def test_a_queue_that_stands_again_soon_after_is_standing_at_once() -> None:
    q = delay()
    q.head_waited(0.2, 10.0)
    q.head_waited(0.2, 10.5)
    assert q.standing
    q.head_waited(0.01, 10.6)
    assert not q.standing
    q.head_waited(0.2, 10.7)  # a burst of retries came back within the interval
    assert q.standing
    q.head_waited(0.01, 10.8)
    q.head_waited(0.2, 11.4)  # more than an interval after it ended: wait a new one
    assert not q.standing


def test_the_classes_are_apart() -> None:
    queues = Queues.create(TARGET, INTERVAL)
    queues.writes.head_waited(0.2, 10.0)
    queues.writes.head_waited(0.2, 10.5)
    assert queues.writes.standing
    assert not queues.reads.standing


@pytest.mark.parametrize(("target", "interval"), [(0, 0.5), (0.05, 0), (-1, 1)])
def test_target_and_interval_must_be_positive(target: float, interval: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        QueueDelay("bad", target, interval)


def test_a_standing_class_refuses_only_while_a_queue_holds_a_late_request() -> None:
    q = delay()
    oldest: list[float | None] = [None]
    q.watch(lambda: oldest[0])
    assert not q.refuses(100.0)  # not standing
    q.head_waited(0.2, 99.0)
    q.head_waited(0.2, 99.5)
    assert q.standing
    assert not q.refuses(100.0)  # standing, but the queue is empty: admit
    oldest[0] = 100.0 - TARGET / 2
    assert not q.refuses(100.0)  # the oldest waits less than the target
    oldest[0] = 100.0 - TARGET * 2
    assert q.refuses(100.0)


def test_a_queue_with_no_batch_started_for_an_interval_past_the_target_stands() -> None:
    q = delay()
    oldest: list[float | None] = [100.0]
    q.watch(lambda: oldest[0])
    assert not q.refuses(100.0 + TARGET + INTERVAL / 2)
    assert not q.standing
    assert q.refuses(100.0 + TARGET + INTERVAL + 0.01)
    assert q.standing
    q.head_waited(0.001, 101.0)  # a batch started at once: the queue emptied
    oldest[0] = None
    assert not q.standing and not q.refuses(101.0)
