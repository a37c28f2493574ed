"""Does reconciliation find what the payment provider gets wrong? (`make load-recon`)

    python -m loadtests.recon [--orders 20000] [--rate 50] [--fault-rate 0.01]

A fresh stack with the simulated payment provider, the webhook receiver, the reconciler and
the refund sender (loadtests/stack.py, the reconciler's policy LOAD_RECONCILER); the
provider set to inject every fault kind at --fault-rate (simulators/payment_faults.py);
--orders orders created, each charged at the provider, and a share of them (--cancel-share)
cancelled once paid so that refunds flow too. Then, once reconciliation has settled, what
the provider lists on `GET /_faults/injected` is judged kind by kind against what stockcore
holds (loadtests/fault_recall.py has the table of each kind's right outcome: detected as
an exception of a given reason, recovered from the feed, or absorbed with no exception),
and every open exception no injected fault explains is a false one. The ledger's imbalance
per currency (its transfers against their facts, stockcore.ledger_imbalance()) is sampled
throughout, and the invariants (stockcore.invariant_violations()) checked at the end.

This measures detection, not throughput: the orders come from a simple open-loop asyncio
driver using the typed clients (clients/orders.py) and aiohttp for the provider, not from
Locust (the load tests that measure the server's rates and latencies are Locust's). Each
order is created and charged at its time in the schedule, whatever the others do.

The knobs that apply to the same things (charges, events, refunds) are set a fraction of a
period apart: a rate's faults fall evenly from when it is set, so knobs set together would
all fall on the same charge, and the reconciler states one verdict per charge. Kinds the
reconciler cannot detect today are reported MISSED with what would fix them. Recall 100 %
and no false exception are targets (MET or MISSED); the ledger's balance and the
invariants are checks (the exit code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from clients.credentials import Credentials
from clients.errors import StockcoreError
from clients.orders import OrderClient, OrderStatus
from loadtests import fault_recall, invariants, reconciliation, report
from loadtests.arguments import positive_float, positive_int, share
from loadtests.fault_recall import Found, Injected
from loadtests.report import Run
from loadtests.stack import LOAD_RECONCILER, open_stack, stock_catalogue

ROOT = Path(__file__).resolve().parent.parent
CURRENCY = "EUR"
_SKUS = 50
_DEEP_STOCK = 1_000_000
_IN_FLIGHT = 64
# An order waits this long to be paid (a charge recovered from the feed pays it after the
# grace period) before the driver gives up cancelling it.
_PAID_WAIT_S = LOAD_RECONCILER.grace_s + 40.0
_PAYMENT_WINDOW_S = 600.0
_PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
# The provider's late knobs (its defaults, said here so the wait below can follow them).
_LATE_S = 30.0

# Knobs applying to the same things, each with the share of a period after which it is set.
STAGGERED: dict[str, tuple[tuple[str, float], ...]] = {
    "charges": (
        ("decline_rate", 0.0),
        ("amount_mismatch_rate", 0.0),
        ("currency_mismatch_rate", 1 / 3),
        ("confirmation_lost_rate", 2 / 3),
        ("settlement_late_rate", 0.5),
        ("webhook_drop_rate", 0.0),
        ("webhook_duplicate_rate", 0.25),
        ("webhook_delay_rate", 0.5),
        ("webhook_reorder_rate", 0.75),
    ),
    "refunds": (("refund_fail_rate", 0.0), ("refund_late_rate", 0.5)),
}
"""Per counter of the driver (charges made, refunds caused), the knobs set when it reaches
their share of a period (1 / fault rate)."""

_FOUND_SQL = {
    "open": """
        SELECT s.subject_kind, s.subject_id, e.reason
          FROM stockcore.reconciliation_exceptions e
          JOIN stockcore.reconciliation_statements s ON s.statement_id = e.statement_id
         WHERE e.resolution IS NULL""",
    "recovered": """
        SELECT DISTINCT subject_id FROM stockcore.reconciliation_statements
         WHERE subject_kind = 1 AND recovered""",
    "recorded": """
        SELECT payment_id AS id FROM stockcore.payments
        UNION SELECT charge_id FROM stockcore.payments_to_return""",
    "settled_refunds": """
        SELECT provider_refund_id AS id FROM stockcore.refunds
         WHERE state IN (3, 4) AND provider_refund_id IS NOT NULL""",
    "transactions": "SELECT txn_id, type, source_id FROM stockcore.settlement_transactions",
    "stated": """
        SELECT DISTINCT subject_kind, subject_id FROM stockcore.reconciliation_statements""",
    "corrected": """
        SELECT count(*) AS n FROM stockcore.reconciliation_exceptions WHERE resolution = 4""",
    "unsettled_refunds": """
        SELECT count(*) AS n FROM stockcore.refunds WHERE state IN (1, 2)""",
}


def schedule(fault_rate: float) -> dict[str, list[tuple[int, str]]]:
    """Per counter, (count at which to set it, knob), in the order they fall due."""
    period = 1.0 / fault_rate if fault_rate > 0 else 0.0
    return {
        counter: sorted((round(phase * period), knob) for knob, phase in knobs)
        for counter, knobs in STAGGERED.items()
    }


@dataclass
class Driven:
    """What the driver did."""

    created: int = 0
    charged: int = 0
    declined: int = 0
    cancelled: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    worst_imbalance: int = 0
    imbalance_samples: int = 0
    ended_at: float = 0.0


class Driver:
    """Creates, charges and cancels orders on the server `target` and the provider."""

    def __init__(self, args: argparse.Namespace, target: str, provider_url: str, dsn: str):
        self.args = args
        self.target = target
        self.provider = provider_url.rstrip("/")
        self.dsn = dsn
        self.done = Driven()
        self.counts: Counter[str] = Counter()
        self.due = schedule(args.fault_rate)
        self.cancel_every = max(1, round(1 / args.cancel_share)) if args.cancel_share else 0
        self.tag = f"RC{int(time.time()) % 1_000_000:06d}"

    async def _set_knobs(self, http: aiohttp.ClientSession, counter: str) -> None:
        due = self.due[counter]
        knobs = {}
        while due and due[0][0] <= self.counts[counter]:
            knobs[due.pop(0)[1]] = self.args.fault_rate
        if knobs:
            async with http.put(f"{self.provider}/_faults", json=knobs) as reply:
                reply.raise_for_status()

    async def run(self) -> Driven:
        """Every order at its time; the ledger sampled meanwhile."""
        stop = asyncio.Event()
        sampling = asyncio.create_task(self._sample_ledger(stop))
        gate = asyncio.Semaphore(_IN_FLIGHT)
        credentials = Credentials(plaintext=True)
        async with (
            aiohttp.ClientSession(timeout=_PROVIDER_TIMEOUT) as http,
            OrderClient(self.target, credentials=credentials, default_timeout=10.0) as orders,
        ):
            await self._set_knobs(http, "charges")
            await self._set_knobs(http, "refunds")
            started = time.monotonic()
            tasks = []
            for i in range(self.args.orders):
                wait = started + i / self.args.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await gate.acquire()
                task = asyncio.create_task(self._order(i, orders, http))
                task.add_done_callback(lambda _: gate.release())
                tasks.append(task)
            await asyncio.gather(*tasks)
        stop.set()
        await sampling
        self.done.ended_at = time.time()
        return self.done

    async def _order(self, i: int, orders: OrderClient, http: aiohttp.ClientSession) -> None:
        order_id = f"{self.tag}-{i:06d}"
        price = 1000 + (i * 37) % 9000
        try:
            order = await orders.create_order(
                order_id,
                f"shopper-{i % 500}",
                [(f"{self.tag}-SKU-{i % _SKUS:03d}", 1, price)],
                CURRENCY,
                payment_window=_PAYMENT_WINDOW_S,
            )
            self.done.created += 1
            body = {
                "order_id": order_id,
                "customer_id": order.customer_id,
                "amount": order.total_minor,
                "currency": order.currency_code,
            }
            headers = {"Idempotency-Key": f"recon:{order_id}"}
            async with http.post(f"{self.provider}/v1/charges", json=body, headers=headers) as r:
                status = r.status
                await r.read()
            self.counts["charges"] += 1
            await self._set_knobs(http, "charges")
            if status == 402:
                self.done.declined += 1
                return
            if status != 200:
                self.done.errors[f"charge HTTP {status}"] += 1
                return
            self.done.charged += 1
            if self.cancel_every and i % self.cancel_every == 0:
                await self._cancel_once_paid(order_id, orders, http)
        except (StockcoreError, aiohttp.ClientError, TimeoutError) as exc:
            self.done.errors[type(exc).__name__] += 1

    async def _cancel_once_paid(
        self, order_id: str, orders: OrderClient, http: aiohttp.ClientSession
    ) -> None:
        deadline = time.monotonic() + _PAID_WAIT_S
        while time.monotonic() < deadline:
            order, _ = await orders.get_order(order_id)
            if order.status == OrderStatus.ORDER_STATUS_PAID:
                await orders.cancel_order(order_id, "load-recon: a refund")
                self.done.cancelled += 1
                self.counts["refunds"] += 1
                await self._set_knobs(http, "refunds")
                return
            if order.status != OrderStatus.ORDER_STATUS_PENDING_PAYMENT:
                return  # the charge paid nothing (money to return): refunded anyway
            await asyncio.sleep(0.5)

    async def _sample_ledger(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            found = await reconciliation.imbalance(self.dsn)
            self.done.imbalance_samples += 1
            worst = max((abs(v) for v in found.values()), default=0)
            self.done.worst_imbalance = max(self.done.worst_imbalance, worst)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)


async def read_found(dsn: str) -> tuple[Found, int, int]:
    """What stockcore holds (one read-only snapshot), exceptions corrected meanwhile, and
    refunds not settled yet."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = {name: await conn.fetch(sql) for name, sql in _FOUND_SQL.items()}
    finally:
        await conn.close()
    found = Found(
        open={
            (r["subject_kind"], r["subject_id"]): reconciliation.reason_name(r["reason"])
            for r in rows["open"]
        },
        recovered=frozenset(r["subject_id"] for r in rows["recovered"]),
        recorded=frozenset(r["id"] for r in rows["recorded"]),
        settled_refunds=frozenset(r["id"] for r in rows["settled_refunds"]),
        transactions={r["txn_id"]: (r["type"], r["source_id"]) for r in rows["transactions"]},
        stated=frozenset((r["subject_kind"], r["subject_id"]) for r in rows["stated"]),
    )
    return found, rows["corrected"][0]["n"], rows["unsettled_refunds"][0]["n"]


