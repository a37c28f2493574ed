"""Locust's own statistics of a run, read back from the CSV files it writes with
`--csv <prefix> --csv-full-history`: the whole run per request name (<prefix>_stats.csv),
one row per request name every second (<prefix>_stats_history.csv) and the failures
(<prefix>_failures.csv). The scenarios' figures come from these, not from a log of their own.

What a history row holds, in Locust's words: "Total Request Count", "Total Failure Count"
and "Total Average Response Time" are cumulative since the start, so the calls and their mean
over any span between two rows follow exactly; the percentile columns ("50%", "99%" ...) are
Locust's *current* percentiles, over its sliding window of the last 10 seconds. With several
load processes the master's figures lag the workers' by up to one report interval (3 s).
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"
"""The name of Locust's row over every request."""

PERCENTILE_WINDOW_S = 10.0
"""The span of Locust's current percentiles (locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW)."""


def _number(text: str) -> float:
    """A CSV cell as a number; Locust writes "N/A" for a percentile of no calls."""
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class Entry:
    """One request name over the whole run (a row of <prefix>_stats.csv)."""

    name: str
    requests: int
    failures: int
    per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def ok(self) -> int:
        """Calls that did not fail."""
        return self.requests - self.failures


def read_stats(prefix: Path) -> dict[str, Entry]:
    """Every request name's row of <prefix>_stats.csv, the Aggregated row included."""
    entries: dict[str, Entry] = {}
    with open(f"{prefix}_stats.csv", newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            entries[row["Name"]] = Entry(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                per_s=_number(row["Requests/s"]),
                mean_ms=_number(row["Average Response Time"]),
                p50_ms=_number(row["50%"]),
                p99_ms=_number(row["99%"]),
                max_ms=_number(row["Max Response Time"]),
            )
    return entries


@dataclass(frozen=True)
class Failure:
    """A failure kind (a row of <prefix>_failures.csv): the status code name, for gRPC."""

    name: str
    error: str
    occurrences: int


def read_failures(prefix: Path) -> list[Failure]:
    """Every row of <prefix>_failures.csv."""
    with open(f"{prefix}_failures.csv", newline="", encoding="utf-8") as rows:
        return [
            Failure(row["Name"], row["Error"], int(row["Occurrences"]))
            for row in csv.DictReader(rows)
        ]


@dataclass(frozen=True)
class Sample:
    """One request name at one second (a row of <prefix>_stats_history.csv)."""

    at: float
    """Unix time of the row (whole seconds)."""
    requests: int
    """Total Request Count: calls so far."""
    failures: int
    """Total Failure Count: failed calls so far."""
    mean_ms: float
    """Total Average Response Time: the mean of every call so far."""
    p50_ms: float
    """50%: the median over the last 10 seconds."""
    p99_ms: float
    """99%: the 99th percentile over the last 10 seconds."""


@dataclass(frozen=True)
class Span:
    """What a request name did between two history rows."""

    seconds: float
    calls: int
    ok: int
    mean_ms: float
    """Exact, from the cumulative count and mean at both ends."""
    p50_ms: float
    """The median of the rows' 10-second p50s, taken as the p99s below."""
    p99_ms: float
    """The median of the rows' 10-second p99 within the span (windows wholly inside it
    when there are any): the typical p99 of the span."""
    worst_p99_ms: float
    """The highest of those 10-second p99s."""

    @property
    def ok_per_s(self) -> float:
        """Calls that did not fail, per second."""
        return self.ok / self.seconds if self.seconds > 0 else math.nan


class History:
    """Every request name's rows of <prefix>_stats_history.csv, in time order."""

    def __init__(self, samples: dict[str, list[Sample]]) -> None:
        """Wrap rows already grouped by name and sorted by time."""
        self.samples = samples

    @classmethod
    def read(cls, prefix: Path) -> History:
        """Read <prefix>_stats_history.csv."""
        samples: dict[str, list[Sample]] = {}
        with open(f"{prefix}_stats_history.csv", newline="", encoding="utf-8") as rows:
            for row in csv.DictReader(rows):
                samples.setdefault(row["Name"], []).append(
                    Sample(
                        at=float(row["Timestamp"]),
                        requests=int(row["Total Request Count"]),
                        failures=int(row["Total Failure Count"]),
                        mean_ms=_number(row["Total Average Response Time"]),
                        p50_ms=_number(row["50%"]),
                        p99_ms=_number(row["99%"]),
                    )
                )
        for series in samples.values():
            series.sort(key=lambda s: s.at)
        return cls(samples)

    @property
    def names(self) -> list[str]:
        """Every request name seen, without the Aggregated row."""
        return sorted(name for name in self.samples if name != AGGREGATED)

    def at(self, name: str, when: float) -> Sample | None:
        """The last row of `name` at or before `when`, or None."""
        series = self.samples.get(name, [])
        i = bisect_right([s.at for s in series], when)
        return series[i - 1] if i else None

    def span(self, name: str, start: float, end: float) -> Span:
        """What `name` did from `start` to `end` (Unix seconds)."""
        first = self.at(name, start)
        last = self.at(name, end)
        zero = Sample(start, 0, 0, math.nan, math.nan, math.nan)
        first = first or zero
        last = last or first
        calls = last.requests - first.requests
        seconds = last.at - first.at if last is not first else end - start
        total_ms = _total_ms(last) - _total_ms(first)
        p99s = self._windows_within(name, start, end, "p99_ms")
        p50s = self._windows_within(name, start, end, "p50_ms")
        return Span(
            seconds=seconds,
            calls=calls,
            ok=calls - (last.failures - first.failures),
            mean_ms=total_ms / calls if calls else math.nan,
            p50_ms=statistics.median(p50s) if p50s else math.nan,
            p99_ms=statistics.median(p99s) if p99s else math.nan,
            worst_p99_ms=max(p99s) if p99s else math.nan,
        )

    def _windows_within(self, name: str, start: float, end: float, field: str) -> list[float]:
        """The rows' `field` (a 10-second percentile) from start to end: of the windows
        wholly inside the span when there are any, else of every row within it."""
        rows = [
            (s.at, float(getattr(s, field)))
            for s in self.samples.get(name, [])
            if start <= s.at <= end and not math.isnan(getattr(s, field))
        ]
        return [v for at, v in rows if at >= start + PERCENTILE_WINDOW_S] or [v for _, v in rows]

    def rates(
        self, names: Iterable[str], start: float, end: float, step_s: float = 1.0
    ) -> list[tuple[float, float]]:
        """(seconds from `start`, calls that did not fail per second) of `names` together,
        between rows at least `step_s` apart, from `start` to `end`."""
        wanted = list(names)
        times: list[float] = []
        for at in sorted(
            {s.at for name in wanted for s in self.samples.get(name, []) if start <= s.at <= end}
        ):
            if not times or at - times[-1] >= step_s:
                times.append(at)
        points = []
        for before, after in itertools.pairwise(times):
            ok = sum(_ok(self.at(n, after)) - _ok(self.at(n, before)) for n in wanted)
            points.append((after - start, ok / (after - before)))
        return points

    def percentiles(
        self, name: str, start: float, end: float, field: str
    ) -> list[tuple[float, float]]:
        """(seconds from `start`, the row's `field`: "p50_ms" or "p99_ms") of `name`."""
        return [
            (s.at - start, float(getattr(s, field)))
            for s in self.samples.get(name, [])
            if start <= s.at <= end and not math.isnan(getattr(s, field))
        ]


def _ok(sample: Sample | None) -> int:
    return 0 if sample is None else sample.requests - sample.failures


def _total_ms(sample: Sample) -> float:
    return 0.0 if sample.requests == 0 else sample.mean_ms * sample.requests


def pooled_mean_ms(spans: Sequence[Span]) -> float:
    """The mean over several request names' spans, weighted by their calls."""
    calls = sum(s.calls for s in spans)
    if not calls:
        return math.nan
    return sum(s.mean_ms * s.calls for s in spans if s.calls) / calls
