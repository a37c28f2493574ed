"""Run a Locust scenario end to end: stack, catalogue, load, checks, report.

    python -m loadtests.scenarios day   [--duration 240 --scale 1 --processes 2 --compare]
    python -m loadtests.scenarios flash [--users 2000 --stock 1000 --processes 2]
    python -m loadtests.scenarios knee  [--p99-bound 100 --levels 16,64,128,256]

Each starts a fresh local stack under .data/load (or uses the servers named by
STOCKCORE_TARGET, STOCKCORE_PG_DSN, STOCKCORE_REDIS_URL; see loadtests/stack.py), stocks a
catalogue through AdjustStock, runs the Locust scenario headless with --processes load
processes, samples the memory and CPU of every process under test, checks the server's
invariants after the run, and writes Locust's CSV and HTML report, the raw call log, a
summary and PNG plots to .reports/<scenario>-<time>/. The exit code is 1 when a check of
correctness fails (oversell, ledger, holds left, failed calls); performance targets are
reported as MET or MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

from loadtests import invariants, knee, report
from loadtests.calls import Calls, read_plan, read_tallies
from loadtests.locust.options import catalogue
from loadtests.locust.steps import StepResult, find_knee
from loadtests.outbox import payment_lag
from loadtests.sampler import ProcessSampler
from loadtests.stack import Stack, open_stack, stock_catalogue, wait_for_no_holds
from loadtests.swarm import Swarm, SwarmRun, run_swarm

ROOT = Path(__file__).resolve().parent.parent
DEEP_STOCK = 1_000_000


class Run:
    """One scenario run: its folder, its printed and written summary, its verdict."""

    def __init__(self, scenario: str, reports: Path) -> None:
        self.tag = f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.dir = (reports / self.tag).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.failed: list[str] = []

    def say(self, *lines: str) -> None:
        """Print and keep for summary.md."""
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def check(self, ok: bool, what: str) -> None:
        """Record a pass/fail line."""
        self.say(f"- {'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            self.failed.append(what)

    def target(self, met: bool, what: str) -> None:
        """Record a performance target: reported, but only checks decide the exit code."""
        self.say(f"- {'MET' if met else 'MISSED'}: {what}")

    def finish(self) -> int:
        """Write summary.md; the exit code."""
        (self.dir / "summary.md").write_text("\n".join(self.lines) + "\n")
        print(
            f"\nreport folder: {self.dir.relative_to(ROOT) if self.dir.is_relative_to(ROOT) else self.dir}"
        )
        return 1 if self.failed else 0


def _sampler(stack: Stack, load_pids: list[int]) -> ProcessSampler:
    def roots() -> dict[str, list[int]]:
        groups = {name: [pid] for name, pid in stack.service_pids.items()}
        groups["locust"] = list(load_pids)
        return groups

    return ProcessSampler(roots)


def _swarm(
    run: Run, stack: Stack, swarm: Swarm, sampler: ProcessSampler, load_pids: list[int]
) -> SwarmRun:
    sampler.start()
    try:
        result = run_swarm(swarm, load_pids)
    finally:
        sampler.stop()
    run.say(
        f"Locust exited with {result.exit_code}; CSV and HTML: {result.csv_prefix.name}_*.csv, {result.html.name}"
    )
    return result


def _common_head(run: Run, args: argparse.Namespace, stack: Stack, what: str) -> None:
    run.say(
        f"# {what}",
        "",
        f"- command: `{' '.join(sys.argv[1:])}` (python -m loadtests.scenarios)",
        f"- machine: {report.describe_machine()}",
        "- the load generator, the server, PostgreSQL and Redis all share this machine's cores",
        f"- server: {'fresh local stack' if stack.owned else 'existing, ' + stack.target}, "
        f"{args.server_workers} worker process(es); load: {args.processes} Locust process(es); "
        f"api: {args.api}",
        f"- load average before the run: {Path('/proc/loadavg').read_text().split()[:3]}",
        "",
    )


def _invariants(
    run: Run, stack: Stack, skus: list[str], commit_skus: list[str]
) -> invariants.SqlCheck | None:
    api = asyncio.run(invariants.check_via_api(stack.target, skus))
    run.check(
        api.ok and api.skus == len(skus),
        f"GetStock of all {api.skus:,} catalogue SKUs: {api.negative_on_hand} with on_hand < 0, "
        f"{api.over_reserved} with reserved > on_hand (oversold: 0 required)",
    )
    if stack.pg_dsn is None:
        run.say("- SQL checks skipped: no STOCKCORE_PG_DSN")
        return None
    sql = asyncio.run(invariants.check_via_sql(stack.pg_dsn, commit_skus))
    run.check(
        sql.ok,
        f"SQL over all {sql.skus:,} SKUs: on_hand < 0: {sql.negative_on_hand}, reserved > on_hand: "
        f"{sql.over_reserved}, reserved != units of HELD reservations: {sql.reserved_not_held}, "
        f"stock != movement ledger: {sql.off_ledger}, holds >10 s past expiry: {sql.overdue_holds}",
    )
    return sql


# --- the reference day -------------------------------------------------------------------


def day(args: argparse.Namespace) -> int:
    """The reference day, compressed; with --compare, beside the competitor's table."""
    run = Run("report" if args.compare else "day", Path(args.reports))
    prefix = f"DAY{run.tag[-6:]}"
    skus = catalogue(prefix, args.catalogue)
    with open_stack(ROOT / ".data" / "load", server_workers=args.server_workers) as stack:
        _common_head(
            run, args, stack, "Reference day (500,000 orders/day, 237 orders/s peak), compressed"
        )
        asyncio.run(stock_catalogue(stack.target, skus, DEEP_STOCK, key=run.tag))
        buffers_before = (
            asyncio.run(invariants.buffer_stats(stack.pg_dsn)) if stack.pg_dsn else None
        )
        options = [
            "--api", args.api, "--run-tag", run.tag, "--catalogue-prefix", prefix,
            "--catalogue-size", str(args.catalogue), "--payment-window", str(args.payment_window),
            "--day-duration", str(args.duration), "--peak-hold", str(args.peak_hold),
            "--scale", str(args.scale), "--pacing", str(args.pacing),
        ]  # fmt: skip
        load_pids: list[int] = []
        sampler = _sampler(stack, load_pids)
        swarm = _swarm(
            run,
            stack,
            Swarm(
                "day.py",
                stack.target,
                run.dir,
                args.processes,
                options,
                expected_s=args.duration + 60,
            ),
            sampler,
            load_pids,
        )
        run.say("", "## After the run", "")
        drained = asyncio.run(wait_for_no_holds(stack.target, skus, args.payment_window + 20))
        run.check(
            drained, "every hold was paid, released or expired within the payment window + 20 s"
        )
        _invariants(run, stack, skus, [])
        buffer_ratio = (
            asyncio.run(invariants.buffer_stats(stack.pg_dsn)).hit_ratio_since(buffers_before)
            if stack.pg_dsn and buffers_before
            else math.nan
        )
        levels = asyncio.run(invariants.check_via_api(stack.target, skus))
        deducted = DEEP_STOCK * len(skus) - levels.on_hand
        plan = read_plan(swarm.calls_dir)
        lag = None
        if args.api == "orders" and stack.redis_url and plan:
            found = payment_lag(stack.redis_url, float(plan["started_at"]), swarm.ended_at)  # type: ignore[arg-type]
            lag = (found.p50_s, found.p99_s, found.max_s) if found else None
    tally = read_tallies(swarm.calls_dir)
    paid_units = tally["units_paid"] - tally["units_refunded"]
    ambiguous = tally["pay_ambiguous"] + tally["refund_ambiguous"] + tally["cancel_ambiguous"]
    run.check(
        deducted == paid_units or (ambiguous and abs(deducted - paid_units) <= 6 * ambiguous),
        f"stock deducted on the server ({deducted:,} units) = units paid less refunded by the "
        f"buyers ({paid_units:,}); ambiguous (deadline) payments/cancels: {ambiguous}",
    )
    calls = Calls.read(swarm.calls_dir)
    if not plan or not len(calls):
        run.check(False, "the run recorded calls and its plan")
        return run.finish()
    server_rss, _ = sampler.max_rss_mb("server")
    figures = report.day_figures(
        calls, plan, buffer_hit_ratio=buffer_ratio, payment_lag=lag, server_rss_mb=server_rss
    )
    started = float(plan["started_at"])  # type: ignore[arg-type]
    p0, p1 = (started + x for x in plan["plateau"])  # type: ignore[attr-defined]
    run.say("", "## Beside the reference" if args.compare else "## Headline", "")
    run.say(*report.competitor_table(figures))
    run.say("", f"## Every request over the run ({args.duration:g} s)", "")
    run.say(*report.table(report.LATENCY_HEADER, report.latency_rows(calls, args.duration)))
    run.say(
        "", f"## On the plateau ({p1 - p0:g} s at {figures.target_peak_per_s:g} orders/s asked)", ""
    )
    run.say(
        *report.table(
            report.LATENCY_HEADER, report.latency_rows(calls.select(start=p0, end=p1), p1 - p0)
        )
    )
    run.say("", "## Non-OK outcomes (bracketed names are expected rejections, not failures)", "")
    run.say(*(report.table(["request", "status", "calls"], report.status_rows(calls)) or ["none"]))
    run.say("", "## Business tally (all load processes)", "")
    run.say(", ".join(f"{k}={v:,}" for k, v in sorted(tally.items())) or "none")
    run.say("", "## Processes (CPU on the plateau)", "")
    run.say(*report.table(report.RESOURCE_HEADER, report.resource_rows(sampler, p0, p1)))
    run.say("", "## Targets", "")
    run.target(
        figures.achieved_peak_per_s >= 0.95 * figures.target_peak_per_s,
        f"orders created on the plateau {figures.achieved_peak_per_s:,.1f}/s >= 95% of "
        f"{figures.target_peak_per_s:,.1f}/s asked",
    )
    run.target(
        figures.create_peak.mean_ms <= 10.0,
        f"order creation mean at the peak {figures.create_peak.mean_ms:.1f} ms <= 10 ms",
    )
    run.target(
        figures.create_peak.p99_ms <= 30.0,
        f"order creation p99 at the peak {figures.create_peak.p99_ms:.1f} ms <= 30 ms",
    )
    run.check(figures.failures == 0, f"failed calls (not expected rejections): {figures.failures}")
    run.target(
        server_rss <= 150.0,
        f"server RSS per process, max over the run: {server_rss:,.0f} MB <= 150 MB",
    )
    if report.plot_day(calls, plan, sampler, run.dir / "day.png"):
        run.say("", f"plot: {run.dir.name}/day.png")
    return run.finish()