async def injected_faults(provider_url: str) -> list[Injected]:
    """What the provider injected (GET /_faults/injected)."""
    async with (
        aiohttp.ClientSession(timeout=_PROVIDER_TIMEOUT) as http,
        http.get(f"{provider_url.rstrip('/')}/_faults/injected") as reply,
    ):
        reply.raise_for_status()
        body: Any = await reply.json(content_type=None)
    listed = body["injected"]
    return [Injected(f["kind"], f["object_id"], f.get("order_id", "")) for f in listed]


async def settle(dsn: str, ended_at: float, timeout_s: float) -> tuple[float, bool]:
    """Wait until reconciliation can have seen everything: past the provider's late
    settlement and late refunds and the reconciler's grace after the last order, then until
    every payment and refund is stated and settled and the open exceptions stop changing
    (at most `timeout_s` in all). Seconds waited, and whether it settled."""
    started = time.monotonic()
    floor = ended_at + _LATE_S + LOAD_RECONCILER.grace_s + 5.0
    await asyncio.sleep(max(0.0, floor - time.time()))
    last: object = None
    while True:
        found, _, unsettled = await read_found(dsn)
        stated = await reconciliation.read_reconciled(dsn)
        now = (sorted(found.open.items()), unsettled, stated.unstated)
        waited = time.monotonic() - started
        if unsettled == 0 and stated.unstated == 0 and now == last:
            return waited, True
        if waited >= timeout_s:
            return waited, False
        last = now
        await asyncio.sleep(LOAD_RECONCILER.interval_s * 3)


