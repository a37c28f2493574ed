"""Coalescing of concurrent requests by server.inventory.batching.Batcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from server.domain.errors import DeadlineExpired, Overloaded, Unavailable
from server.inventory.batching import Batcher
from server.queue_delay import QueueDelay

Outcome = list[str | BaseException]


class Shelf:
    """A fake batch handler: records each batch and answers item -> item upper-cased.

    Items named "fail:..." are answered with a ValueError; while `gate` is clear the
    handler waits, which keeps a batch in flight.
    """

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: Sequence[str]) -> Outcome:
        self.batches.append(list(items))
        self.entered.set()
        await self.gate.wait()
        results: list[str | BaseException] = [
            ValueError(item) if item.startswith("fail:") else item.upper() for item in items
        ]
        return results

    @property
    def seen(self) -> list[str]:
        return [item for batch in self.batches for item in batch]


@asynccontextmanager
async def running(batcher: Batcher[str, str]) -> AsyncIterator[Batcher[str, str]]:
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


async def in_flight(shelf: Shelf, batcher: Batcher[str, str], item: str) -> asyncio.Task[str]:
    """Submit `item` and return once the handler holds it (with the gate closed)."""
    shelf.gate.clear()
    shelf.entered.clear()
    task = asyncio.create_task(batcher.submit(item))
    async with asyncio.timeout(1):
        await shelf.entered.wait()
    return task


async def queued(
    batcher: Batcher[str, str], item: str, deadline: float | None = None
) -> asyncio.Task[str]:
    """Submit `item` and return once it waits in the queue."""
    task = asyncio.create_task(batcher.submit(item, deadline))
    await asyncio.sleep(0)
    return task


async def test_concurrent_submits_are_coalesced_into_one_handler_call() -> None:
    shelf = Shelf()
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            await asyncio.gather(*(batcher.submit(f"item-{i}") for i in range(5)))

    assert shelf.batches == [[f"item-{i}" for i in range(5)]]


async def test_each_caller_gets_the_result_for_its_own_item() -> None:
    shelf = Shelf()
    items = ["b", "a", "c", "a", "d"]
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(*(batcher.submit(item) for item in items))

    assert results == ["B", "A", "C", "A", "D"]
    assert shelf.batches == [items]


async def test_an_exception_result_goes_only_to_its_caller() -> None:
    shelf = Shelf()
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                batcher.submit("a"),
                batcher.submit("fail:b"),
                batcher.submit("c"),
                return_exceptions=True,
            )

    assert len(shelf.batches) == 1
    assert results[0] == "A"
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "fail:b"
    assert results[2] == "C"


async def test_one_request_that_breaks_its_batch_fails_alone() -> None:
    calls: list[list[str]] = []

    async def poisoned(items: Sequence[str]) -> Outcome:
        # Like one statement for the whole batch: one bad item fails all of it.
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad input reached the database")
        return [item.upper() for item in items]

    async with running(Batcher("test", poisoned, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                *(batcher.submit(item) for item in ["a", "b", "bad", "c"]), return_exceptions=True
            )
            after = await batcher.submit("d")

    assert results[:2] == ["A", "B"] and results[3] == "C"
    assert isinstance(results[2], ValueError)
    assert after == "D"
    # Split in halves until the bad one stands alone.
    assert calls[:4] == [["a", "b", "bad", "c"], ["a", "b"], ["bad", "c"], ["bad"]]


async def test_a_handler_that_always_crashes_reaches_every_caller() -> None:
    crash = RuntimeError("handler broke")

    async def crashing(items: Sequence[str]) -> Outcome:
        raise crash

    async with running(Batcher("test", crashing, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                *(batcher.submit(item) for item in ["a", "b", "c"]), return_exceptions=True
            )

    assert results == [crash, crash, crash]


async def test_an_unavailable_database_fails_the_batch_once_without_splitting_it() -> None:
    calls: list[list[str]] = []

    async def unreachable(items: Sequence[str]) -> Outcome:
        calls.append(list(items))
        raise Unavailable("PostgreSQL unavailable")

    async with running(Batcher("test", unreachable, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                *(batcher.submit(item) for item in ["a", "b"]), return_exceptions=True
            )

    assert all(isinstance(r, Unavailable) for r in results)
    assert calls == [["a", "b"]]


async def test_items_past_their_deadline_never_reach_the_handler() -> None:
    shelf = Shelf()
    past = time.monotonic() - 1
    future = time.monotonic() + 60
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                batcher.submit("late", past),
                batcher.submit("on-time", future),
                batcher.submit("no-deadline"),
                return_exceptions=True,
            )

    assert isinstance(results[0], DeadlineExpired)
    assert list(results[1:]) == ["ON-TIME", "NO-DEADLINE"]
    assert shelf.seen == ["on-time", "no-deadline"]


async def test_deadline_passing_while_queued_expires_the_item_unapplied() -> None:
    shelf = Shelf()
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        first = await in_flight(shelf, batcher, "first")
        waiting = await queued(batcher, "waiting", time.monotonic() + 0.02)
        await asyncio.sleep(0.05)
        shelf.gate.set()
        async with asyncio.timeout(1):
            assert await first == "FIRST"
            with pytest.raises(DeadlineExpired):
                await waiting

    assert shelf.seen == ["first"]


async def test_a_batch_of_only_expired_items_does_not_call_the_handler() -> None:
    shelf = Shelf()
    past = time.monotonic() - 1
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                batcher.submit("x", past), batcher.submit("y", past), return_exceptions=True
            )
            assert await batcher.submit("z") == "Z"

    assert all(isinstance(result, DeadlineExpired) for result in results)
    assert shelf.batches == [["z"]]


async def test_a_caller_cancelled_before_flushing_is_skipped() -> None:
    shelf = Shelf()
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        first = await in_flight(shelf, batcher, "first")
        gone = await queued(batcher, "gone")
        kept = await queued(batcher, "kept")
        gone.cancel()
        shelf.gate.set()
        async with asyncio.timeout(1):
            assert await first == "FIRST"
            assert await kept == "KEPT"
            with pytest.raises(asyncio.CancelledError):
                await gone

    assert shelf.batches == [["first"], ["kept"]]


async def test_a_caller_cancelled_mid_batch_leaves_the_others_answered() -> None:
    shelf = Shelf()
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        shelf.gate.clear()
        tasks = [asyncio.create_task(batcher.submit(item)) for item in ["a", "b", "c"]]
        async with asyncio.timeout(1):
            await shelf.entered.wait()
            tasks[1].cancel()
            shelf.gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)

    assert results[0] == "A"
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2] == "C"


@pytest.mark.parametrize(("max_batch", "count"), [(1, 3), (3, 8), (4, 8), (10, 3)])
async def test_batches_never_exceed_max_batch(max_batch: int, count: int) -> None:
    shelf = Shelf()
    items = [f"i{n}" for n in range(count)]
    async with running(Batcher("test", shelf, max_batch=max_batch)) as batcher:
        async with asyncio.timeout(1):
            results = await asyncio.gather(*(batcher.submit(item) for item in items))

    assert results == [item.upper() for item in items]
    assert all(1 <= len(batch) <= max_batch for batch in shelf.batches)
    assert shelf.seen == items
    assert len(shelf.batches) == -(-count // max_batch)


async def test_requests_arriving_during_a_batch_form_the_next_batch() -> None:
    shelf = Shelf()
    async with running(Batcher("test", shelf, max_batch=100)) as batcher:
        first = await in_flight(shelf, batcher, "first")
        later = [await queued(batcher, f"later-{i}") for i in range(3)]
        assert shelf.batches == [["first"]]
        shelf.gate.set()
        async with asyncio.timeout(1):
            await asyncio.gather(first, *later)

    assert shelf.batches == [["first"], ["later-0", "later-1", "later-2"]]


async def test_stop_waits_for_the_batch_in_flight_and_refuses_queued_items() -> None:
    shelf = Shelf()
    batcher: Batcher[str, str] = Batcher("test", shelf, max_batch=100)
    batcher.start()
    first = await in_flight(shelf, batcher, "first")
    waiting = await queued(batcher, "waiting")
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    shelf.gate.set()
    async with asyncio.timeout(1):
        await stopping
        assert await first == "FIRST"
        with pytest.raises(Unavailable):
            await waiting

    assert shelf.batches == [["first"]]


async def test_stop_of_an_idle_batcher_returns() -> None:
    batcher: Batcher[str, str] = Batcher("test", Shelf(), max_batch=10)
    batcher.start()
    async with asyncio.timeout(1):
        await batcher.stop()


async def test_batches_run_side_by_side_up_to_the_concurrency() -> None:
    shelf = Shelf()
    shelf.gate.clear()
    async with running(Batcher("test", shelf, max_batch=1, concurrency=2)) as batcher:
        tasks = [asyncio.create_task(batcher.submit(item)) for item in ["a", "b", "c"]]
        for _ in range(5):
            await asyncio.sleep(0)
        assert shelf.batches == [["a"], ["b"]]
        shelf.gate.set()
        async with asyncio.timeout(1):
            assert await asyncio.gather(*tasks) == ["A", "B", "C"]

    assert shelf.batches == [["a"], ["b"], ["c"]]


async def test_a_handler_answering_too_few_results_fails_every_unanswered_caller() -> None:
    async def forgetful(items: Sequence[str]) -> Outcome:
        return [item.upper() for item in items[:-1]]

    async with running(Batcher("test", forgetful, max_batch=100)) as batcher:
        tasks = [asyncio.create_task(batcher.submit(item)) for item in ["a", "b", "c"]]
        try:
            _, unanswered = await asyncio.wait(tasks, timeout=0.5)
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert not unanswered, "a caller without a result must get an error, not wait forever"
    # Results can no longer be matched to callers, so every caller hears of the bug.
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes


async def test_a_standing_queue_refuses_unapplied_what_waited_past_the_target() -> None:
    shelf = Shelf()
    delay = QueueDelay("test-batcher", target=0.02, interval=1.0)
    async with running(Batcher("t", shelf, max_batch=10, delay=delay)) as batcher:
        blocker = await in_flight(shelf, batcher, "blocker")
        late = [asyncio.create_task(batcher.submit(f"late{i}")) for i in range(3)]
        await asyncio.sleep(0.05)  # queued behind the batch in flight, past the target
        # Batches have started past the target for a whole interval: the queue stands.
        now = time.monotonic()
        delay.head_waited(0.5, now - 1.0)
        delay.head_waited(0.5, now)
        assert delay.standing
        shelf.gate.set()
        assert await blocker == "BLOCKER"
        outcomes = await asyncio.gather(*late, return_exceptions=True)
        assert all(isinstance(o, Overloaded) for o in outcomes), outcomes
        # The queue is empty again: the next request is served at once, and its batch,
        # started within the target, ends the standing state.
        assert await batcher.submit("fresh") == "FRESH"
    assert not delay.standing
    assert shelf.seen == ["blocker", "fresh"]


async def test_a_burst_that_waits_past_the_target_once_is_served() -> None:
    shelf = Shelf()
    delay = QueueDelay("test-batcher", target=0.02, interval=1.0)
    async with running(Batcher("t", shelf, max_batch=10, delay=delay)) as batcher:
        blocker = await in_flight(shelf, batcher, "blocker")
        burst = [asyncio.create_task(batcher.submit(f"b{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        shelf.gate.set()
        assert await blocker == "BLOCKER"
        assert await asyncio.gather(*burst) == ["B0", "B1", "B2"]
    assert not delay.standing
