"""Run a Locust scenario end to end: stack, catalogue, load, checks, report.

    python -m loadtests.scenarios day   [--duration 240 --scale 1 --processes 2 --compare]
    python -m loadtests.scenarios soak  [--duration 1800 --report-window 300 --tolerance 10]
    python -m loadtests.scenarios flash [--users 2000 --stock 1000 --processes 2]

Each starts a fresh local stack under .data/load (or uses the servers named by
STOCKCORE_TARGET, STOCKCORE_PG_DSN, STOCKCORE_REDIS_URL; see loadtests/stack.py), stocks a
catalogue through AdjustStock, runs the Locust scenario headless with --processes load
processes, samples the memory and CPU of every process under test, checks the server's
invariants after the run, measures what the day left in Redis (loadtests/redis_memory.py),
and writes Locust's CSV (with its per-second history) and HTML
report, a summary and PNG plots to .reports/<scenario>-<time>/. Every rate and latency in the
summary is one of Locust's own statistics, named where it is shown. The exit code is 1 when a
check of correctness fails (oversell, invariants, holds left, failed calls); performance
targets are reported as MET or MISSED.

The soak is the day with its plateau held --duration seconds (30 minutes by default, hours
if asked), reported per --report-window of the plateau (loadtests/drift.py); it fails too
when the last full window is more than --tolerance percent worse than the first in CPU per
order or in order creation's mean latency.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtests import drift, invariants, paying, plots, reconciliation, redis_memory, report
from loadtests.arguments import non_negative_float, positive_float, positive_int, share
from loadtests.floor import measure_floor
from loadtests.locust.http_shop import HTTP_PREFIX
from loadtests.locust.options import catalogue
from loadtests.locust.record import read_plan, read_tallies
from loadtests.locuststats import Entry, History, read_failures, read_stats
from loadtests.outbox import payment_lag
from loadtests.profile import Profile
from loadtests.report import Run
from loadtests.sampler import ProcessSampler, redis_used_mb
from loadtests.stack import (
    LOAD_RECONCILER,
    PROVIDER_GROUP,
    Stack,
    open_stack,
    stock_catalogue,
    wait_for_no_holds,
)
from loadtests.swarm import Swarm, SwarmRun, run_swarm
from server.config import from_env

ROOT = Path(__file__).resolve().parent.parent
DEEP_STOCK = 1_000_000
# How long the day waits after its load for the reconciler to state every payment and
# refund: past the grace period, with room for a refund sent late and the feed's reading.
_RECONCILED_WITHIN_S = LOAD_RECONCILER.grace_s + 60.0


def _swarm(run: Run, swarm: Swarm, sampler: ProcessSampler, load_pids: list[int]) -> SwarmRun:
    sampler.start()
    try:
        result = run_swarm(swarm, load_pids)
    finally:
        sampler.stop()
    run.say(
        f"Locust exited with {result.exit_code}; CSV and HTML: "
        f"{result.csv_prefix.name}_*.csv, {result.html.name}"
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


def _wrote_statistics(run: Run, swarm: SwarmRun) -> bool:
    wrote = Path(f"{swarm.csv_prefix}_stats.csv").exists()
    run.check(wrote, f"Locust wrote its statistics ({swarm.csv_prefix.name}_stats.csv)")
    return wrote


# --- the reference day -------------------------------------------------------------------


def day(args: argparse.Namespace) -> int:
    """The reference day, compressed; with --compare, beside the competitor's table; as a
    soak, with its plateau held long and compared window by window."""
    return run_day(args).finish()


def pay(args: argparse.Namespace) -> int:
    """The reference day paid with ConfirmPayment, then at the payment provider, and one
    table of both (loadtests/paying.py)."""
    runs = {}
    for via in ("confirm", "provider"):
        one = argparse.Namespace(
            **{**vars(args), "scenario": "day", "pay_via": via, "compare": False}
        )
        runs[via] = run_day(one)
        runs[via].finish()
    run = Run("pay", Path(args.reports))
    run.say(
        "# The reference day paid two ways: ConfirmPayment, and the payment provider",
        "",
        f"- runs: {runs['confirm'].dir.name} (ConfirmPayment), {runs['provider'].dir.name}"
        " (the provider), the same knobs, a fresh stack each; their summary.md has the rest",
        "",
    )
    run.say(*paying.comparison(runs["confirm"].figures, runs["provider"].figures))
    run.say("", "## Checks", "")
    for via, one in runs.items():
        failed = "; ".join(one.failed) or "none"
        run.check(not one.failed, f"the run paying via {via}: failed checks: {failed}")
    return run.finish()


def run_day(args: argparse.Namespace) -> Run:
    """The reference day as `day` runs it; the run, its figures set, not yet finished."""
    soak = args.scenario == "soak"
    run = Run("report" if args.compare else args.scenario, Path(args.reports))
    prefix = f"DAY{run.tag[-6:]}"
    skus = catalogue(prefix, args.catalogue)
    http = args.api == "http"
    # The hold API has no orders to pay at a provider.
    via_provider = args.pay_via == "provider" and args.api != "inventory"
    with open_stack(
        ROOT / ".data" / "load",
        server_workers=args.server_workers,
        gateway=http,
        payments=via_provider,
    ) as stack:
        _common_head(
            run,
            args,
            stack,
            f"Soak: the reference day's plateau (237 orders/s x {args.scale:g}) held "
            f"{args.peak_hold:g} s"
            if soak
            else "Reference day (500,000 orders/day, 237 orders/s peak), compressed",
        )
        if http:
            run.say(
                f"- gateway: Envoy at {stack.gateway_url}; half the buyers call it over "
                "HTTP/JSON, half call the server over gRPC, at the same time",
                "",
            )
        if via_provider:
            run.say(
                f"- paying: at the simulated payment provider ({stack.provider_url}), whose"
                " signed webhook makes stockcore's receiver confirm the payment; the buyer's"
                " page then reads the order (GetOrder) until it is paid"
                + (
                    " (the gRPC half of the buyers; the HTTP half calls ConfirmPayment)"
                    if http
                    else ""
                )
                + ". The provider stands for a remote party: its CPU is on its own line and"
                " left out of the CPU per order. The reconciler follows its settlement feed"
                f" (grace {LOAD_RECONCILER.grace_s:g} s, settle deadline"
                f" {LOAD_RECONCILER.settle_deadline_s:g} s) and the refund sender pays refunds"
                " back through it; their CPU and the receiver's are rows of their own",
                "",
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
        if http:
            options += ["--gateway-url", str(stack.gateway_url)]
        if via_provider:
            options += ["--provider-url", str(stack.provider_url)]
        load_pids: list[int] = []
        sampler = stack.sampler(load_pids)
        profile = (
            Profile(stack.service_pids["server"], stack.pg_dsn, run.dir, args.duration + 10)
            if getattr(args, "profile", False) and "server" in stack.service_pids
            else None
        )
        if profile is not None:
            profile.start()
        if soak:
            # A sample of every process each 2 s over 5-minute windows keeps hours of
            # samples small; short windows are sampled every 0.5 s.
            sampler.interval = max(sampler.interval, args.report_window / 150)
            if stack.redis_url:
                sampler.gauges[drift.REDIS_USED] = redis_used_mb(stack.redis_url)
        swarm = _swarm(
            run,
            Swarm(
                "day_http.py" if http else "day.py",
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
        invariants.check_after_run(run, stack.target, stack.pg_dsn, skus)
        buffer_ratio = (
            asyncio.run(invariants.buffer_stats(stack.pg_dsn)).hit_ratio_since(buffers_before)
            if stack.pg_dsn and buffers_before
            else math.nan
        )
        levels = asyncio.run(invariants.check_via_api(stack.target, skus))
        deducted = DEEP_STOCK * len(skus) - levels.on_hand
        plan = read_plan(swarm.run_dir)
        lag = None
        if args.api != "inventory" and stack.redis_url and plan:
            found = payment_lag(stack.redis_url, float(plan["started_at"]), swarm.ended_at)
            lag = (found.p50_s, found.p99_s, found.max_s) if found else None
        if profile is not None:
            counted = read_stats(swarm.csv_prefix)
            created = next((counted[n] for n in report.CREATE if n in counted), None)
            profile.report(run, created.ok if created is not None else 0)
        footprint = (
            redis_memory.measure(stack.redis_url, stack.pg_dsn)
            if stack.redis_url and stack.pg_dsn
            else None
        )
        # After the figures above, so the reconciler's catching up does not count in them.
        settled = (
            reconciliation.settle(stack.pg_dsn, _RECONCILED_WITHIN_S)
            if via_provider and stack.pg_dsn
            else None
        )
    tally = read_tallies(swarm.run_dir)
    paid_units = tally["units_paid"] - tally["units_refunded"]
    ambiguous = tally["pay_ambiguous"] + tally["refund_ambiguous"] + tally["cancel_ambiguous"]
    run.check(
        deducted == paid_units or (ambiguous and abs(deducted - paid_units) <= 6 * ambiguous),
        f"stock deducted on the server ({deducted:,} units) = units paid less refunded by the "
        f"buyers ({paid_units:,}); ambiguous (deadline) payments/cancels: {ambiguous}",
    )
    run.check(bool(plan), "the shape recorded its plan (plan.json)")
    if not plan or not _wrote_statistics(run, swarm):
        return run
    stats = read_stats(swarm.csv_prefix)
    history = History.read(swarm.csv_prefix)
    server_rss, _ = sampler.max_rss_mb("server")
    figures = report.day_figures(
        stats,
        history,
        plan,
        buffer_hit_ratio=buffer_ratio,
        payment_lag=lag,
        server_rss_mb=server_rss,
    )
    p0, p1 = report.plateau(plan)
    if http:
        # Orders come in by both ways; the latencies in the headline are gRPC's.
        over_http = history.span(HTTP_PREFIX + report.CREATE[0], p0, p1)
        figures = replace(
            figures, achieved_peak_per_s=figures.achieved_peak_per_s + over_http.ok_per_s
        )
    run.say("", "## Beside the reference" if args.compare else "## Headline", "")
    run.say(*report.competitor_table(figures))
    run.say(
        "",
        f"Where these come from: Locust's stats history ({swarm.csv_prefix.name}"
        "_stats_history.csv, one row per request name per second). Orders/s on the plateau: "
        "CreateOrder's 'Total Request Count' less 'Total Failure Count' from the plateau's "
        "first to its last row, over the seconds between; mean: from 'Total Request Count' and "
        "'Total Average Response Time' at both ends; p99: the median over the plateau of the "
        "'99%' column (Locust's p99 of the last 10 s), worst 10 s beside it. Over the run: "
        f"{swarm.csv_prefix.name}_stats.csv.",
    )
    run.say("", f"## Every request over the run ({args.duration:g} s): Locust's _stats.csv", "")
    run.say(*report.table(report.LATENCY_HEADER, report.latency_rows(stats)))
    run.say(
        "",
        f"## On the plateau ({p1 - p0:g} s at {figures.target_peak_per_s:g} orders/s asked): "
        "Locust's stats history",
        "",
    )
    run.say(*report.table(report.SPAN_HEADER, report.span_rows(history, p0, p1)))
    if http:
        run.say("", "## The gateway's cost: each request over HTTP beside gRPC, same run", "")
        run.say(*report.table(report.GATEWAY_HEADER, report.gateway_rows(stats, HTTP_PREFIX)))
        spans = [history.span(n, p0, p1) for n in stats if n.startswith(HTTP_PREFIX)]
        http_per_s = sum(sp.calls for sp in spans) / max(p1 - p0, 1e-9)
        envoy_ms = sampler.cpu_percent("gateway", p0, p1) * 10 / max(http_per_s, 1e-9)
        run.say(
            "",
            "From Locust's _stats.csv over the whole run; an HTTP request's time includes "
            "JSON in the load process and Envoy's transcoding both ways. On the plateau "
            f"Envoy served {http_per_s:,.1f} HTTP requests/s and used {envoy_ms:.2f} ms of "
            "CPU per request (its 'gateway' row under Processes, over those requests).",
        )
    run.say("", "## Non-OK outcomes (expected rejections are not failures)", "")
    outcomes = report.status_rows(stats, read_failures(swarm.csv_prefix))
    run.say(*(report.table(["request", "status", "calls"], outcomes) if outcomes else ["none"]))
    run.say("", "## Business tally (all load processes)", "")
    run.say(", ".join(f"{k}={v:,}" for k, v in sorted(tally.items())) or "none")
    run.say("", "## Processes (CPU on the plateau)", "")
    run.say(*report.table(report.RESOURCE_HEADER, report.resource_rows(sampler, p0, p1)))
    if footprint is not None:
        run.say("", "## Redis memory after the run (loadtests/redis_memory.py)", "")
        run.say(*redis_memory.report_lines(footprint, from_env()))
    if settled is not None:
        reconciliation.report(run, settled)
    floor_ms = _floor_section(run, args, history, sampler, plan, figures.achieved_peak_per_s)
    run.say("", "## Targets", "")
    run.target(
        figures.achieved_peak_per_s >= 0.99 * figures.target_peak_per_s,
        f"orders created on the plateau {figures.achieved_peak_per_s:,.1f}/s >= 99% of "
        f"{figures.target_peak_per_s:,.1f}/s asked",
    )
    run.target(
        figures.create_peak.mean_ms <= 25.0,
        f"order creation mean at the peak {figures.create_peak.mean_ms:.1f} ms <= 25 ms",
    )
    run.target(
        figures.create_peak.p99_ms <= 100.0,
        f"order creation p99 at the peak {figures.create_peak.p99_ms:.1f} ms <= 100 ms",
    )
    if figures.achieved_peak_per_s > 0:
        # The payment provider stands for a remote party: not this machine's cost of orders.
        remote = (
            sampler.cpu_percent(PROVIDER_GROUP, p0, p1)
            if PROVIDER_GROUP in sampler.samples
            else 0.0
        )
        machine = sampler.machine_cpu_percent(p0, p1) - (0.0 if math.isnan(remote) else remote)
        machine_ms = machine * 10 / figures.achieved_peak_per_s
        run.target(
            machine_ms <= 5.5,
            f"whole-machine CPU per order on the plateau {machine_ms:.1f} ms <= 5.5 ms"
            " (load generator included)"
            + (f"; the empty-call bound at this pace: {floor_ms:.1f} ms" if floor_ms else ""),
        )
    else:
        run.unmeasured("whole-machine CPU per order on the plateau: no order was created there")
    run.check(figures.failures == 0, f"failed calls (not expected rejections): {figures.failures}")
    if server_rss > 0:
        run.target(
            server_rss <= 150.0,
            f"server RSS per process, max over the run: {server_rss:,.0f} MB <= 150 MB",
        )
    else:
        run.unmeasured("server RSS per process: the server is not this run's (STOCKCORE_TARGET)")
    if soak:
        creates = [figures.create_run.name] + ([HTTP_PREFIX + report.CREATE[0]] if http else [])
        soak_windows(run, args, history, sampler, creates, plan)
    if plots.plot_day(history, plan, sampler, run.dir / "day.png"):
        run.say("", f"plot: {run.dir.name}/day.png")
    run.figures.update(paying.day_figures(figures, history, sampler, (p0, p1), lag, settled))
    return run


def _floor_section(
    run: Run,
    args: argparse.Namespace,
    history: History,
    sampler: ProcessSampler,
    plan: dict[str, Any],
    orders_per_s: float,
) -> float | None:
    """The plateau's CPU per call beside the empty call's at the same pace, measured now
    (loadtests/floor.py); returns the bound per order in ms (None when not measured)."""
    if args.floor_seconds <= 0 or orders_per_s <= 0:
        return None
    p0, p1 = report.plateau(plan)
    calls = sum(history.span(name, p0, p1).calls for name in history.names)
    calls_per_s = calls / (p1 - p0)
    calls_per_order = calls_per_s / orders_per_s
    buyers = max(1, round(float(plan["peak_per_s"]) * float(plan["pacing_s"])))
    try:
        floor = measure_floor(
            calls_per_s, buyers, processes=args.processes, duration=args.floor_seconds
        )
    except RuntimeError as exc:
        run.check(False, f"the empty-call floor could not be measured: {exc}")
        return None
    used_us = {
        group: sampler.cpu_percent(group, p0, p1) * 1e4 / calls_per_s
        for group in ("server", "load")
    }
    machine_us = sampler.machine_cpu_percent(p0, p1) * 1e4 / calls_per_s
    # A bound no handler, database or cache work is in: the server's cost of an empty call
    # and the load's cost of a call, the lesser of the run's and the probe's (a probe's
    # lone calls cost the load more than a journey's calls in a row).
    bound_us = floor.server_us + min(floor.load_us, used_us["load"])
    bound_ms = bound_us * calls_per_order / 1000.0
    header = ["process", "µs per call on the plateau", "µs per empty call", "above it"]
    rows = [
        [group, f"{used_us[group]:,.0f}", f"{empty:,.0f}", f"{used_us[group] - empty:,.0f}"]
        for group, empty in (("server", floor.server_us), ("load", floor.load_us))
    ]
    rows.append(
        [
            "whole machine, and the bound",
            f"{machine_us:,.0f}",
            f"{bound_us:,.0f}",
            f"{machine_us - bound_us:,.0f}",
        ]
    )
    rows.append(
        [
            f"per order ({calls_per_order:.2f} calls), ms",
            f"{machine_us * calls_per_order / 1000:.2f}",
            f"{bound_ms:.2f}",
            f"{(machine_us - bound_us) * calls_per_order / 1000:.2f}",
        ]
    )
    run.say("", "## The empty-call floor (loadtests/floor.py), measured after the run", "")
    run.say(*report.table(header, rows))
    run.say(
        "",
        f"The probe: {floor.describe()}, from {buyers} Locust users in {args.processes} "
        "process(es) calling a grpc.aio handler that does nothing, at the plateau's call rate. "
        "The bound: the server's CPU for an empty call plus the load's CPU per call (the "
        "lesser of the run's and the probe's), times the plateau's "
        f"{calls_per_order:.2f} calls per order: {bound_ms:.2f} ms of CPU per order before "
        "any handler, PostgreSQL or Redis work, the least this gRPC runtime and load "
        "generator can make the scenario's calls for on this machine.",
    )
    return bound_ms


def soak_windows(
    run: Run,
    args: argparse.Namespace,
    history: History,
    sampler: ProcessSampler,
    creates: list[str],
    plan: dict[str, Any],
) -> None:
    """The plateau window by window, and the check that it did not get worse."""
    p0, p1 = report.plateau(plan)
    asked = float(plan["peak_per_s"])
    figures = [
        drift.measure(history, sampler, creates[0], creates, window, asked)
        for window in drift.windows(p0, p1, args.report_window)
    ]
    groups = list(sampler.samples)
    run.say(
        "",
        f"## The plateau per {args.report_window:g} s window",
        "",
        *report.table(drift.window_header(groups), drift.window_rows(figures, groups, p0)),
        "",
        f"Orders and latency: Locust's stats history ({creates[0]}; mean from its cumulative "
        "columns, p50/p99 the median of its 10 s percentiles in the window). CPU per order: "
        "each process group's CPU in the window (the sampler's /proc readings) over the orders "
        "created in it; 'under test' is every group but the load processes. Server RSS: the "
        "largest server process at the window's end. Redis used memory: its INFO memory "
        "(used_memory) at the window's end.",
    )
    run.check(len(figures) >= 2, f"{len(figures)} full windows on the plateau (2 or more)")
    if len(figures) < 2:
        return
    first, last = figures[0], figures[-1]
    tolerance = args.tolerance / 100
    run.say("", "## First full window against the last", "")
    run.say(
        *report.table(
            drift.COMPARISON_HEADER, drift.comparison_rows(first, last, groups, tolerance)
        )
    )
    run.say("")
    for what, before, after in (
        ("CPU per order of the processes under test", first.stack_cpu_ms, last.stack_cpu_ms),
        ("order creation mean", first.create.mean_ms, last.create.mean_ms),
    ):
        run.check(
            drift.within(before, after, tolerance),
            f"{what} in the last window {after:.2f} ms is at most {args.tolerance:g} % above "
            f"the first's {before:.2f} ms",
        )
    if plots.plot_soak(figures, groups, p0, run.dir / "soak.png"):
        run.say("", f"plot: {run.dir.name}/soak.png")


# --- the flash sale ----------------------------------------------------------------------


def flash(args: argparse.Namespace) -> int:
    """One SKU, --stock units, --users buyers at once: exactly the stock must sell."""
    run = Run("flash", Path(args.reports))
    sku = f"FLASH-{run.tag}"
    # The server admits as it does in production (by queue delay): a flash crowd is the
    # normal case, and what it refuses is part of what the sale measures.
    with open_stack(
        ROOT / ".data" / "load", server_workers=args.server_workers, shed=True
    ) as stack:
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
        sampler = stack.sampler(load_pids)
        swarm = _swarm(
            run,
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
        sql = invariants.check_after_run(run, stack.target, stack.pg_dsn, [sku], [sku])
    if not _wrote_statistics(run, swarm):
        return run.finish()
    stats = read_stats(swarm.csv_prefix)
    pay_name = "OrderService/ConfirmPayment" if args.api == "orders" else "InventoryService/Commit"
    paid = stats[pay_name].ok if pay_name in stats else 0
    sold = args.stock - level.on_hand
    run.check(
        level.on_hand == 0 and level.reserved == 0 and paid == args.stock and sold == args.stock,
        f"stock {args.stock:,}: successful payments {paid:,} (Locust's {pay_name} requests less "
        f"failures), deducted {sold:,}, on_hand {level.on_hand}, reserved {level.reserved}; "
        f"oversold {max(0, paid - args.stock, -level.on_hand)}",
    )
    if sql is not None:
        committed = sql.committed_units.get(sku, 0)
        run.check(
            committed == args.stock,
            f"commit movements in the ledger for the SKU: {committed:,} units",
        )
    run.say("", "## Requests: Locust's _stats.csv", "")
    run.say(*report.table(report.LATENCY_HEADER, report.latency_rows(stats)))
    run.say("", "## Non-OK outcomes (expected rejections are sold out, not failures)", "")
    outcomes = report.status_rows(stats, read_failures(swarm.csv_prefix))
    run.say(*(report.table(["request", "status", "calls"], outcomes) if outcomes else ["none"]))
    tally = read_tallies(swarm.run_dir)
    run.say("", "## Business tally", "", ", ".join(f"{k}={v:,}" for k, v in sorted(tally.items())))
    run.say("", "## Processes (CPU over the sale)", "")
    run.say(
        *report.table(
            report.RESOURCE_HEADER, report.resource_rows(sampler, swarm.started_at, swarm.ended_at)
        )
    )
    flash_targets(run, stats, args.api, args.users)
    return run.finish()


# A crowd this size is an ordinary flash sale: batching serves it without refusing anyone.
ORDINARY_CROWD = 300


def flash_targets(run: Run, stats: dict[str, Entry], api: str, users: int) -> None:
    """The flash sale's latency and refusal targets, from Locust's statistics of this run."""
    place, pay = (
        ("OrderService/CreateOrder", "OrderService/ConfirmPayment")
        if api == "orders"
        else ("InventoryService/Reserve", "InventoryService/Commit")
    )
    run.say("", "## Targets", "")
    refused = sum(e.requests for n, e in stats.items() if n.endswith("[RESOURCE_EXHAUSTED]"))
    if users <= ORDINARY_CROWD:
        run.target(refused == 0, f"{users} buyers at once: {refused:,} calls refused (0 wanted)")
    else:
        run.say(f"- calls refused for capacity (each sent again as told): {refused:,}")
    sold_out = stats.get(f"{place} [FAILED_PRECONDITION]")
    if sold_out is not None:
        run.target(
            sold_out.p99_ms <= 100,
            f"sold-out answers p99 <= 100 ms: {sold_out.p99_ms:,.0f} ms ({sold_out.requests:,})",
        )
    for name in (place, pay):
        entry = stats.get(name)
        if entry is not None:
            run.target(
                entry.p99_ms <= 250,
                f"admitted {name.split('/')[1]} p99 <= 250 ms: {entry.p99_ms:,.0f} ms "
                f"(mean {entry.mean_ms:,.0f} ms, {entry.ok:,} OK)",
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-day`, `load-report`, `soak` and `load-flash`; a bad
    number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        choices=["orders", "inventory", "http"],
        default="orders",
        help="http (day only): half the buyers over HTTP/JSON through the gateway",
    )
    common.add_argument("--processes", type=positive_int, default=2, help="Locust load processes")
    common.add_argument(
        "--server-workers", type=positive_int, default=1, help="server processes (fresh stack)"
    )
    common.add_argument("--payment-window", type=positive_float, default=8.0)
    common.add_argument("--catalogue", type=positive_int, default=1000, help="SKUs")
    sub = parser.add_subparsers(dest="scenario", required=True)

    paying = argparse.ArgumentParser(add_help=False)
    paying.add_argument(
        "--pay-via", choices=("provider", "confirm"), default="provider",
        help="provider: the payment provider charges, its webhook pays (the receiver calls"
        " ConfirmPayment); confirm: the buyer calls ConfirmPayment itself",
    )  # fmt: skip
    d = sub.add_parser("day", parents=[common, paying], help="the reference day, compressed")
    d.add_argument("--duration", type=positive_float, default=240.0)
    d.add_argument("--peak-hold", type=positive_float, default=60.0)
    d.add_argument("--scale", type=positive_float, default=1.0)
    d.add_argument("--pacing", type=positive_float, default=2.0)
    d.add_argument(
        "--compare", action="store_true", help="title it as the report beside the competitor"
    )
    d.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy and count PostgreSQL's statements over the run",
    )
    d.add_argument(
        "--floor-seconds", type=non_negative_float, default=15.0,
        help="seconds of the empty-call floor measured after the run (0: none)",
    )  # fmt: skip
    d.set_defaults(run=day)

    p = sub.add_parser(
        "pay",
        parents=[common],
        help="the reference day paid with ConfirmPayment, then at the provider: one table",
    )
    for option, default in (("--duration", 240.0), ("--peak-hold", 60.0), ("--scale", 1.0)):
        p.add_argument(option, type=positive_float, default=default)
    p.add_argument("--pacing", type=positive_float, default=2.0)
    p.add_argument(
        "--floor-seconds", type=non_negative_float, default=0.0,
        help="seconds of each run's empty-call floor (0: none, the default here)",
    )  # fmt: skip
    p.set_defaults(run=pay, profile=False)

    s = sub.add_parser(
        "soak",
        parents=[common, paying],
        help="the day's plateau held long, compared window by window",
    )
    s.add_argument(
        "--duration", dest="peak_hold", type=positive_float, default=1800.0, metavar="SECONDS",
        help="seconds the plateau is held",
    )  # fmt: skip
    s.add_argument(
        "--rest-of-day", type=positive_float, default=180.0,
        help="seconds of the compressed day around the plateau (its quiet hours and ramps)",
    )  # fmt: skip
    s.add_argument("--scale", type=positive_float, default=1.0)
    s.add_argument("--pacing", type=positive_float, default=2.0)
    s.add_argument(
        "--report-window", type=positive_float, default=300.0,
        help="seconds of plateau per window compared",
    )  # fmt: skip
    s.add_argument(
        "--tolerance", type=non_negative_float, default=10.0,
        help="percent the last window may be worse than the first",
    )  # fmt: skip
    s.add_argument(
        "--floor-seconds", type=non_negative_float, default=15.0,
        help="seconds of the empty-call floor measured after the run (0: none)",
    )  # fmt: skip
    s.set_defaults(run=day, compare=False)

    f = sub.add_parser("flash", parents=[common], help="a flash sale of one SKU")
    f.add_argument("--users", type=positive_int, default=2000)
    f.add_argument("--spawn-rate", type=positive_float, default=500.0)
    f.add_argument("--stock", type=positive_int, default=1000)
    f.add_argument("--abandon-share", type=share, default=0.05)
    f.add_argument("--max-duration", type=positive_float, default=180.0)
    f.set_defaults(run=flash)

    args = parser.parse_args(argv)
    if args.scenario == "soak":
        if args.peak_hold < 2 * args.report_window:
            s.error(
                f"--duration {args.peak_hold:g} must hold at least two windows of "
                f"--report-window {args.report_window:g} s"
            )
        args.duration = args.peak_hold + args.rest_of_day  # the whole day, as for `day`
    if args.scenario in ("day", "pay") and args.peak_hold >= args.duration:
        # The compressed day needs time outside its plateau (daycurve.CompressedDay).
        parser.error(
            f"--peak-hold {args.peak_hold:g} must be shorter than --duration {args.duration:g}"
        )
    if args.scenario == "pay" and args.api != "orders":
        p.error("the day is paid two ways with --api orders (the default)")
    if args.scenario == "flash" and args.api == "http":
        f.error("the flash sale runs over gRPC (--api orders or inventory)")
    return args


def main() -> None:
    """Entry point of `make load-day`, `load-report`, `soak` and `load-flash`."""
    args = parse_args()
    raise SystemExit(args.run(args))


if __name__ == "__main__":
    main()
