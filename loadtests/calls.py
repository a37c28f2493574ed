"""The raw call logs of a Locust run (loadtests/locust/calllog.py), pooled and summarised.

Percentiles here are exact over the calls selected (any names, any time window), unlike
Locust's rounded histograms, and pool all load processes.
"""

from __future__ import annotations

import json
import math
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loadtests.driver import percentile


@dataclass(frozen=True)
class Latency:
    """Count, rate and latency of a selection of calls."""

    count: int
    per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float


class Calls:
    """Completed calls as columns: end time (Unix s), name, latency (ms), status code name."""

    def __init__(
        self,
        ends: Iterable[float] = (),
        names: Iterable[str] = (),
        latencies_ms: Iterable[float] = (),
        codes: Iterable[str] = (),
    ) -> None:
        self.ends = array("d", ends)
        self.names = list(names)
        self.latencies_ms = array("d", latencies_ms)
        self.codes = list(codes)
        if not len(self.ends) == len(self.names) == len(self.latencies_ms) == len(self.codes):
            raise ValueError("columns differ in length")

    def __len__(self) -> int:
        return len(self.ends)

    @classmethod
    def read(cls, directory: Path) -> Calls:
        """Every calls-*.tsv in `directory`, pooled."""
        calls = cls()
        for path in sorted(directory.glob("calls-*.tsv")):
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    end, name, ms, code = line.rstrip("\n").split("\t")
                    calls.ends.append(float(end))
                    calls.names.append(name)
                    calls.latencies_ms.append(float(ms))
                    calls.codes.append(code)
        return calls

    def select(
        self,
        names: Iterable[str] | None = None,
        start: float = -math.inf,
        end: float = math.inf,
        ok_only: bool = False,
    ) -> Calls:
        """The calls of `names` (all when None) that ended within [start, end)."""
        wanted = None if names is None else set(names)
        picked = [
            i
            for i in range(len(self))
            if start <= self.ends[i] < end
            and (wanted is None or self.names[i] in wanted)
            and (not ok_only or self.codes[i] == "OK")
        ]
        return Calls(
            (self.ends[i] for i in picked),
            (self.names[i] for i in picked),
            (self.latencies_ms[i] for i in picked),
            (self.codes[i] for i in picked),
        )

    def latency(self, window_s: float | None = None) -> Latency:
        """Count, rate over `window_s` (or the span of the calls) and latency figures."""
        values = sorted(self.latencies_ms)
        if window_s is None:
            window_s = (max(self.ends) - min(self.ends)) if len(self) > 1 else 0.0
        return Latency(
            count=len(values),
            per_s=len(values) / window_s if window_s > 0 else math.nan,
            mean_ms=math.fsum(values) / len(values) if values else math.nan,
            p50_ms=percentile(values, 50),
            p99_ms=percentile(values, 99),
            max_ms=values[-1] if values else math.nan,
        )

    def by_name_and_code(self) -> Counter[tuple[str, str]]:
        """How many calls each (name, code) pair had."""
        return Counter(zip(self.names, self.codes, strict=True))

    def per_second(self, start: float, end: float, bin_s: float = 1.0) -> list[tuple[float, int]]:
        """Calls completed in each `bin_s` bin from `start`: (bin start - start, count)."""
        bins = max(1, math.ceil((end - start) / bin_s))
        counts = [0] * bins
        for t in self.ends:
            i = int((t - start) // bin_s)
            if 0 <= i < bins:
                counts[i] += 1
        return [(i * bin_s, n) for i, n in enumerate(counts)]

    def percentile_series(
        self, start: float, end: float, q: float, bin_s: float = 5.0
    ) -> list[tuple[float, float]]:
        """The q-th latency percentile in each `bin_s` bin: (bin start - start, ms)."""
        bins = max(1, math.ceil((end - start) / bin_s))
        buckets: list[list[float]] = [[] for _ in range(bins)]
        for t, ms in zip(self.ends, self.latencies_ms, strict=True):
            i = int((t - start) // bin_s)
            if 0 <= i < bins:
                buckets[i].append(ms)
        return [(i * bin_s, percentile(sorted(b), q)) for i, b in enumerate(buckets) if b]


def read_tallies(directory: Path) -> Counter[str]:
    """The business tallies of every load process, added up."""
    total: Counter[str] = Counter()
    for path in directory.glob("tally-*.json"):
        total.update(json.loads(path.read_text()))
    return total


def read_plan(directory: Path) -> dict[str, object]:
    """What the shape recorded about the run, or nothing."""
    path = directory / "plan.json"
    return json.loads(path.read_text()) if path.exists() else {}
