"""Prometheus metrics of the reconciler (python -m payments.reconciler), defined once, in its
own registry (served on STOCKCORE_RECONCILE_METRICS_PORT, loopback only). server/metrics.py
says why each program keeps its own registry.

Every series the alerts read exists from the start (payments/alerts.rules.yml): each
kind and verdict of the lag histogram, each reason of the open exceptions at 0, each
outcome of the passes, so a rate reads 0 rather than nothing and an alert has a series to
judge."""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from runtime.registries import program_registry
from server.domain.reconciliation import SubjectKind, Verdict

REGISTRY = program_registry()
"""What the reconciler's /metrics serves: the metrics below and the process's own."""


def label(code: SubjectKind | Verdict) -> str:
    """A kind, verdict or reason as the metrics name it: `charge`, `amount_differs`."""
    return code.name.lower()


#: The reasons an exception can have: every verdict but MATCHED.
REASONS = tuple(v for v in Verdict if v is not Verdict.MATCHED)

STATEMENT_LAG = Histogram(
    "stockcore_reconciliation_statement_lag_seconds",
    "Seconds from the fact a statement line states (a payment or charge to return recorded "
    "here, a charge or refund created at the provider, a refund's failure) to the line "
    "(lag_s of stockcore.reconciliation_statements), by the subject's kind (charge, refund) "
    "and the line's verdict; its count is the lines written. MISSING_AT_PROVIDER and "
    "MISSING_HERE are stated only after the grace period, SETTLED_LATE only past the settle "
    "deadline: their lag is that wait.",
    ["kind", "verdict"],
    # Past 30 s (the longest a statement should wait) to the grace period's 300 s and
    # beyond, where the lines that wait by design fall.
    buckets=(0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
    registry=REGISTRY,
)
for _kind in SubjectKind:
    for _verdict in Verdict:
        STATEMENT_LAG.labels(label(_kind), label(_verdict))

OPEN_EXCEPTIONS = Gauge(
    "stockcore_reconciliation_open_exceptions",
    "Exceptions no person has resolved and no later statement corrected, by reason (the "
    "verdict that opened them), as read at the reconciler's last pass.",
    ["reason"],
    registry=REGISTRY,
)
for _reason in REASONS:
    OPEN_EXCEPTIONS.labels(label(_reason))

PASSES = Counter(
    "stockcore_reconciliation_passes_total",
    "Reconciliation passes (follow the feed, recover, state, close days, count the open "
    "exceptions), by outcome: ok, or failed (the provider or the database failed; tried "
    "again at the next pass).",
    ["outcome"],
    registry=REGISTRY,
)
for _outcome in ("ok", "failed"):
    PASSES.labels(_outcome)

LAST_PASS = Gauge(
    "stockcore_reconciliation_last_pass_timestamp_seconds",
    "When the last pass that succeeded ended (Unix time); the program's start until one has.",
    registry=REGISTRY,
)

LEDGER_IMBALANCE = Gauge(
    "stockcore_ledger_imbalance_minor",
    "Minor units by which the money ledger differs from the facts it records, by currency "
    "(stockcore.ledger_imbalance(): for each kind of transfer, its transfers' total less "
    "its facts' total, taken whole and summed). Must be 0; as of the last ledger check.",
    ["currency"],
    registry=REGISTRY,
)

LEDGER_CHECKS = Counter(
    "stockcore_ledger_checks_total",
    "Ledger checks (stockcore.ledger_imbalance()) run, by outcome: ok, or failed (the "
    "database failed or the check outlasted STOCKCORE_DB_TIMEOUT).",
    ["outcome"],
    registry=REGISTRY,
)
for _outcome in ("ok", "failed"):
    LEDGER_CHECKS.labels(_outcome)
