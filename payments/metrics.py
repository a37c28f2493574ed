"""Prometheus metrics of the webhook receiver (python -m payments), defined once, in the
receiver's own registry (served on STOCKCORE_WEBHOOK_METRICS_PORT, loopback only: the
webhook listener itself faces the provider). server/metrics.py says why each program keeps
its own registry."""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Histogram,
)

from runtime.registries import program_registry

REGISTRY = program_registry()
"""What the receiver's /metrics serves: the metrics below and the process's own."""

WEBHOOKS = Counter(
    "stockcore_payment_webhooks_total",
    "Deliveries of the payment provider's webhooks, by outcome: paid, to_return, "
    "refund_settled (a refund's outcome settled its refund), noted (an event recorded that "
    "moves no money here), repeat (an event recorded before: counted, "
    "nothing else), refused_signature (401: not the provider's, or not fresh), refused (400: "
    "unreadable, an unknown order or id), conflict (409: the charge paid another order), "
    "unavailable (503: not recorded, the provider delivers it again).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_DURATION = Histogram(
    "stockcore_payment_webhook_duration_seconds",
    "Time from a delivery's arrival to its answer (ConfirmPayment and the database write "
    "included), by outcome as stockcore_payment_webhooks_total has it.",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
