"""The article's carrier outage (`make load-outage`): the reference day's plateau with the
primary carrier down for a window, compressed like the day.

    python -m loadtests.outage [--duration 180 --outage-at 60 --outage 60 --scale 0.2
                                --workers 2 --processes 1 --drain 120]

The day's 10-minute plateau is held for 60 s in the compressed day (day.py), so the
article's 10-minute outage is 60 s here by default. A fresh local stack (loadtests/stack.py)
serves; the simulated warehouse and carriers and `--workers` fulfilment workers run beside
it as `make run` starts them; Locust buyers create and pay orders at the plateau's rate
times --scale; `--outage-at` seconds into the load the primary carrier's simulator is put
into an outage of `--outage` seconds (its own fault knob). After the load, the run waits up
to `--drain` seconds for every paid order to ship, then reports:

- orders stuck: paid and not shipped at the end (must be 0: a check);
- orders booked with two carriers (must be 0: a check);
- paid-to-shipped time p50/p99 for orders paid before, during and after the outage, from
  the orders' own history (PostgreSQL's percentile_cont over order_history), and which
  carrier took them;
- every breaker transition of every worker, and a timeline plot (outage.png);
- what the run left in Redis, the fulfilment group's ledger included, and the memory budget
  that gives at the reference day's volume (loadtests/redis_memory.py).

Written to .reports/outage-<time>/ (summary.md, Locust's CSV and HTML, outage.png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from devstack.config import DevSettings
from devstack.stack import partners_and_worker
from fulfilment.config import FulfilmentSettings
from loadtests import redis_memory, report
from loadtests.arguments import non_negative_float, positive_float, positive_int
from loadtests.locust.daycurve import DayCurve
from loadtests.locust.options import catalogue
from loadtests.locust.record import read_plan, read_tallies
from loadtests.locuststats import read_stats
from loadtests.plots import _pyplot
from loadtests.report import Run
from loadtests.stack import open_stack, stock_catalogue
from loadtests.swarm import Swarm, run_swarm
from runtime.processes import free_port
from server.config import from_env

ROOT = Path(__file__).resolve().parent.parent
DEEP_STOCK = 1_000_000
PHASES = ("before", "during", "after")
DAY_RATE = DayCurve().peak_per_s
_STATE_Y = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}


@dataclass(frozen=True)
class Window:
    """When the outage was (wall-clock seconds)."""

    start: float
    end: float


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def _wait_ready(urls: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                _http("GET", f"{url}/_faults")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"simulator {url} not ready within {timeout} s") from None
                time.sleep(0.2)


def fulfil_settings(stack_target: str, pg_dsn: str, redis_url: str) -> FulfilmentSettings:
    """The workers' settings: defaults, except the stale-sync scan compressed 10x like the
    plateau (every 90 s, stale after 180 s) and tracking asked for every 6 s."""
    return FulfilmentSettings().with_overrides(
        pg_dsn=pg_dsn,
        redis_url=redis_url,
        fulfil_target=stack_target,
        fulfil_metrics_port=0,
        stale_scan_interval_s=90.0,
        stale_after_s=180.0,
        track_poll_s=6.0,
    )


def partner_ports() -> DevSettings:
    """The simulators on free ports."""
    return DevSettings().with_overrides(
        dev_warehouse_port=free_port(),
        dev_primary_carrier_port=free_port(),
        dev_fallback_carrier_port=free_port(),
    )


# The stack's server is plaintext (loadtests/stack.py): the workers' client calls it so.
WORKER_ENV = {"STOCKCORE_PLAINTEXT": "true"}


async def _outcome(dsn: str, run_tag: str, drain_s: float) -> tuple[int, float]:
    """Wait up to `drain_s` for every paid order of the run to ship; (stuck, waited s)."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            stuck: int = await conn.fetchval(
                "SELECT count(*) FROM stockcore.orders WHERE status = 2 AND order_id LIKE $1",
                f"{run_tag}%",
            )
            waited = time.monotonic() - started
            if stuck == 0 or waited >= drain_s:
                return stuck, waited
            await asyncio.sleep(1.0)
    finally:
        await conn.close()


