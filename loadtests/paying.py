"""`make load-pay`: the reference day paid two ways, one table.

The day runs twice with the same knobs, on a fresh stack each time: first the buyer pays
with ConfirmPayment itself (how an internal payment service pays), then at the simulated
payment provider, whose signed webhook makes stockcore's receiver call ConfirmPayment,
while the reconciler states every payment and the refund sender pays refunds back. The
table sets the second run's figures beside the first's: what paying through a provider,
with reconciliation, costs the day's plateau, its latencies and its CPU per order.

The provider stands for a remote party: its CPU has a row of its own and is left out of
the whole machine's CPU per order, as in the day's own report. Two runs minutes apart on
a shared machine differ by a few percent even with the same code; read small differences
as noise (BENCHMARKS.md says by how much).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loadtests.locust.provider import CHARGE_REQUEST
from loadtests.locuststats import History
from loadtests.reconciliation import Settled
from loadtests.report import DayFigures, table
from loadtests.sampler import ProcessSampler
from loadtests.stack import PROVIDER_GROUP

CONFIRM_REQUEST = "OrderService/ConfirmPayment"
# The sampler's groups in the order the table shows them; any other group follows.
GROUPS = (
    "server",
    "postgres",
    "redis",
    "payments-receiver",
    "payments-reconciler",
    "refund-sender",
    "load",
)


@dataclass(frozen=True)
class Figure:
    """One row of the table: its key in Run.figures, its label, and how it is shown."""

    key: str
    label: str
    decimals: int = 1


def day_figures(
    figures: DayFigures,
    history: History,
    sampler: ProcessSampler,
    plateau: tuple[float, float],
    event_lag: tuple[float, float, float] | None,
    settled: Settled | None,
) -> dict[str, float]:
    """The figures of one day run that the table compares, by key (NaN: not measured)."""
    p0, p1 = plateau
    orders = figures.achieved_peak_per_s
    found: dict[str, float] = {
        "orders_per_s": orders,
        "create_mean_ms": figures.create_peak.mean_ms,
        "create_p99_ms": figures.create_peak.p99_ms,
        "failures": float(figures.failures),
    }
    paying = [history.span(n, p0, p1) for n in (CONFIRM_REQUEST, CHARGE_REQUEST)]
    pay = max(paying, key=lambda span: span.calls)
    found["pay_mean_ms"], found["pay_p99_ms"] = pay.mean_ms, pay.p99_ms
    calls = sum(history.span(name, p0, p1).calls for name in history.names)
    found["calls_per_order"] = calls / (orders * (p1 - p0)) if orders else math.nan
    remote = 0.0
    for group in sampler.samples:
        cpu = sampler.cpu_percent(group, p0, p1)
        found[f"cpu_ms:{group}"] = cpu * 10 / orders if orders else math.nan
        if group == PROVIDER_GROUP and not math.isnan(cpu):
            remote = cpu
    machine = sampler.machine_cpu_percent(p0, p1) - remote
    found["cpu_ms:machine"] = machine * 10 / orders if orders else math.nan
    found["order_paid_lag_p99_ms"] = event_lag[1] * 1000 if event_lag else math.nan
    lag = settled.found.lag if settled is not None else None
    found["statement_lag_p99_s"] = lag.p99_s if lag else math.nan
    found["statement_lag_max_s"] = lag.max_s if lag else math.nan
    return found


def rows_of(runs: Sequence[dict[str, float]]) -> list[Figure]:
    """The table's rows for these runs' figures: the fixed ones, then CPU per order of
    every process group any run sampled."""
    groups = {key.split(":", 1)[1] for figures in runs for key in figures if ":" in key}
    ordered = [g for g in GROUPS if g in groups]
    ordered += sorted(groups - set(GROUPS) - {"machine", PROVIDER_GROUP})
    return [
        Figure("orders_per_s", "orders created on the plateau, /s"),
        Figure("create_mean_ms", "CreateOrder mean at the peak, ms", 0),
        Figure("create_p99_ms", "CreateOrder p99 at the peak, ms", 0),
        Figure("pay_mean_ms", "the pay call at the peak (ConfirmPayment; the charge), mean ms", 0),
        Figure("pay_p99_ms", "the pay call at the peak, p99 ms", 0),
        Figure("calls_per_order", "calls per order on the plateau", 2),
        *(Figure(f"cpu_ms:{g}", f"CPU per order: {g}, ms", 2) for g in ordered),
        Figure("cpu_ms:machine", "CPU per order: whole machine less the provider, ms", 2),
        Figure(f"cpu_ms:{PROVIDER_GROUP}", "CPU per order: the provider (remote), ms", 2),
        Figure("order_paid_lag_p99_ms", "ORDER_PAID on the event stream, p99 ms", 0),
        Figure("statement_lag_p99_s", "reconciliation statement lag p99, s", 2),
        Figure("statement_lag_max_s", "reconciliation statement lag max, s", 2),
        Figure("failures", "failed calls", 0),
    ]


def _shown(value: float | None, decimals: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{decimals}f}"


def _ratio(before: float | None, after: float | None) -> str:
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return "-"
    if before == 0:
        return "-" if after == 0 else "new"
    return f"{after / before:.2f}x"


def comparison(confirm: dict[str, float], provider: dict[str, float]) -> list[str]:
    """The markdown table of both runs' figures and their ratio."""
    header = ["plateau", "ConfirmPayment", "the provider", "provider / confirm"]
    rows = [
        [
            figure.label,
            _shown(confirm.get(figure.key), figure.decimals),
            _shown(provider.get(figure.key), figure.decimals),
            _ratio(confirm.get(figure.key), provider.get(figure.key)),
        ]
        for figure in rows_of([confirm, provider])
    ]
    return table(header, rows)
