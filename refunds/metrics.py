"""Prometheus metrics of the refund sender (python -m refunds), defined once, in its own
registry (served on STOCKCORE_REFUND_METRICS_PORT, loopback only). server/metrics.py says
why each program keeps its own registry.

The gauges are the refunds in PostgreSQL, which every sender reads alike: the alerts take
their maximum over senders (payments/alerts.rules.yml). Every series they read exists from
the start, at 0."""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
)

from runtime.registries import program_registry

REGISTRY = program_registry()
"""What a sender's /metrics serves: the metrics below and the process's own."""

#: The calls a sender makes: a refund's send (POST), or its poll (GET) once the provider has it.
CALLS = ("send", "poll")
#: What a call came to (refunds/worker.py).
OUTCOMES = ("pending", "succeeded", "failed", "refused", "retry", "breaker_open")
#: The states of a refund not settled yet.
UNSETTLED_STATES = ("requested", "sent")

REFUND_CALLS = Counter(
    "stockcore_refund_calls_total",
    "Sends and polls of refunds at the payment provider, by call (send, poll) and outcome: "
    "pending (the provider has it, not settled), succeeded, failed (the provider failed "
    "it), refused (a send refused for good: the refund failed), retry (nothing known: sent "
    "again after a backoff), breaker_open (refused by the circuit breaker, never sent). A "
    "refund the provider's webhook settles at the receiver is not counted here.",
    ["call", "outcome"],
    registry=REGISTRY,
)
for _call in CALLS:
    for _outcome in OUTCOMES:
        REFUND_CALLS.labels(_call, _outcome)

UNSETTLED = Gauge(
    "stockcore_refunds_unsettled",
    "Refunds owed and not settled, by state: requested (not yet accepted by the provider), "
    "sent (accepted, not settled), as of the sender's last read.",
    ["state"],
    registry=REGISTRY,
)
OLDEST_UNSETTLED = Gauge(
    "stockcore_refunds_oldest_unsettled_seconds",
    "Seconds since the oldest refund not settled was owed, by state (0 when none).",
    ["state"],
    registry=REGISTRY,
)
for _state in UNSETTLED_STATES:
    UNSETTLED.labels(_state)
    OLDEST_UNSETTLED.labels(_state)

OLDEST_DUE = Gauge(
    "stockcore_refunds_oldest_due_seconds",
    "Seconds the refund due longest (to send, or to poll) has waited for a sender to claim "
    "it (0 when none is due): the senders' backlog.",
    registry=REGISTRY,
)