# --- the flash sale ----------------------------------------------------------------------


def flash(args: argparse.Namespace) -> int:
    """One SKU, --stock units, --users buyers at once: exactly the stock must sell."""
    run = Run("flash", Path(args.reports))
    sku = f"FLASH-{run.tag}"
    with open_stack(ROOT / ".data" / "load", server_workers=args.server_workers) as stack:
        _common_head(
            run,
            args,
            stack,
            f"Flash sale: {args.users:,} buyers for {args.stock:,} units of one SKU",
        )
        asyncio.run(stock_catalogue(stack.target, [sku], args.stock, key=run.tag))
        options = [
            "--api", args.api, "--run-tag", run.tag, "--flash-sku", sku,
            "--flash-stock", str(args.stock), "--payment-window", str(args.payment_window),
            "--abandon-share", str(args.abandon_share),
        ]  # fmt: skip
        load_pids: list[int] = []
        sampler = _sampler(stack, load_pids)
        swarm = _swarm(
            run,
            stack,
            Swarm(
                "flash.py",
                stack.target,
                run.dir,
                args.processes,
                options,
                users=args.users,
                spawn_rate=args.spawn_rate,
                run_time_s=args.max_duration,
                expected_s=args.max_duration + 30,
            ),
            sampler,
            load_pids,
        )
        run.say("", "## After the sale", "")
        run.check(
            swarm.exit_code == 0,
            "Locust's own verdict (printed above by the master): exactly the stock sold",
        )
        drained = asyncio.run(wait_for_no_holds(stack.target, [sku], args.payment_window + 20))
        run.check(drained, "no units still held once the payment window has passed")
        level = asyncio.run(invariants.check_via_api(stack.target, [sku]))
        sql = _invariants(run, stack, [sku], [sku])
    tally = read_tallies(swarm.calls_dir)
    calls = Calls.read(swarm.calls_dir)
    pay_name = "OrderService/ConfirmPayment" if args.api == "orders" else "InventoryService/Commit"
    paid = len(calls.select([pay_name], ok_only=True))
    sold = args.stock - level.on_hand
    run.check(
        level.on_hand == 0 and level.reserved == 0 and paid == args.stock and sold == args.stock,
        f"stock {args.stock:,}: successful payments {paid:,}, deducted {sold:,}, on_hand "
        f"{level.on_hand}, reserved {level.reserved}; oversold {max(0, paid - args.stock, -level.on_hand)}",
    )
    if sql is not None:
        committed = sql.committed_units.get(sku, 0)
        run.check(
            committed == args.stock,
            f"commit movements in the ledger for the SKU: {committed:,} units",
        )
    window = max(swarm.ended_at - swarm.started_at, 1.0)
    run.say("", "## Requests", "")
    run.say(*report.table(report.LATENCY_HEADER, report.latency_rows(calls, window)))
    run.say("", "## Non-OK outcomes (bracketed names are expected rejections: sold out)", "")
    run.say(*(report.table(["request", "status", "calls"], report.status_rows(calls)) or ["none"]))
    run.say("", "## Business tally", "", ", ".join(f"{k}={v:,}" for k, v in sorted(tally.items())))
    run.say("", "## Processes (CPU over the sale)", "")
    run.say(
        *report.table(
            report.RESOURCE_HEADER, report.resource_rows(sampler, swarm.started_at, swarm.ended_at)
        )
    )
    return run.finish()