def _missed_notes(result: fault_recall.Recall) -> list[str]:
    notes = []
    for t in result.tallies:
        e = fault_recall.EXPECTATIONS.get(t.row)
        if t.missed:
            why = e.cannot if e is not None and e.cannot else "the reconciler did not find it"
            notes.append(f"- {t.row}: {t.missed:,} MISSED ({', '.join(t.examples)}): {why}")
    return notes


def measure(args: argparse.Namespace, run: Run) -> None:
    """The whole run, its report in `run`."""
    with open_stack(ROOT / ".data" / "load", payments=True) as stack:
        assert stack.pg_dsn is not None and stack.provider_url is not None
        run.say(
            "# Reconciliation under injected provider faults",
            "",
            f"- command: `{' '.join(sys.argv[1:])}` (python -m loadtests.recon)",
            f"- machine: {report.describe_machine()}",
            f"- {args.orders:,} orders at {args.rate:g}/s, every fault kind at"
            f" {args.fault_rate:g}, {args.cancel_share:.0%} of the paid orders cancelled"
            f" (refunds); reconciler grace {LOAD_RECONCILER.grace_s:g} s, settle deadline"
            f" {LOAD_RECONCILER.settle_deadline_s:g} s",
            f"- load average before the run: {Path('/proc/loadavg').read_text().split()[:3]}",
            "",
        )
        tag_driver = Driver(args, stack.target, stack.provider_url, stack.pg_dsn)
        skus = [f"{tag_driver.tag}-SKU-{i:03d}" for i in range(_SKUS)]
        asyncio.run(stock_catalogue(stack.target, skus, _DEEP_STOCK, key=run.tag))
        # The driver is this process: its CPU is the "load" row.
        sampler = stack.sampler([os.getpid()])
        sampler.start()
        began = time.time()
        try:
            driven = asyncio.run(tag_driver.run())
            waited, settled = asyncio.run(
                settle(stack.pg_dsn, driven.ended_at, args.settle_timeout)
            )
        finally:
            sampler.stop()
        faults = asyncio.run(injected_faults(stack.provider_url))
        found, corrected, unsettled = asyncio.run(read_found(stack.pg_dsn))
        stated = asyncio.run(reconciliation.read_reconciled(stack.pg_dsn))
        checked = asyncio.run(invariants.check_via_sql(stack.pg_dsn))
    result = fault_recall.judge(faults, found)
    run.say(
        "## The run",
        "",
        f"- orders created {driven.created:,}, charged {driven.charged:,}, declined"
        f" {driven.declined:,}, cancelled once paid {driven.cancelled:,}; driver errors:"
        f" {dict(driven.errors) or 'none'}",
        f"- load ended after {driven.ended_at - began:.0f} s; waited {waited:.0f} s more for"
        " reconciliation to settle"
        + ("" if settled else f" and stopped waiting at {args.settle_timeout:g} s"),
        f"- statements: {len(stated.subjects) - stated.unstated:,} of {len(stated.subjects):,}"
        f" payments, charges to return and refunds stated; lag p50 {stated.lag.p50_s:.2f} s,"
        f" p99 {stated.lag.p99_s:.2f} s, max {stated.lag.max_s:.2f} s (faults included)",
        f"- exceptions opened then corrected by a later statement (a late settlement first"
        f" stated MISSING_AT_PROVIDER): {corrected:,}; refunds not settled: {unsettled:,}",
        "",
        "## Injected faults beside what reconciliation found (loadtests/fault_recall.py)",
        "",
    )
    run.say(*report.table(fault_recall.RESULT_HEADER, fault_recall.result_rows(result)))
    run.say("", "Exceptions where nothing was injected:", "")
    if result.false_subjects:
        run.say(*report.table(["reason", "open"], sorted(result.false_by_reason.items())))
        shown = ", ".join(f"{s} {r}" for _, s, r in result.false_subjects[:5])
        run.say("", f"first: {shown}")
    else:
        run.say("none")
    notes = _missed_notes(result)
    if notes:
        run.say("", "What was missed, and what would fix it:", "", *notes)
    run.say("", "## Processes (CPU over the load and the wait)", "")
    run.say(
        *report.table(report.RESOURCE_HEADER, report.resource_rows(sampler, began, time.time()))
    )
    run.say("", "## Targets and checks", "")
    recall = result.recall
    run.target(
        recall == 1.0,
        f"recall of the faults that must be found: {recall:.1%}"
        f" ({sum(t.right for t in result.detectable):,} of"
        f" {sum(t.right + t.missed for t in result.detectable):,}; masked left out)",
    )
    absorbed_missed = sum(t.missed for t in result.tallies if t not in result.detectable)
    run.target(absorbed_missed == 0, f"faults to be absorbed that were not: {absorbed_missed:,}")
    run.target(
        result.false_exceptions == 0,
        f"exceptions where nothing was injected: {result.false_exceptions:,}",
    )
    run.check(bool(faults), f"the provider injected faults: {len(faults):,}")
    run.check(settled, "reconciliation settled (every subject stated, every refund settled)")
    run.check(
        driven.worst_imbalance == 0 and stated.balanced,
        f"ledger imbalance 0 throughout: worst {driven.worst_imbalance:,} over"
        f" {driven.imbalance_samples:,} samples during the load, {stated.imbalance} at the end",
    )
    run.check(checked.ok, checked.describe())
    (run.dir / "injected.tsv").write_text(
        "".join(f"{f.kind}\t{f.object_id}\t{f.order_id}\n" for f in faults)
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-recon`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=positive_int, default=20_000)
    parser.add_argument("--rate", type=positive_float, default=50.0, help="orders per second")
    parser.add_argument("--fault-rate", type=share, default=0.01, help="of each fault kind")
    parser.add_argument(
        "--cancel-share", type=share, default=0.2, help="of the orders, cancelled once paid"
    )
    parser.add_argument(
        "--settle-timeout", type=positive_float, default=300.0, help="seconds, after the load"
    )
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    return parser.parse_args(argv)


def main() -> None:
    """Entry point of `make load-recon`."""
    args = parse_args()
    run = Run("recon", Path(args.reports))
    measure(args, run)
    raise SystemExit(run.finish())


if __name__ == "__main__":
    main()
