"""Which failures the client retries, how long it waits, and that it keeps to the deadline."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    StatusCode,
    StockcoreError,
    Unavailable,
)
from clients.inventory import RetryPolicy, call_with_retry

POLICY = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.5, multiplier=2.0)
RETRIED_FOR_READS = {
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.RESOURCE_EXHAUSTED,
}


def _top() -> float:
    """A stand-in for random.random() that always draws the largest jitter."""
    return 1.0


@pytest.mark.parametrize("read", [True, False])
def test_unavailable_is_retried_for_reads_and_writes(read: bool) -> None:
    assert POLICY.retries(StatusCode.UNAVAILABLE, read=read)


def test_deadline_exceeded_is_retried_for_reads_only() -> None:
    assert POLICY.retries(StatusCode.DEADLINE_EXCEEDED, read=True)
    assert not POLICY.retries(StatusCode.DEADLINE_EXCEEDED, read=False)


@pytest.mark.parametrize("code", sorted(set(StatusCode) - RETRIED_FOR_READS))
@pytest.mark.parametrize("read", [True, False])
def test_other_codes_are_never_retried(code: StatusCode, read: bool) -> None:
    assert not POLICY.retries(code, read=read)
    assert POLICY.retry_delay(code, attempt=1, read=read, remaining=60.0) is None


def test_backoff_ceiling_doubles_then_stays_at_the_cap() -> None:
    ceilings = [POLICY.backoff_ceiling(attempt) for attempt in range(1, 7)]

    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


def test_backoff_ceiling_survives_attempt_numbers_past_float_range() -> None:
    assert POLICY.backoff_ceiling(100_000) == 0.5


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_backoff_is_jittered_between_zero_and_the_ceiling(attempt: int, draw: float) -> None:
    delay = POLICY.backoff(attempt, rand=lambda: draw)

    assert 0.0 <= delay <= POLICY.backoff_ceiling(attempt) <= POLICY.max_backoff


def test_retries_stop_after_max_attempts() -> None:
    delays = [
        POLICY.retry_delay(StatusCode.UNAVAILABLE, attempt=n, read=False, remaining=60.0, rand=_top)
        for n in range(1, 6)
    ]

    assert delays == pytest.approx([0.1, 0.2, 0.4, None, None])


def test_no_retry_when_the_wait_would_outlast_the_deadline() -> None:
    assert (
        POLICY.retry_delay(StatusCode.UNAVAILABLE, attempt=3, read=True, remaining=0.3, rand=_top)
        is None
    )
    assert POLICY.retry_delay(
        StatusCode.UNAVAILABLE, attempt=3, read=True, remaining=0.5, rand=_top
    ) == pytest.approx(0.4)


def test_single_attempt_policy_never_retries() -> None:
    once = RetryPolicy(max_attempts=1)

    assert once.retry_delay(StatusCode.UNAVAILABLE, attempt=1, read=True, remaining=60.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff": 0.0},
        {"initial_backoff": 3.0, "max_backoff": 2.0},
        {"max_backoff": float("inf")},
        {"multiplier": 0.5},
    ],
)
def test_nonsensical_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def _failure(code: grpc.StatusCode, message: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=message)


class _Script:
    """A fake call that fails with the scripted codes, then answers "done"."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.timeouts: list[float] = []

    async def __call__(self, seconds_left: float) -> str:
        self.timeouts.append(seconds_left)
        if self.codes:
            raise _failure(self.codes.pop(0), "scripted")
        return "done"


class _Sleeps:
    """Records waits instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_unavailable_write_is_resent_until_it_succeeds() -> None:
    send, sleep = _Script(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE), _Sleeps()

    result = await call_with_retry(send, policy=POLICY, read=False, timeout=5.0, sleep=sleep)

    assert result == "done"
    assert len(send.timeouts) == 3
    assert len(sleep.delays) == 2
    assert all(0 <= d <= POLICY.max_backoff for d in sleep.delays)


async def test_each_attempt_gets_only_what_is_left_of_the_deadline() -> None:
    send = _Script(grpc.StatusCode.UNAVAILABLE)

    await call_with_retry(send, policy=POLICY, read=True, timeout=2.0, sleep=_Sleeps())

    assert 0 < send.timeouts[1] <= send.timeouts[0] <= 2.0


async def test_write_that_timed_out_is_raised_without_retry() -> None:
    send, sleep = _Script(grpc.StatusCode.DEADLINE_EXCEEDED), _Sleeps()

    with pytest.raises(DeadlineExceeded):
        await call_with_retry(send, policy=POLICY, read=False, timeout=5.0, sleep=sleep)
    assert len(send.timeouts) == 1
    assert sleep.delays == []


async def test_read_that_timed_out_on_the_server_is_retried() -> None:
    send = _Script(grpc.StatusCode.DEADLINE_EXCEEDED)

    assert await call_with_retry(send, policy=POLICY, read=True, timeout=5.0, sleep=_Sleeps()) == (
        "done"
    )
    assert len(send.timeouts) == 2


async def test_persistent_unavailability_raises_unavailable_after_max_attempts() -> None:
    send = _Script(*[grpc.StatusCode.UNAVAILABLE] * 10)

    with pytest.raises(Unavailable) as raised:
        await call_with_retry(send, policy=POLICY, read=True, timeout=5.0, sleep=_Sleeps())
    assert len(send.timeouts) == POLICY.max_attempts
    assert isinstance(raised.value.__cause__, grpc.aio.AioRpcError)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.NOT_FOUND, NotFound),
    ],
)
async def test_final_failures_are_raised_as_typed_errors_at_once(
    code: grpc.StatusCode, cls: type[StockcoreError]
) -> None:
    send, sleep = _Script(code), _Sleeps()

    with pytest.raises(cls):
        await call_with_retry(send, policy=POLICY, read=True, timeout=5.0, sleep=sleep)
    assert len(send.timeouts) == 1
    assert sleep.delays == []


def test_a_refusal_at_capacity_is_retried_for_reads_and_writes_never_sooner_than_asked() -> None:
    for read in (True, False):
        assert POLICY.retries(StatusCode.RESOURCE_EXHAUSTED, read=read)
        delay = POLICY.retry_delay(
            StatusCode.RESOURCE_EXHAUSTED,
            attempt=1,
            read=read,
            remaining=10.0,
            rand=lambda: 0.0,
            server_delay=0.75,
        )
        assert delay == 0.75
    # A delay that does not fit in the deadline ends the call now.
    assert (
        POLICY.retry_delay(
            StatusCode.RESOURCE_EXHAUSTED, attempt=1, read=True, remaining=0.5, server_delay=0.75
        )
        is None
    )