# --- the knee ------------------------------------------------------------------------------


def _steps_from_calls(calls: Calls, plan: dict[str, object]) -> list[StepResult]:
    """Each step measured exactly from the raw call log (settle time left out)."""
    started = float(plan["started_at"])  # type: ignore[arg-type]
    step_s = float(plan["step_s"])  # type: ignore[arg-type]
    settle = float(plan["settle_s"])  # type: ignore[arg-type]
    measured = calls.select([str(plan["measured"])])
    results = []
    for i, offered in enumerate(plan["rates"]):  # type: ignore[attr-defined]
        begin, end = started + i * step_s + settle, started + (i + 1) * step_s
        window = measured.select(start=begin, end=end)
        ok = sum(1 for code in window.codes if code == "OK" or code == "FAILED_PRECONDITION")
        lat = window.latency(end - begin)
        results.append(StepResult(float(offered), ok / (end - begin), lat.p99_ms, len(window) - ok))
    # The last step may have been cut short when the run stopped.
    return [r for r in results if r.achieved > 0 or r.failures]


def knee_run(args: argparse.Namespace) -> int:
    """The Locust staircase(s), then the closed-loop driver beside the empty call."""
    run = Run("knee", Path(args.reports))
    prefix = f"KNEE{run.tag[-6:]}"
    skus = catalogue(prefix, args.catalogue)
    rows: list[knee.KneeRow] = []
    staircases: dict[str, tuple[list[StepResult], Calls, float, float]] = {}
    with open_stack(ROOT / ".data" / "load", server_workers=args.server_workers) as stack:
        _common_head(run, args, stack, f"Throughput knee (p99 bound {args.p99_bound:g} ms)")
        asyncio.run(stock_catalogue(stack.target, skus, DEEP_STOCK * 1000, key=run.tag))
        load_pids: list[int] = []
        sampler = _sampler(stack, load_pids)
        sampler.start()
        for mode in [m for m in args.modes.split(",") if m and m != "none"]:
            run.say("", f"## Locust staircase, {mode}", "")
            options = [
                "--api", args.api, "--run-tag", f"{run.tag}-{mode}", "--catalogue-prefix", prefix,
                "--catalogue-size", str(args.catalogue), "--ramp-mode", mode,
                "--ramp-start", str(args.ramp_start), "--ramp-step", str(args.ramp_step),
                "--step-seconds", str(args.step_seconds), "--p99-bound", str(args.p99_bound),
                "--per-user-rate", str(args.per_user_rate),
            ]  # fmt: skip
            out = run.dir / mode
            load_pids.clear()
            swarm = _swarm(
                run, stack, Swarm("ramp.py", stack.target, out, args.processes, options, expected_s=args.max_duration),
                sampler, load_pids,
            )  # fmt: skip
            plan = read_plan(swarm.calls_dir)
            calls = Calls.read(swarm.calls_dir)
            steps = _steps_from_calls(calls, plan) if plan else []
            found = find_knee(steps, args.p99_bound, 0.95)
            held_steps = steps.index(found.broken) if found.broken is not None else len(steps)
            run.say(
                *report.table(
                    ["offered /s", "served /s", "p99 ms", "failed", "held"],
                    [
                        [
                            f"{s.offered:,.0f}",
                            f"{s.achieved:,.1f}",
                            f"{s.p99_ms:.1f}",
                            s.failures,
                            "yes" if i < held_steps else "no",
                        ]
                        for i, s in enumerate(steps)
                    ],
                )
            )
            best = found.sustained
            run.say(
                "",
                f"highest rate held ({mode}): "
                + (f"{best.achieved:,.0f}/s served at p99 {best.p99_ms:.0f} ms" if best else "none")
                + f"; next step: {found.reason}",
                f"CPU during the staircase (100% = one core): locust {sampler.cpu_percent('locust', swarm.started_at, swarm.ended_at):,.0f}%, "
                f"server {sampler.cpu_percent('server', swarm.started_at, swarm.ended_at):,.0f}%, "
                f"postgres {sampler.cpu_percent('postgres', swarm.started_at, swarm.ended_at):,.0f}%, "
                f"whole machine {sampler.machine_cpu_percent(swarm.started_at, swarm.ended_at):,.0f}%",
            )
            staircases[mode] = (
                steps,
                calls.select([str(plan.get("measured", ""))]),
                swarm.started_at,
                swarm.ended_at,
            )
        if args.levels and args.levels != "none":
            run.say("", "## Closed loop (grpc.aio), beside the empty call", "")
            run.say(
                f"each cell: {args.closed_duration:g} s after 1 s warm-up, load from {args.closed_processes} process(es)",
                "",
            )
            rows = knee.measure(
                stack.target,
                api=args.api,
                prefix=prefix,
                size=args.catalogue,
                levels=[int(x) for x in args.levels.split(",")],
                duration=args.closed_duration,
                processes=args.closed_processes,
            )
            run.lines.append(knee.table_header(args.api))
            run.lines.extend(knee.format_row(r) for r in rows)
        sampler.stop()
        run.say("", "## After the run", "")
        _invariants(run, stack, skus, [])
        server_rss, _ = sampler.max_rss_mb("server")
    run.say("", "## Targets", "")
    if rows:
        create = knee.best_within(rows, args.p99_bound, checkout=False)
        checkout = knee.best_within(rows, args.p99_bound, checkout=True)
        run.target(
            create is not None and create.create.ops_per_s >= 1000,
            "closed loop, order creation >= 1,000/s with p99 <= bound: "
            + (f"{create.create.ops_per_s:,.0f}/s at {create.callers} callers (p99 {create.create.p99_ms:.0f} ms; empty call {create.empty.ops_per_s:,.0f}/s)" if create else "none within the bound"),
        )  # fmt: skip
        run.target(
            checkout is not None and checkout.checkout.ops_per_s >= 500,
            "closed loop, checkouts >= 500/s with p99 <= bound: "
            + (f"{checkout.checkout.ops_per_s:,.0f}/s at {checkout.callers} callers (p99 {checkout.checkout.p99_ms:.0f} ms; empty call {checkout.empty.ops_per_s:,.0f}/s)" if checkout else "none within the bound"),
        )  # fmt: skip
    run.target(
        server_rss <= 150.0,
        f"server RSS per process, max over the run: {server_rss:,.0f} MB <= 150 MB",
    )
    for mode, (steps, calls, started, ended) in staircases.items():
        closed = [
            (r.callers, r.empty.ops_per_s, r.create.ops_per_s, r.checkout.ops_per_s) for r in rows
        ]
        if report.plot_knee(
            steps,
            closed,
            calls,
            started,
            ended,
            run.dir / f"knee-{mode}.png",
            f"Throughput knee, Locust staircase ({mode}) and closed loop",
        ):
            run.say(f"plot: {run.dir.name}/knee-{mode}.png")
    return run.finish()


