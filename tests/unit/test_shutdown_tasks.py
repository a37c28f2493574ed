"""Stopping tasks that lose a cancellation (pure asyncio)."""

from __future__ import annotations

import asyncio

from server.shutdown import cancel_and_wait


async def test_a_task_that_swallowed_one_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def loop_like_a_wait_for_race() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as asyncio.wait_for on 3.11 can lose it

    task = asyncio.create_task(loop_like_a_wait_for_race())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], "test", timeout=5, every=0.05)
    assert swallowed == 1 and task.cancelled()


async def test_a_task_that_never_stops_is_left_after_the_timeout() -> None:
    deaf = True

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not deaf:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert not await cancel_and_wait([task], "test", timeout=0.2, every=0.05)
    assert not task.done()
    deaf = False  # leave nothing running behind the test
    assert await cancel_and_wait([task], "test", timeout=5)


async def test_tasks_already_done_need_no_wait() -> None:
    async def quick() -> None:
        return None

    task = asyncio.create_task(quick())
    await task
    assert await cancel_and_wait([task], "test", timeout=0.01)
