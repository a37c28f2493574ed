"""The PNG plots of the runs, and `make plots`, which copies the key plot of the newest run of
each kind from .reports/ into docs/benchmarks/ under a stable name for BENCHMARKS.md:

    docs/benchmarks/day.png    reference day: orders/s asked and served, p50/p99 over time
    docs/benchmarks/knee.png   closed-loop knee: rate and p99 by callers, beside the empty call
    docs/benchmarks/bench.png  make bench: the ratio table and the hot-SKU sale, as bars
    docs/benchmarks/soak.png   make soak: CPU per order and order creation latency per window

    python -m loadtests.plots                         # the newest run of each kind
    python -m loadtests.plots .reports/day-20261126-101500 .reports/knee-20261126-103000

Drawing needs matplotlib (a dev dependency); without it the runs still write their tables.
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests.locust.daycurve import CompressedDay, DayCurve
from loadtests.locuststats import AGGREGATED, History
from loadtests.report import CREATE, ROOT
from loadtests.sampler import ProcessSampler

if TYPE_CHECKING:
    from loadtests.drift import WindowFigures
    from loadtests.knee import KneeRow

PUBLISHED = ROOT / "docs" / "benchmarks"
"""Where `make plots` puts the plots BENCHMARKS.md shows."""

KINDS = {"day": ("day", "report"), "knee": ("knee",), "bench": ("bench",), "soak": ("soak",)}
"""Each published plot (<kind>.png) and the run folders (<prefix>-<time>) that draw it."""


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_day(history: History, plan: dict[str, Any], sampler: ProcessSampler, path: Path) -> bool:
    """Orders/s asked and served, latency and server memory over the run, from Locust's
    stats history (served: its cumulative counts, per 3 s; latency: its 10 s percentiles)."""
    plt = _pyplot()
    if plt is None:
        return False
    started = float(plan["started_at"])
    duration = float(plan["duration_s"])
    first, last = (float(x) for x in plan["plateau"])
    day = CompressedDay(
        DayCurve(), duration_s=duration, peak_hold_s=last - first, scale=float(plan["scale"])
    )
    end = started + duration
    create = next((name for name in CREATE if name in history.samples), CREATE[0])
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    xs = [x / 2 for x in range(int(duration * 2) + 1)]
    top.plot(xs, [day.rate(x) for x in xs], label="orders/s asked (shape)", color="black", lw=1)
    served = history.rates([create], started, end, step_s=3.0)
    top.plot([t for t, _ in served], [n for _, n in served], label="orders created /s", lw=1)
    every = history.rates([AGGREGATED], started, end, step_s=3.0)
    top.plot([t for t, _ in every], [n for _, n in every], label="all calls /s", lw=0.8, alpha=0.6)
    top.set_ylabel("per second")
    top.legend(loc="upper left")
    top.set_title("Reference day, compressed: throughput, latency and server memory")
    for name, field, label, style in (
        (create, "p50_ms", "create p50", "-"),
        (create, "p99_ms", "create p99", "-"),
        ("InventoryService/GetStock", "p99_ms", "GetStock p99", "--"),
    ):
        series = [(t, v) for t, v in history.percentiles(name, started, end, field) if v > 0]
        mid.plot([t for t, _ in series], [v for _, v in series], style, label=label)
    mid.set_ylabel("ms (Locust, last 10 s)")
    mid.set_yscale("log")
    mid.legend(loc="upper left")
    for group in ("server", "postgres", "redis"):
        samples = sampler.samples.get(group, [])
        if samples:
            low.plot(
                [s.at - started for s in samples],
                [sum(s.pss_kb.values()) / 1024 for s in samples],
                label=f"{group} PSS MB",
            )
    low.set_ylabel("MB")
    low.set_xlabel("seconds into the run")
    low.legend(loc="upper left")
    for axis in (top, mid, low):
        axis.axvspan(first, last, color="orange", alpha=0.1)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_soak(
    figures: Sequence[WindowFigures], groups: Sequence[str], plateau_start: float, path: Path
) -> bool:
    """Per window of the plateau: CPU per order (the processes under test, the whole machine,
    each group) and order creation's mean, p50 and p99 (Locust's stats history)."""
    plt = _pyplot()
    if plt is None or not figures:
        return False
    xs = [((w.start + w.end) / 2 - plateau_start) / 60 for w in figures]
    fig, (cpu, latency) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    cpu.plot(xs, [w.stack_cpu_ms for w in figures], "o-", lw=2, label="under test")
    cpu.plot(xs, [w.machine_cpu_ms for w in figures], "o-", label="whole machine")
    for group in groups:
        cpu.plot(xs, [w.cpu_ms.get(group, math.nan) for w in figures], ".--", lw=1, label=group)
    cpu.set_ylabel("CPU ms per order created")
    cpu.set_ylim(bottom=0)
    cpu.legend(loc="best", fontsize="small")
    cpu.set_title("Soak: the day's plateau, per window")
    for field in ("mean_ms", "p50_ms", "p99_ms"):
        label = f"create {field.removesuffix('_ms')}"
        latency.plot(xs, [getattr(w.create, field) for w in figures], "o-", label=label)
    latency.set_ylabel("ms (Locust)")
    latency.set_ylim(bottom=0)
    latency.set_xlabel("minutes into the plateau (window middle)")
    latency.legend(loc="upper left")
    for axis in (cpu, latency):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_knee(rows: Sequence[KneeRow], labels: tuple[str, str], path: Path, title: str) -> bool:
    """Rate and p99 by callers: the empty call, create alone and checkouts."""
    plt = _pyplot()
    if plt is None or not rows:
        return False
    create, checkout = labels
    callers = [str(r.callers) for r in rows]
    fig, (rate, p99) = plt.subplots(1, 2, figsize=(12, 5))
    rate.plot(callers, [r.empty.ops_per_s for r in rows], "o-", label="empty call /s")
    rate.plot(callers, [r.create.ops_per_s for r in rows], "o-", label=f"{create} /s")
    rate.plot(callers, [r.checkout.ops_per_s for r in rows], "o-", label=f"{checkout} /s")
    rate.set_yscale("log")
    rate.set_ylabel("per second")
    p99.plot(callers, [r.empty.p99_ms for r in rows], "o-", label="empty call")
    p99.plot(callers, [r.create.p99_ms for r in rows], "o-", label=create)
    p99.plot(callers, [r.checkout.p99_ms for r in rows], "o-", label=checkout)
    p99.set_ylabel("p99 ms")
    for axis in (rate, p99):
        axis.set_xlabel("closed-loop callers")
        axis.legend()
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_bench(
    ratios: Sequence[tuple[int, float, float]],
    sale: Sequence[tuple[str, float, int]],
    path: Path,
) -> bool:
    """Left: Reserve+Commit and sold-out rejections as a share of the empty call, by callers
    ((callers, ratio, ratio)). Right: the hot-SKU sale's purchases/s by design ((label,
    purchases/s, units oversold))."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.4
    positions = list(range(len(ratios)))
    left.bar(
        [x - width / 2 for x in positions],
        [r[1] * 100 for r in ratios],
        width,
        label="Reserve+Commit",
    )
    left.bar(
        [x + width / 2 for x in positions],
        [r[2] * 100 for r in ratios],
        width,
        label="sold-out rejection",
    )
    left.set_xticks(positions, [str(r[0]) for r in ratios])
    left.set_xlabel("callers")
    left.set_ylabel("% of the empty call's rate, same run")
    left.legend()
    if sale:
        labels = [f"{label}\n({oversold:,} oversold)" for label, _, oversold in sale]
        right.barh(labels, [rate for _, rate, _ in sale])
        right.invert_yaxis()
        right.set_xlabel("purchases/s")
        right.set_title("hot-SKU sale")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle("make bench")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def newest_run(reports: Path, prefixes: Sequence[str], plot: str) -> Path | None:
    """The newest run folder named <prefix>-<time> that holds `plot`."""
    found = [d for p in prefixes for d in reports.glob(f"{p}-*") if (d / plot).exists()]
    return max(found, key=lambda d: d.name.split("-", 1)[1], default=None)