def main() -> None:
    """Entry point of the load-* make targets."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", choices=["orders", "inventory"], default="orders")
    common.add_argument("--processes", type=int, default=2, help="Locust load processes")
    common.add_argument(
        "--server-workers", type=int, default=1, help="server processes (fresh stack)"
    )
    common.add_argument("--payment-window", type=float, default=8.0)
    common.add_argument("--catalogue", type=int, default=1000, help="SKUs")
    sub = parser.add_subparsers(dest="scenario", required=True)

    d = sub.add_parser("day", parents=[common], help="the reference day, compressed")
    d.add_argument("--duration", type=float, default=240.0)
    d.add_argument("--peak-hold", type=float, default=60.0)
    d.add_argument("--scale", type=float, default=1.0)
    d.add_argument("--pacing", type=float, default=2.0)
    d.add_argument(
        "--compare", action="store_true", help="title it as the report beside the competitor"
    )
    d.set_defaults(run=day)

    f = sub.add_parser("flash", parents=[common], help="a flash sale of one SKU")
    f.add_argument("--users", type=int, default=2000)
    f.add_argument("--spawn-rate", type=float, default=500.0)
    f.add_argument("--stock", type=int, default=1000)
    f.add_argument("--abandon-share", type=float, default=0.05)
    f.add_argument("--max-duration", type=float, default=180.0)
    f.set_defaults(run=flash)

    k = sub.add_parser("knee", parents=[common], help="the throughput knee")
    k.add_argument("--modes", default="create,checkout", help="Locust staircases; none skips")
    k.add_argument("--p99-bound", type=float, default=100.0)
    k.add_argument("--ramp-start", type=float, default=100.0)
    k.add_argument("--ramp-step", type=float, default=100.0)
    k.add_argument("--step-seconds", type=float, default=15.0)
    k.add_argument("--per-user-rate", type=float, default=10.0)
    k.add_argument("--max-duration", type=float, default=600.0)
    k.add_argument("--levels", default="16,32,64,128,256", help="closed-loop callers; none skips")
    k.add_argument("--closed-duration", type=float, default=5.0)
    k.add_argument("--closed-processes", type=int, default=1)
    k.set_defaults(run=knee_run)

    args = parser.parse_args()
    raise SystemExit(args.run(args))


if __name__ == "__main__":
    main()