async def _read(dsn: str, run_tag: str, window: Window) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        phase = (
            "CASE WHEN extract(epoch FROM p.changed_at) < $2 THEN 'before'"
            " WHEN extract(epoch FROM p.changed_at) < $3 THEN 'during' ELSE 'after' END"
        )
        latency = await conn.fetch(
            f"SELECT {phase} AS phase, count(*) AS n,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.changed_at - p.changed_at)) AS p50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM s.changed_at - p.changed_at)) AS p99,"
            " max(extract(epoch FROM s.changed_at - p.changed_at)) AS worst"
            " FROM stockcore.order_history p JOIN stockcore.order_history s USING (order_id)"
            " WHERE p.to_status = 2 AND s.to_status = 3 AND p.order_id LIKE $1 GROUP BY 1",
            f"{run_tag}%",
            window.start,
            window.end,
        )
        carriers = await conn.fetch(
            f"SELECT {phase} AS phase, f.carrier, count(*) AS n"
            " FROM stockcore.fulfilments f JOIN stockcore.order_history p USING (order_id)"
            " WHERE p.to_status = 2 AND f.order_id LIKE $1 AND f.carrier IS NOT NULL"
            " GROUP BY 1, 2 ORDER BY 1, 2",
            f"{run_tag}%",
            window.start,
            window.end,
        )
        points = await conn.fetch(
            "SELECT extract(epoch FROM p.changed_at)::float8 AS paid,"
            " extract(epoch FROM s.changed_at - p.changed_at)::float8 AS wait, f.carrier"
            " FROM stockcore.order_history p JOIN stockcore.order_history s USING (order_id)"
            " JOIN stockcore.fulfilments f USING (order_id)"
            " WHERE p.to_status = 2 AND s.to_status = 3 AND p.order_id LIKE $1",
            f"{run_tag}%",
        )
        moves = await conn.fetch(
            "SELECT worker, partner, from_state, to_state, reason,"
            " extract(epoch FROM at)::float8 AS at"
            " FROM stockcore.fulfilment_breaker_transitions ORDER BY at, id"
        )
        dead = await conn.fetchval(
            "SELECT count(*) FROM stockcore.fulfilment_dead_letters WHERE order_id LIKE $1",
            f"{run_tag}%",
        )
    finally:
        await conn.close()
    return {
        "latency": {r["phase"]: r for r in latency},
        "carriers": carriers,
        "points": points,
        "moves": moves,
        "dead": dead,
    }


