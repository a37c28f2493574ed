"""The throughput knee: a staircase of offered rates, and which step was the last one held.

A step is held ("sustained") when the server answered at least `min_ratio` of the offered rate
and the step's p99 stayed within the bound. The knee is the last held step before the first
step that was not: past it, latency or throughput has given way.

Latency histograms here are Locust's: response time (ms, rounded by Locust) -> count.
Nothing here imports Locust.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Staircase:
    """Offered rates start, start + step, ... up to `top`, each held `step_s` seconds."""

    start: float = 100.0
    step: float = 100.0
    top: float = 3000.0
    step_s: float = 20.0
    settle_s: float = 5.0
    """Seconds at the start of each step left out of its measurement (users still spawning)."""

    def __post_init__(self) -> None:
        if self.start <= 0 or self.step <= 0 or self.top < self.start:
            raise ValueError("need 0 < start <= top and a positive step")
        if not 0 <= self.settle_s < self.step_s:
            raise ValueError("need 0 <= settle_s < step_s")

    @property
    def rates(self) -> list[float]:
        """Every offered rate, lowest first."""
        count = math.floor((self.top - self.start) / self.step + 1e-9) + 1
        return [self.start + i * self.step for i in range(count)]

    def step_at(self, run_s: float) -> int | None:
        """The index of the step running at second `run_s`, None once the staircase is over."""
        index = int(run_s // self.step_s)
        return index if index < len(self.rates) else None


@dataclass(frozen=True)
class StepResult:
    """What one step measured."""

    offered: float
    """Operations per second asked for."""
    achieved: float
    """Operations per second completed (expected rejections included, failures not)."""
    p99_ms: float
    failures: int = 0


@dataclass(frozen=True)
class Knee:
    """The outcome of a staircase."""

    sustained: StepResult | None
    """The last step held before the first one that was not; None if not even the first."""
    broken: StepResult | None
    """The first step that was not held; None if every step was."""
    reason: str
    """Why `broken` was not held, or why the staircase ended."""


def held(result: StepResult, p99_bound_ms: float, min_ratio: float) -> str | None:
    """None when the step was held, else the reason it was not."""
    if result.failures:
        return f"{result.failures} failed calls"
    if not math.isfinite(result.p99_ms) or result.p99_ms > p99_bound_ms:
        return f"p99 {result.p99_ms:.0f} ms > {p99_bound_ms:g} ms"
    if result.achieved < min_ratio * result.offered:
        return f"achieved {result.achieved:,.0f}/s < {min_ratio:.0%} of {result.offered:,.0f}/s"
    return None


def find_knee(
    results: Sequence[StepResult], p99_bound_ms: float = 100.0, min_ratio: float = 0.95
) -> Knee:
    """The last held step before the first one that was not."""
    sustained: StepResult | None = None
    for result in results:
        reason = held(result, p99_bound_ms, min_ratio)
        if reason is not None:
            return Knee(sustained, result, reason)
        sustained = result
    return Knee(sustained, None, "every step was held" if results else "no steps ran")


def histogram_difference(after: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    """The calls in histogram `after` that were not yet in the earlier histogram `before`."""
    return {ms: n - before.get(ms, 0) for ms, n in after.items() if n - before.get(ms, 0) > 0}


def histogram_percentile(histogram: Mapping[int, int], q: float) -> float:
    """The q-th percentile (0..100) of a latency histogram, by nearest rank; NaN when empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    total = sum(histogram.values())
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * total))
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return float(ms)
    return float(max(histogram))  # unreachable: the loop reaches `total`


def merge_histograms(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Several histograms pooled into one."""
    pooled: dict[int, int] = {}
    for histogram in histograms:
        for ms, n in histogram.items():
            pooled[ms] = pooled.get(ms, 0) + n
    return pooled