def publish(runs: Sequence[Path], reports: Path, into: Path) -> list[tuple[Path, Path]]:
    """Copy <kind>.png of each named run folder (or of the newest run of each kind) to
    `into`/<kind>.png; what was copied, (from, to)."""
    into.mkdir(parents=True, exist_ok=True)
    copied = []
    for kind, prefixes in KINDS.items():
        plot = f"{kind}.png"
        named = [r for r in runs if r.name.split("-", 1)[0] in prefixes and (r / plot).exists()]
        source = named[-1] if named else None if runs else newest_run(reports, prefixes, plot)
        if source is not None:
            shutil.copyfile(source / plot, into / plot)
            copied.append((source / plot, into / plot))
    return copied


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main() -> None:
    """Entry point of `make plots`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: the newest)")
    parser.add_argument("--reports", type=Path, default=ROOT / ".reports")
    parser.add_argument("--into", type=Path, default=PUBLISHED)
    args = parser.parse_args()
    copied = publish([r.resolve() for r in args.runs], args.reports, args.into)
    for source, target in copied:
        print(f"{_shown(source)} -> {_shown(target)}")
    if not copied:
        raise SystemExit(
            f"no plots found in {args.reports}: run make bench, load-day, load-knee or soak"
        )


if __name__ == "__main__":
    main()