def _plot(data: dict[str, Any], t0: float, window: Window, primary: str, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    for carrier in sorted({p["carrier"] for p in data["points"]}):
        xs = [p["paid"] - t0 for p in data["points"] if p["carrier"] == carrier]
        ys = [p["wait"] for p in data["points"] if p["carrier"] == carrier]
        top.scatter(xs, ys, s=3, alpha=0.5, label=f"booked with {carrier}")
    top.set_yscale("log")
    top.set_ylabel("paid -> shipped (s, log)")
    top.legend(loc="upper right", markerscale=4)
    top.set_title("Primary carrier outage on the plateau: paid-to-shipped time per order")
    for worker in sorted({m["worker"] for m in data["moves"]}):
        for partner in sorted({m["partner"] for m in data["moves"] if m["worker"] == worker}):
            mine = [m for m in data["moves"] if m["worker"] == worker and m["partner"] == partner]
            xs, ys = [0.0], [0]
            for m in mine:
                xs += [m["at"] - t0, m["at"] - t0]
                ys += [ys[-1], _STATE_Y[m["to_state"]]]
            xs.append(max(window.end - t0, xs[-1]) + 60)
            ys.append(ys[-1])
            bottom.plot(xs, ys, drawstyle="steps-post", label=f"{partner} @ {worker}")
            bottom.scatter(
                [m["at"] - t0 for m in mine], [_STATE_Y[m["to_state"]] for m in mine], s=12
            )
    bottom.set_yticks([0, 1, 2], ["CLOSED", "HALF_OPEN", "OPEN"])
    bottom.set_ylabel("breaker state")
    bottom.set_xlabel("seconds since the load began")
    bottom.legend(loc="upper right", fontsize="small")
    for ax in (top, bottom):
        ax.axvspan(window.start - t0, window.end - t0, color="red", alpha=0.1, label=None)
    top.text(window.start - t0, top.get_ylim()[1], f" {primary} down", va="top", color="darkred")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def outage(args: argparse.Namespace) -> int:
    """Run the scenario; the exit code (1 when a check fails)."""
    run = Run("outage", Path(args.reports))
    prefix = f"OUT{run.tag[-6:]}"
    skus = catalogue(prefix, args.catalogue)
    with open_stack(ROOT / ".data" / "load-outage") as stack:
        assert stack.pg_dsn and stack.redis_url, "the scenario reads PostgreSQL and Redis"
        settings = fulfil_settings(stack.target, stack.pg_dsn, stack.redis_url)
        ports = partner_ports()
        primary = f"http://127.0.0.1:{ports.dev_primary_carrier_port}"
        fallback = f"http://127.0.0.1:{ports.dev_fallback_carrier_port}"
        run.say(
            "# Carrier outage on the reference day's plateau, compressed",
            "",
            f"- command: `{' '.join(sys.argv[1:]) or '(defaults)'}` (python -m loadtests.outage)",
            f"- machine: {report.describe_machine()}",
            f"- load: {DAY_RATE * args.scale:g} orders/s (the plateau's 237/s x {args.scale:g})"
            f" for {args.duration:g} s; {settings.primary_carrier} down from {args.outage_at:g} s"
            f" for {args.outage:g} s; fallback {settings.fallback_carrier}",
            f"- {args.workers} fulfilment worker(s), breaker: slow > {settings.breaker_slow_call_s:g} s,"
            f" errors > {settings.breaker_error_rate:.0%} of >= {settings.breaker_min_calls}"
            f" calls in {settings.breaker_window_s:g} s, {settings.breaker_consecutive_failures}"
            f" consecutive failures; open {settings.breaker_open_s:g} s",
            f"- load average before the run: {Path('/proc/loadavg').read_text().split()[:3]}",
            "",
        )
        asyncio.run(stock_catalogue(stack.target, skus, DEEP_STOCK, key=run.tag))
        with partners_and_worker(
            ports, settings, run.dir / "logs", workers=args.workers, worker_env=WORKER_ENV
        ):
            _wait_ready([f"http://127.0.0.1:{ports.dev_warehouse_port}", primary, fallback])
            window_box: list[float] = []

            def go_down() -> None:
                window_box.append(time.time())
                _http("PUT", f"{primary}/_faults", {"outage_s": args.outage})

            load_started = time.time()
            # Locust needs a few seconds to start; the plan's started_at is the truth.
            timer = threading.Timer(args.outage_at + 3.0, go_down)
            timer.start()
            options = [
                "--run-tag", run.tag, "--catalogue-prefix", prefix,
                "--catalogue-size", str(args.catalogue), "--payment-window",
                str(args.payment_window), "--plateau-duration", str(args.duration),
                "--scale", str(args.scale),
            ]  # fmt: skip
            swarm = run_swarm(
                Swarm(
                    "outage.py",
                    stack.target,
                    run.dir,
                    args.processes,
                    options,
                    expected_s=args.duration + 60,
                )
            )
            timer.cancel()
            run.say(f"Locust exited with {swarm.exit_code}", "", "## After the load", "")
            stuck, waited = asyncio.run(_outcome(stack.pg_dsn, run.tag, args.drain))
            # With the workers' consumer group (fulfilment) and its ledger in Redis.
            footprint = redis_memory.measure(stack.redis_url, stack.pg_dsn)
            bookings = [
                b["order_id"]
                for url in (primary, fallback)
                for b in _http("GET", f"{url}/_bookings")["bookings"]
            ]
        window = Window(window_box[0], window_box[0] + args.outage) if window_box else None
        if window is None:
            run.check(False, "the outage began during the load")
            return run.finish()
        data = asyncio.run(_read(stack.pg_dsn, run.tag, window))
    plan = read_plan(swarm.run_dir)
    t0 = float(plan["started_at"]) if plan else load_started
    tally = read_tallies(swarm.run_dir)
    paid = tally["pay_done"]
    twice = len(bookings) - len(set(bookings))
    run.check(
        stuck == 0,
        f"orders stuck (paid, not shipped) at the end: {stuck} (drained in {waited:.0f} s)",
    )
    run.check(twice == 0, f"orders booked with two carriers or twice: {twice}")
    run.check(paid > 0, f"orders paid by the buyers: {paid:,}")
    shipped = sum(r["n"] for r in data["latency"].values())
    run.check(shipped == paid, f"orders shipped {shipped:,} = orders paid {paid:,}")
    run.say(
        f"- outage: {window.start - t0:.0f} s to {window.end - t0:.0f} s after the load began;"
        f" dead letters: {data['dead']}",
        "",
        "## Paid-to-shipped time by when the order was paid",
        "",
    )
    rows = []
    for name in PHASES:
        r = data["latency"].get(name)
        split = ", ".join(
            f"{c['carrier']} {c['n']:,}" for c in data["carriers"] if c["phase"] == name
        )
        if r is None:
            rows.append([name, 0, "-", "-", "-", split])
        else:
            rows.append(
                [
                    name,
                    r["n"],
                    f"{r['p50']:.2f} s",
                    f"{r['p99']:.2f} s",
                    f"{r['worst']:.2f} s",
                    split,
                ]
            )
    run.say(*report.table(["paid", "orders", "p50", "p99", "max", "booked with"], rows))
    run.say("", "## Breaker transitions (s since the load began)", "")
    run.say(
        *report.table(
            ["at", "worker", "partner", "from", "to", "reason"],
            [
                [
                    f"{m['at'] - t0:.1f}",
                    m["worker"],
                    m["partner"],
                    m["from_state"],
                    m["to_state"],
                    m["reason"],
                ]
                for m in data["moves"]
            ],
        )
        if data["moves"]
        else ["none"]
    )
    stats = read_stats(swarm.csv_prefix)
    run.say("", "## Buyers' calls: Locust's _stats.csv", "")
    run.say(*report.table(report.LATENCY_HEADER, report.latency_rows(stats)))
    run.check(report.failed_calls(stats) == 0, f"failed calls: {report.failed_calls(stats)}")
    run.say("", "## Business tally", "", ", ".join(f"{k}={v:,}" for k, v in sorted(tally.items())))
    run.say("", "## Redis memory after the run (loadtests/redis_memory.py)", "")
    run.say(*redis_memory.report_lines(footprint, from_env()))
    if _plot(data, t0, window, settings.primary_carrier, run.dir / "outage.png"):
        run.say("", f"plot: {run.dir.name}/outage.png")
        if args.publish:
            shutil.copy(run.dir / "outage.png", ROOT / "docs" / "benchmarks" / "outage.png")
    return run.finish()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-outage`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    parser.add_argument(
        "--duration", type=positive_float, default=180.0, help="seconds of plateau load"
    )
    parser.add_argument(
        "--outage-at", type=non_negative_float, default=60.0, help="seconds into the load"
    )
    parser.add_argument(
        "--outage", type=positive_float, default=60.0, help="seconds the carrier is down"
    )
    parser.add_argument("--scale", type=positive_float, default=0.2, help="factor on 237 orders/s")
    parser.add_argument("--workers", type=positive_int, default=2, help="fulfilment workers")
    parser.add_argument("--processes", type=positive_int, default=1, help="Locust load processes")
    parser.add_argument(
        "--drain", type=non_negative_float, default=120.0, help="seconds to wait for shipping"
    )
    parser.add_argument("--payment-window", type=positive_float, default=8.0)
    parser.add_argument("--catalogue", type=positive_int, default=1000, help="SKUs")
    parser.add_argument(
        "--publish", action="store_true", help="copy the plot to docs/benchmarks/outage.png"
    )
    args = parser.parse_args(argv)
    if args.outage_at >= args.duration:
        parser.error(
            f"--outage-at {args.outage_at:g} must fall within the load (--duration {args.duration:g})"
        )
    return args


def main() -> None:
    """Entry point of `make load-outage`."""
    raise SystemExit(outage(parse_args()))


if __name__ == "__main__":
    main()
