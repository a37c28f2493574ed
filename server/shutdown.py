"""Stopping background tasks when a cancellation can be lost.

On Python 3.11, `asyncio.wait_for` (used inside asyncpg and redis-py) returns the inner
result and drops a cancellation that arrives as the inner operation completes; a loop
around such a call then runs on, and a plain `task.cancel(); await task` waits for it
forever. That hung a server's shutdown under load. So a task is cancelled again each
time a short wait passes, for a bounded time, and a task that still runs is logged and
left behind rather than holding the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[object]], what: str, *, timeout: float = 10.0, every: float = 0.5
) -> bool:
    """Cancel `tasks` (again every `every` seconds) until all ended or `timeout` passed;
    whether they all ended."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        wait = min(every, deadline - loop.time())
        if wait <= 0:
            log.error(
                "%s did not stop", what, extra={"tasks": ",".join(t.get_name() for t in pending)}
            )
            return False
        _, pending = await asyncio.wait(pending, timeout=wait)
    return True
