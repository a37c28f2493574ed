"""Run a Locust scenario headless from one call: a single process, or a master and N workers.

One Locust process generates at most a few thousand gRPC calls per second (one core, gevent),
so heavier scenarios spread their users over worker processes: the master (bound to
127.0.0.1 only) runs the shape and merges statistics; each worker runs its share of users.
Every process dies with the caller. Locust's CSV files (with --csv-full-history: a row per
request name every second) and HTML report, each process's log, the shape's plan and the
business tallies land in the run's folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.processes import free_port, spawn

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILES = Path(__file__).resolve().parent / "locust"
_STOP_GRACE_S = 60.0


@dataclass(frozen=True)
class Swarm:
    """What to run."""

    locustfile: str
    """File name under loadtests/locust/ (day.py, flash.py)."""
    target: str
    out_dir: Path
    processes: int = 1
    options: Sequence[str] = ()
    """Scenario options, given to every process."""
    users: int | None = None
    spawn_rate: float | None = None
    run_time_s: float | None = None
    """Only for scenarios without a shape, which stop themselves."""
    expected_s: float = 600.0
    """How long the run should take at most; it is stopped some time after that."""


@dataclass
class SwarmRun:
    """A finished run."""

    exit_code: int
    csv_prefix: Path
    """Locust's CSV files are <csv_prefix>_stats.csv, _stats_history.csv, _failures.csv."""
    html: Path
    run_dir: Path
    """Where the plan and the tallies are."""
    started_at: float
    ended_at: float
    load_pids: list[int] = field(default_factory=list)


def _command(swarm: Swarm, role: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILES / swarm.locustfile),
        "--host",
        swarm.target,
        "--run-dir",
        str(swarm.out_dir),
        "--stop-timeout",
        "10",
        *role,
        *swarm.options,
    ]


class SwarmProcesses:
    """The master (or single) process and the workers of a running swarm."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self.out = swarm.out_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv_prefix = self.out / "locust"
        self.html = self.out / "locust.html"
        self.master: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[object] = []

    def _spawn(
        self, command: list[str], log_name: str, *, show_stdout: bool
    ) -> subprocess.Popen[bytes]:
        log = open(self.out / log_name, "ab")
        self._logs.append(log)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        return spawn(
            command,
            death_signal=signal.SIGTERM,
            cwd=ROOT,
            env=env,
            stdout=None if show_stdout else log,
            stderr=log,
        )

    def start(self) -> None:
        """Start the workers first, then the master that waits for them."""
        s = self.swarm
        report = [
            "--headless",
            "--only-summary",
            "--csv",
            str(self.csv_prefix),
            "--csv-full-history",
            "--html",
            str(self.html),
            "--exit-code-on-error",
            "1",
        ]
        if s.users is not None:
            report += ["--users", str(s.users)]
        if s.spawn_rate is not None:
            report += ["--spawn-rate", str(s.spawn_rate)]
        if s.run_time_s is not None:
            report += ["--run-time", f"{round(s.run_time_s)}s"]
        if s.processes <= 1:
            self.master = self._spawn(_command(s, report), "locust.log", show_stdout=True)
            return
        port = str(free_port())
        for number in range(s.processes):
            worker = ["--worker", "--master-host", "127.0.0.1", "--master-port", port]
            self.workers.append(
                self._spawn(_command(s, worker), f"worker-{number}.log", show_stdout=False)
            )
        master = [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            port,
            "--expect-workers",
            str(s.processes),
            *report,
        ]
        self.master = self._spawn(_command(s, master), "locust.log", show_stdout=True)

    @property
    def load_pids(self) -> list[int]:
        """The processes that make calls."""
        if self.workers:
            return [w.pid for w in self.workers]
        return [self.master.pid] if self.master is not None else []

    def wait(self) -> int:
        """Wait for the master to finish (stopping it if it overruns) and for the workers."""
        assert self.master is not None
        try:
            code = self.master.wait(timeout=self.swarm.expected_s + _STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            print("the load run overran its time: stopping it", file=sys.stderr, flush=True)
            self.master.terminate()
            code = self.master.wait()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.terminate()
                worker.wait()
        return code

    def stop(self) -> None:
        """Stop whatever still runs and close the logs."""
        for process in [*self.workers, *([self.master] if self.master else [])]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]


def run_swarm(swarm: Swarm, processes_seen: list[int] | None = None) -> SwarmRun:
    """Run the swarm to its end; `processes_seen` receives the load processes' pids."""
    procs = SwarmProcesses(swarm)
    started = time.time()
    try:
        procs.start()
        if processes_seen is not None:
            processes_seen.extend(procs.load_pids)
        code = procs.wait()
    finally:
        procs.stop()
    return SwarmRun(
        exit_code=code,
        csv_prefix=procs.csv_prefix,
        html=procs.html,
        run_dir=swarm.out_dir,
        started_at=started,
        ended_at=time.time(),
        load_pids=procs.load_pids,
    )
