"""Memory and CPU of the processes under test, sampled from /proc while a run goes on.

A group is a root process and all its descendants (a multi-worker server is a supervisor and
its workers). Each sample reads VmRSS from /proc/<pid>/status and the CPU ticks from
/proc/<pid>/stat of every process in each group, and any gauges asked for beside them (such
as Redis's own count of the memory it uses, which its RSS does not give back when it falls).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_kb(pid: int) -> int | None:
    """The resident set size of `pid` in kB, or None if it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0  # a zombie has no VmRSS line


def pss_kb(pid: int) -> int | None:
    """The proportional set size of `pid` in kB (shared pages split among their users)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds used by `pid` so far, or None if it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces: the fields of interest follow its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found = [pid]
    i = 0
    while i < len(found):
        for task in Path(f"/proc/{found[i]}/task").glob("*/children"):
            try:
                found.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
        i += 1
    return found


def machine_cpu_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def redis_used_mb(url: str) -> Callable[[], float | None]:
    """A gauge of the Redis at `url`: INFO memory's used_memory in MB, or None when it does
    not answer. Each reading opens and closes its own connection."""

    def read() -> float | None:
        try:
            with redis.Redis.from_url(url, socket_timeout=2.0) as client:
                return int(client.info("memory")["used_memory"]) / 1024 / 1024
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None

    return read


@dataclass
class Sample:
    """One reading of one group."""

    at: float
    rss_kb: dict[int, int]
    pss_kb: dict[int, int]
    cpu_s: dict[int, float]


@dataclass
class ProcessSampler:
    """Samples groups of processes every `interval` seconds on a background thread."""

    roots: Callable[[], dict[str, list[int]]]
    """Returns the current roots of each group (load processes come and go)."""
    interval: float = 0.5
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    machine: list[tuple[float, float]] = field(default_factory=list)
    """(time, busy CPU seconds of the whole machine)."""
    gauges: dict[str, Callable[[], float | None]] = field(default_factory=dict)
    """Figures read on each sample beside the processes, by name."""
    readings: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """(time, value) of each gauge, when it answered."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin sampling (again, after a stop)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop sampling (takes one last sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                self.sample()
                return

    def sample(self) -> None:
        """Read every group now."""
        now = time.time()
        self.machine.append((now, machine_cpu_seconds()))
        # A process counts in the first group that reaches it: a load tool that started the
        # stack itself has the server, PostgreSQL and Redis below it, named before "load".
        counted: set[int] = set()
        for group, roots in self.roots().items():
            rss: dict[int, int] = {}
            pss: dict[int, int] = {}
            cpu: dict[int, float] = {}
            for root in roots:
                for pid in descendants(root):
                    if pid in counted:
                        continue
                    counted.add(pid)
                    kb, seconds = rss_kb(pid), cpu_seconds(pid)
                    if kb is not None and seconds is not None:
                        rss[pid], cpu[pid] = kb, seconds
                        pss[pid] = pss_kb(pid) or 0
            self.samples.setdefault(group, []).append(Sample(now, rss, pss, cpu))
        for name, read in self.gauges.items():
            if (value := read()) is not None:
                self.readings.setdefault(name, []).append((now, value))

    def max_rss_mb(self, group: str) -> tuple[float, float]:
        """(largest RSS of a single process, largest PSS of the whole group) in MB over the run.

        The group figure is PSS: RSS would count PostgreSQL's shared buffers once per backend.
        """
        single = total = 0
        for sample in self.samples.get(group, []):
            if sample.rss_kb:
                single = max(single, max(sample.rss_kb.values()))
                total = max(total, sum(sample.pss_kb.values()))
        return single / 1024.0, total / 1024.0

    def rss_mb_at(self, group: str, when: float) -> float:
        """The largest RSS of a single process of the group in MB, at the last sample at or
        before `when` (NaN before the first)."""
        series = [s for s in self.samples.get(group, []) if s.at <= when and s.rss_kb]
        return max(series[-1].rss_kb.values()) / 1024.0 if series else float("nan")

    def reading_at(self, name: str, when: float) -> float:
        """The gauge's last reading at or before `when` (NaN before the first)."""
        series = [value for at, value in self.readings.get(name, []) if at <= when]
        return series[-1] if series else float("nan")

    def processes(self, group: str) -> int:
        """The most processes the group had at once."""
        return max((len(s.rss_kb) for s in self.samples.get(group, [])), default=0)

    def cpu_percent(self, group: str, start: float, end: float) -> float:
        """Average CPU of the whole group between two times, in % of one core.

        Processes that start or end inside the window count for the part they were seen.
        """
        series = [s for s in self.samples.get(group, []) if start <= s.at <= end]
        if len(series) < 2:
            return float("nan")
        first: dict[int, float] = dict(series[0].cpu_s)
        last: dict[int, float] = {}
        for sample in series:
            for pid, seconds in sample.cpu_s.items():
                first.setdefault(pid, 0.0)  # started inside the window
                last[pid] = max(last.get(pid, 0.0), seconds)
        used = sum(last[pid] - first[pid] for pid in last)
        return 100.0 * used / (series[-1].at - series[0].at)

    def machine_cpu_percent(self, start: float, end: float) -> float:
        """Average CPU busy on the whole machine between two times, in % of one core."""
        series = [m for m in self.machine if start <= m[0] <= end]
        if len(series) < 2:
            return float("nan")
        return 100.0 * (series[-1][1] - series[0][1]) / (series[-1][0] - series[0][0])


def pin(root: int, cpus: set[int]) -> None:
    """Keep `root`, every process below it and all their threads on `cpus` (what `taskset
    -a` does); processes started by them later inherit it."""
    for pid in descendants(root):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (OSError, ValueError):
                pass  # gone meanwhile
