"""The reference day's order rate, and that day compressed into a run of a few minutes.

The reference is a live-streaming shop's day: 500,000 orders, with a peak of 237 orders/s.
Outside its evening live-stream sale the day follows a diurnal curve (a night trough, a
morning climb, lunch, the evening high); the sale ramps up over 5 minutes, holds 237 orders/s
for 10 minutes and ebbs over 15. The level of the diurnal part is solved so that the whole
day adds up to exactly `orders_per_day`.

A run cannot last a day, so `CompressedDay` plays the day faster, but not uniformly: order
rates are never scaled by the compression (so the run sees the day's real rates, times
`scale`), the quiet hours are played fastest, the sale's ramps slower, and the plateau is held
at 237 orders/s for `peak_hold_s` of the run, long enough to measure.

Nothing here imports Locust, so it can be tested and plotted on its own.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

DAY_S = 86_400.0
"""Seconds in a day."""

HOURLY_WEIGHTS: tuple[float, ...] = (
    0.55, 0.35, 0.22, 0.14, 0.10, 0.10, 0.14, 0.25, 0.42, 0.60, 0.75, 0.82,
    0.88, 0.82, 0.78, 0.78, 0.80, 0.82, 0.86, 0.94, 1.00, 1.00, 0.92, 0.76,
)  # fmt: skip
"""Relative order intensity at each full hour 00:00 .. 23:00, linear in between and wrapping
from 23:00 to the next 00:00. The live-stream sale must fall inside the flat 20:00-21:00."""


def _weight(t: float) -> float:
    """The diurnal weight at second `t` of the day."""
    hours = (t % DAY_S) / 3600.0
    hour = int(hours)
    frac = hours - hour
    return HOURLY_WEIGHTS[hour] * (1.0 - frac) + HOURLY_WEIGHTS[(hour + 1) % 24] * frac


@dataclass(frozen=True)
class DayCurve:
    """Orders per second at each second of the reference day."""

    orders_per_day: float = 500_000.0
    peak_per_s: float = 237.0
    sale_start_s: float = 20 * 3600 + 5 * 60
    """When the sale's ramp up begins (20:05)."""
    ramp_up_s: float = 300.0
    plateau_s: float = 600.0
    ramp_down_s: float = 900.0

    def __post_init__(self) -> None:
        if min(self.ramp_up_s, self.ramp_down_s) < 0 or self.plateau_s <= 0:
            raise ValueError("ramps must not be negative and the plateau must be positive")
        if not (20 * 3600 <= self.sale_start_s and self.sale_end_s <= 21 * 3600):
            raise ValueError(
                "the sale must lie within 20:00-21:00, where the diurnal curve is flat"
            )
        if not 0 < self.base_per_s < self.peak_per_s:
            raise ValueError(
                f"{self.orders_per_day:,.0f} orders/day cannot hold a {self.plateau_s:g} s "
                f"plateau of {self.peak_per_s:g}/s above a positive diurnal base"
            )

    @property
    def plateau_start_s(self) -> float:
        """When the plateau begins."""
        return self.sale_start_s + self.ramp_up_s

    @property
    def plateau_end_s(self) -> float:
        """When the plateau ends."""
        return self.plateau_start_s + self.plateau_s

    @property
    def sale_end_s(self) -> float:
        """When the sale's ramp down has ended."""
        return self.plateau_end_s + self.ramp_down_s

    @cached_property
    def base_per_s(self) -> float:
        """Orders/s of the diurnal curve where its weight is 1 (the evening high)."""
        diurnal_weight_s = 3600.0 * sum(HOURLY_WEIGHTS)  # exact integral of the linear curve
        sale_weight_s = self.plateau_s + (self.ramp_up_s + self.ramp_down_s) / 2.0
        # orders = base * (diurnal - sale) + peak * sale, since the sale lifts weight 1 to peak.
        return (self.orders_per_day - self.peak_per_s * sale_weight_s) / (
            diurnal_weight_s - sale_weight_s
        )

    def sale_envelope(self, t: float) -> float:
        """0 outside the sale, 1 on its plateau, linear on its ramps."""
        t %= DAY_S
        if t < self.sale_start_s or t >= self.sale_end_s:
            return 0.0
        if t < self.plateau_start_s:
            return (t - self.sale_start_s) / self.ramp_up_s
        if t < self.plateau_end_s:
            return 1.0
        return (self.sale_end_s - t) / self.ramp_down_s

    def rate(self, t: float) -> float:
        """Orders per second at second `t` of the day."""
        base = self.base_per_s * _weight(t)
        return base + (self.peak_per_s - self.base_per_s) * self.sale_envelope(t)

    def orders_between(self, start: float, end: float, step: float = 1.0) -> float:
        """Orders from second `start` to `end`, by the midpoint rule."""
        steps = max(1, math.ceil((end - start) / step))
        width = (end - start) / steps
        return sum(self.rate(start + (i + 0.5) * width) for i in range(steps)) * width


@dataclass(frozen=True)
class CompressedDay:
    """The reference day played in `duration_s` seconds, holding its plateau `peak_hold_s`."""

    curve: DayCurve = DayCurve()
    duration_s: float = 240.0
    peak_hold_s: float = 60.0
    ramp_share: float = 0.4
    """Share of the run outside the plateau given to the sale's ramps (the rest is the day)."""
    scale: float = 1.0
    """Factor on every rate: 1 is the reference day, 0.5 half of it."""

    def __post_init__(self) -> None:
        if not 0 < self.peak_hold_s < self.duration_s:
            raise ValueError("need 0 < peak_hold_s < duration_s")
        if not 0 < self.ramp_share < 1:
            raise ValueError("ramp_share must be within (0, 1)")
        if self.scale <= 0:
            raise ValueError("scale must be positive")

    @cached_property
    def _knots(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Matching breakpoints (run second, day second) of the piecewise-linear time map."""
        c = self.curve
        rest = self.duration_s - self.peak_hold_s
        quiet = rest * (1.0 - self.ramp_share)
        ramps = rest * self.ramp_share
        before = c.sale_start_s
        after = DAY_S - c.sale_end_s
        run_lengths = (
            quiet * before / (before + after),
            ramps * c.ramp_up_s / (c.ramp_up_s + c.ramp_down_s),
            self.peak_hold_s,
            ramps * c.ramp_down_s / (c.ramp_up_s + c.ramp_down_s),
            quiet * after / (before + after),
        )
        day = (0.0, c.sale_start_s, c.plateau_start_s, c.plateau_end_s, c.sale_end_s, DAY_S)
        run = [0.0]
        for length in run_lengths:
            run.append(run[-1] + length)
        run[-1] = self.duration_s  # no rounding drift at the end
        return tuple(run), day

    def day_second(self, run_s: float) -> float:
        """The second of the day that second `run_s` of the run plays."""
        run, day = self._knots
        run_s = min(max(run_s, 0.0), self.duration_s)
        i = min(bisect.bisect_right(run, run_s), len(run) - 1) - 1
        span = run[i + 1] - run[i]
        frac = (run_s - run[i]) / span if span > 0 else 0.0
        return day[i] + frac * (day[i + 1] - day[i])

    def rate(self, run_s: float) -> float:
        """Orders per second the run asks for at second `run_s`."""
        return self.curve.rate(self.day_second(run_s)) * self.scale

    @property
    def plateau(self) -> tuple[float, float]:
        """The run seconds during which the plateau is held."""
        run, _ = self._knots
        return run[2], run[3]

    @property
    def peak_per_s(self) -> float:
        """The plateau's orders/s in this run."""
        return self.curve.peak_per_s * self.scale
