"""Several server processes on one port: each is started, restarted if it dies, and
all are stopped together.

Workers are spawned, not forked (gRPC's core must not cross a fork) and share the port
through SO_REUSEPORT, so the kernel spreads new connections over the live ones. A worker
that dies (a crash, an OOM kill, kill -9) is started again at once, at most once a second
per place, while the others keep serving. SIGINT or SIGTERM goes to every worker at the
same moment, so they drain in parallel (server/app.py, App.stop), and a worker still
alive `kill_after` seconds later is killed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)

RESTART_INTERVAL_S = 1.0


class Supervisor:
    """Runs `count` processes of `target(index)` until told to stop."""

    def __init__(self, target: Callable[[int], None], count: int, kill_after: float) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._target = target
        self._kill_after = kill_after
        self._stopping = False
        self._started_at = [0.0] * count
        self.workers: list[BaseProcess] = [self._start(i) for i in range(count)]
        self.restarts = 0

    def _start(self, index: int) -> BaseProcess:
        process = self._context.Process(target=self._target, args=(index,), daemon=True)
        process.start()
        self._started_at[index] = time.monotonic()
        return process

    def stop(self, *_: object) -> None:
        """Send SIGTERM to every worker at once (a signal handler)."""
        self._stopping = True
        for process in self.workers:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def run(self) -> None:
        """Supervise until stopped, then wait for every worker to end."""
        while not self._stopping:
            multiprocessing.connection.wait([p.sentinel for p in self.workers], timeout=0.5)
            if self._stopping:
                break
            for index, process in enumerate(self.workers):
                if process.is_alive():
                    continue
                wait = self._started_at[index] + RESTART_INTERVAL_S - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if self._stopping:
                    break
                log.error(
                    "worker %d exited with %s; starting it again",
                    index,
                    process.exitcode,
                    extra={"worker": index, "exitcode": process.exitcode},
                )
                self.workers[index] = self._start(index)
                self.restarts += 1
        deadline = time.monotonic() + self._kill_after
        for process in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.workers:
            if process.is_alive():
                log.error("worker %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
