"""Prometheus metrics of the fulfilment worker, defined once, in the worker's own registry
(served on STOCKCORE_FULFIL_METRICS_PORT): a process that imports this module and the
server's exports neither program's series for the other (server/metrics.py says why)."""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from runtime.registries import program_registry

REGISTRY = program_registry()
"""What a worker's /metrics serves: the metrics below and the process's own."""

PARTNER_CALLS = Counter(
    "stockcore_partner_calls_total",
    "Calls to partners, by partner, operation and outcome (ok, not_applied, unknown, "
    "malformed, rejected, breaker_open: refused by the circuit breaker, never sent).",
    ["partner", "operation", "outcome"],
    registry=REGISTRY,
)
PARTNER_CALL_DURATION = Histogram(
    "stockcore_partner_call_duration_seconds",
    "Latency of the calls sent to partners, by partner and operation.",
    ["partner", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
PARTNER_RETRIES = Counter(
    "stockcore_partner_retries_total",
    "Calls sent again after a failure (backoff with jitter), by partner and operation.",
    ["partner", "operation"],
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "stockcore_partner_breaker_state",
    "Each partner's circuit breaker in this worker: 0 closed, 1 half-open, 2 open.",
    ["partner"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "stockcore_partner_breaker_transitions_total",
    "Circuit breaker transitions, by partner and the state entered.",
    ["partner", "state"],
    registry=REGISTRY,
)
FULFILMENT_STEPS = Counter(
    "stockcore_fulfilment_steps_total",
    "Fulfilment steps finished, by stage and outcome (done, waiting, deferred: a breaker "
    "was open, failed: counted against the retry budget, dead).",
    ["stage", "outcome"],
    registry=REGISTRY,
)
FULFILMENT_DEAD_LETTERS = Counter(
    "stockcore_fulfilment_dead_letters_total",
    "Hand-offs and bookings that failed past their retry budget, by stage and partner.",
    ["stage", "partner"],
    registry=REGISTRY,
)
FULFILMENT_FALLBACK_BOOKINGS = Counter(
    "stockcore_fulfilment_fallback_bookings_total",
    "Bookings sent to the fallback carrier because the primary's breaker was open.",
    registry=REGISTRY,
)
HANDOFF_TO_SHIP = Histogram(
    "stockcore_fulfilment_handoff_to_ship_seconds",
    "From the warehouse's acknowledgement of a hand-off to the order's ShipOrder.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400),
    registry=REGISTRY,
)
PAID_TO_SHIP = Histogram(
    "stockcore_fulfilment_paid_to_ship_seconds",
    "From an order's payment to its ShipOrder by the fulfilment worker.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400),
    registry=REGISTRY,
)
FULFILMENT_IN_FLIGHT = Gauge(
    "stockcore_fulfilment_in_flight",
    "Orders this worker holds a lease on and is working.",
    registry=REGISTRY,
)
STALE_ORDERS = Gauge(
    "stockcore_fulfilment_stale_orders",
    "PAID, SHIPPED or IN_TRANSIT orders whose last sync is older than the stale threshold, "
    "as counted by this worker's last stale-sync scan.",
    registry=REGISTRY,
)
STALE_OLDEST = Gauge(
    "stockcore_fulfilment_stale_oldest_seconds",
    "Age of the oldest last sync among those stale orders (0 when none).",
    registry=REGISTRY,
)
STALE_PUSHED = Counter(
    "stockcore_fulfilment_stale_pushed_total",
    "Stale orders the scan pushed to the workers again (or created a fulfilment for).",
    registry=REGISTRY,
)
STALE_SCANS = Counter(
    "stockcore_fulfilment_stale_scans_total", "Stale-sync scans run.", registry=REGISTRY
)
