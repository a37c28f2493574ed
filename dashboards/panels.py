"""The dashboards' panels, written once: what each shows and the PromQL that shows it. The
Grafana JSON and the console templates are both drawn from these, and the end-to-end test
runs every query against a Prometheus scraping a real server (tests/e2e/test_observability.py).

Queries read the recording rules of server/alerts.rules.yml and fulfilment/alerts.rules.yml
where one exists, so a panel and the alert on the same figure agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Unit(Enum):
    """What a panel's numbers are; the value is Grafana's unit id."""

    PER_SECOND = "reqps"
    RATIO = "percentunit"
    SECONDS = "s"
    BYTES = "bytes"
    COUNT = "short"
    CORES = "none"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and how to name each series it returns, by its labels
    (`{method}` is the series' method label)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A graph over time of one or more queries."""

    title: str
    description: str
    unit: Unit
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class Row:
    """Panels under one heading."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: its name in files and URLs (`stockcore-<name>`), title and rows."""

    name: str
    title: str
    description: str
    rows: tuple[Row, ...]

    @property
    def uid(self) -> str:
        """The Grafana uid and the console's file name."""
        return f"stockcore-{self.name}"

    @property
    def panels(self) -> list[Panel]:
        """Every panel, row by row."""
        return [panel for row in self.rows for panel in row.panels]


def _panel(title: str, description: str, unit: Unit, *queries: tuple[str, str] | str) -> Panel:
    return Panel(
        title,
        description,
        unit,
        tuple(Query(*q) if isinstance(q, tuple) else Query(q) for q in queries),
    )


OVERVIEW = Dashboard(
    "overview",
    "Stockcore: overview",
    "The golden signals of the servers: traffic, errors, latency, saturation and the calls"
    " refused to keep the others in bounds, and the gateway in front of them.",
    (
        Row(
            "Traffic",
            (
                _panel(
                    "Calls by method",
                    "Calls answered per second, every code.",
                    Unit.PER_SECOND,
                    ("method:stockcore_rpc_requests:rate5m", "{method}"),
                ),
                _panel(
                    "Calls in flight",
                    "Unary calls admitted and not yet answered, per server process.",
                    Unit.COUNT,
                    ("sum by (instance) (stockcore_rpc_in_flight)", "{instance}"),
                ),
            ),
        ),
        Row(
            "Errors",
            (
                _panel(
                    "Answers other than OK, by code",
                    "A caller's mistakes (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION ...)"
                    " as well as the server's errors.",
                    Unit.PER_SECOND,
                    (
                        'sum by (code) (method_code:stockcore_rpc_requests:rate5m{code!="OK"})',
                        "{code}",
                    ),
                ),
                _panel(
                    "Server-error share by method (objective: at most 0.1 %)",
                    "INTERNAL, UNAVAILABLE, UNKNOWN, DEADLINE_EXCEEDED and DATA_LOSS among the"
                    " calls, over 5 minutes and over an hour.",
                    Unit.RATIO,
                    ("method:stockcore_rpc_errors:ratio_rate5m", "{method} 5m"),
                    ("method:stockcore_rpc_errors:ratio_rate1h", "{method} 1h"),
                ),
            ),
        ),
        Row(
            "Latency",
            (
                _panel(
                    "p99 by method",
                    "As the server measures a call, from its arrival to its answer.",
                    Unit.SECONDS,
                    ("method:stockcore_rpc_duration_seconds:p99_rate5m", "{method}"),
                ),
                _panel(
                    "p50 by method",
                    "The median call.",
                    Unit.SECONDS,
                    ("method:stockcore_rpc_duration_seconds:p50_rate5m", "{method}"),
                ),
                _panel(
                    "Share of calls over 100 ms (objective: at most 1 %)",
                    "Over the last hour.",
                    Unit.RATIO,
                    ("method:stockcore_rpc_slow:ratio_rate1h", "{method}"),
                ),
            ),
        ),
        Row(
            "Saturation",
            (
                _panel(
                    "Queue delay p99 by class",
                    "How long the oldest request of a batch waited for its batch to start;"
                    " past 100 ms for half a second the class refuses new calls.",
                    Unit.SECONDS,
                    ("klass:stockcore_queue_delay_seconds:p99_rate5m", "{klass}"),
                ),
                _panel(
                    "CPU by process",
                    "Cores used, per scraped process.",
                    Unit.CORES,
                    (
                        "sum by (job, instance) (rate(process_cpu_seconds_total[5m]))",
                        "{job} {instance}",
                    ),
                ),
                _panel(
                    "Resident memory by process",
                    "Per scraped process.",
                    Unit.BYTES,
                    (
                        "sum by (job, instance) (process_resident_memory_bytes)",
                        "{job} {instance}",
                    ),
                ),
                _panel(
                    "Redis memory used of its maxmemory",
                    "Past its maxmemory Redis refuses writes (the alert is at 80 %).",
                    Unit.RATIO,
                    (
                        "max(stockcore_redis_memory_used_bytes)"
                        " / max(stockcore_redis_memory_max_bytes > 0)",
                        "used",
                    ),
                ),
                _panel(
                    "Batch size p50 by operation",
                    "Requests decided by one statement.",
                    Unit.COUNT,
                    (
                        "histogram_quantile(0.5, sum by (operation, le)"
                        " (rate(stockcore_batch_size_bucket[5m])))",
                        "{operation}",
                    ),
                ),
            ),
        ),
        Row(
            "Refusals",
            (
                _panel(
                    "Refused share by method",
                    "Calls refused with RESOURCE_EXHAUSTED, applied nowhere: overload, or a"
                    " caller past its share.",
                    Unit.RATIO,
                    ("method:stockcore_rpc_refused:ratio_rate5m", "{method}"),
                ),
                _panel(
                    "Standing queues",
                    "1 while a class of calls refuses new calls.",
                    Unit.COUNT,
                    ("max by (klass) (stockcore_queue_standing)", "{klass}"),
                ),
                _panel(
                    "Retry delay given",
                    "What refused callers are told to wait, before jitter.",
                    Unit.SECONDS,
                    ("max by (instance) (stockcore_overload_retry_delay_seconds)", "{instance}"),
                ),
            ),
        ),
        Row(
            "Gateway",
            (
                _panel(
                    "HTTP answers by class",
                    "Requests Envoy answered, by the first digit of their status.",
                    Unit.PER_SECOND,
                    (
                        "sum by (envoy_response_code_class)"
                        ' (rate(envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="gateway"}[5m]))',
                        "{envoy_response_code_class}xx",
                    ),
                ),
                _panel(
                    "Server time seen by the gateway, p99",
                    "From Envoy's request to the server's last byte.",
                    Unit.SECONDS,
                    (
                        "histogram_quantile(0.99, sum by (le)"
                        ' (rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stockcore_grpc"}[5m])))'
                        " / 1000",
                        "p99",
                    ),
                ),
            ),
        ),
    ),
)

ORDERS = Dashboard(
    "orders",
    "Stockcore: stock and orders",
    "Orders and the money they move, the stock of the SKUs an operator watches"
    " (STOCKCORE_WATCHED_SKUS), holds and their expiry, the gate and the order events.",
    (
        Row(
            "Orders",
            (
                _panel(
                    "Orders created, paid, cancelled, expired",
                    "Per second.",
                    Unit.PER_SECOND,
                    (
                        "status:stockcore_order_transitions:rate5m"
                        '{status=~"PENDING_PAYMENT|PAID|CANCELLED|EXPIRED"}',
                        "{status}",
                    ),
                ),
                _panel(
                    "Paid, by currency",
                    "Minor units per second (cents for EUR).",
                    Unit.COUNT,
                    ("currency:stockcore_order_paid_minor:rate5m", "{currency}"),
                ),
                _panel(
                    "Refunds owed, by currency",
                    "Minor units per second owed back for paid orders cancelled.",
                    Unit.COUNT,
                    ("currency:stockcore_order_refunds_owed_minor:rate5m", "{currency}"),
                ),
                _panel(
                    "Orders paid of orders created",
                    "Over the last hour.",
                    Unit.RATIO,
                    (
                        'sum(rate(stockcore_order_transitions_total{status="PAID"}[1h]))'
                        ' / sum(rate(stockcore_order_transitions_total{status="PENDING_PAYMENT"}[1h]))',
                        "paid",
                    ),
                ),
            ),
        ),
        Row(
            "Watched stock",
            (
                _panel(
                    "Available",
                    "Units on hand and not held, per watched SKU.",
                    Unit.COUNT,
                    ('sku_level:stockcore_watched_stock_units:max{level="available"}', "{sku}"),
                ),
                _panel(
                    "Held",
                    "Units reserved by holds and unpaid orders, per watched SKU.",
                    Unit.COUNT,
                    ('sku_level:stockcore_watched_stock_units:max{level="reserved"}', "{sku}"),
                ),
                _panel(
                    "On hand",
                    "Per watched SKU.",
                    Unit.COUNT,
                    ('sku_level:stockcore_watched_stock_units:max{level="on_hand"}', "{sku}"),
                ),
            ),
        ),
        Row(
            "Holds",
            (
                _panel(
                    "Holds by outcome",
                    "Reserve and CreateOrder holds per second: admitted, turned away by the"
                    " gate or by PostgreSQL, repeated, conflicting.",
                    Unit.PER_SECOND,
                    ("sum by (result) (rate(stockcore_holds_total[5m]))", "{result}"),
                ),
                _panel(
                    "Holds expired",
                    "Per second.",
                    Unit.PER_SECOND,
                    ("sum(rate(stockcore_holds_expired_total[5m]))", "expired"),
                ),
                _panel(
                    "Expiry lag p99",
                    "How late after its expiry a hold was released (alert past 2 s).",
                    Unit.SECONDS,
                    ("job:stockcore_expiry_lag_seconds:p99_rate5m", "{job}"),
                ),
            ),
        ),
        Row(
            "Gate and order events",
            (
                _panel(
                    "Watched SKUs drifted",
                    "Where the Redis mirror disagrees with PostgreSQL (0 is right).",
                    Unit.COUNT,
                    ("max(stockcore_gate_drifted_skus)", "drifted"),
                ),
                _panel(
                    "Gate bypassed",
                    "1 while a process decides every hold in PostgreSQL alone.",
                    Unit.COUNT,
                    ("max by (instance) (stockcore_redis_fallback)", "{instance}"),
                ),
                _panel(
                    "Order events waiting",
                    "Committed and not yet on the Redis stream, as the relay last counted.",
                    Unit.COUNT,
                    ("max(stockcore_order_events_unpublished)", "waiting"),
                ),
                _panel(
                    "Order event publication p99",
                    "From an event's commit to the stream.",
                    Unit.SECONDS,
                    ("job:stockcore_order_event_publication_lag_seconds:p99_rate5m", "{job}"),
                ),
                _panel(
                    "Relay",
                    "Processes publishing order events (1 is right).",
                    Unit.COUNT,
                    ("sum(stockcore_order_relay_active)", "active"),
                ),
            ),
        ),
    ),
)

PARTNERS = Dashboard(
    "partners",
    "Stockcore: fulfilment partners",
    "The fulfilment workers' calls to the warehouse and the carriers, their circuit"
    " breakers, and the orders on their way.",
    (
        Row(
            "Partners",
            (
                _panel(
                    "Calls by partner and operation",
                    "Per second, every outcome.",
                    Unit.PER_SECOND,
                    (
                        "partner_operation:stockcore_partner_calls:rate5m",
                        "{partner} {operation}",
                    ),
                ),
                _panel(
                    "Failed share by partner",
                    "Every answer but ok, and calls a breaker refused.",
                    Unit.RATIO,
                    ("partner:stockcore_partner_call_failures:ratio_rate5m", "{partner}"),
                ),
                _panel(
                    "Latency p99 by partner",
                    "Of the calls sent.",
                    Unit.SECONDS,
                    ("partner:stockcore_partner_call_duration_seconds:p99_rate5m", "{partner}"),
                ),
                _panel(
                    "Circuit breakers",
                    "0 closed, 1 half-open, 2 open (the most open of any worker).",
                    Unit.COUNT,
                    ("partner:stockcore_partner_breaker_state:max", "{partner}"),
                ),
            ),
        ),
        Row(
            "Orders on their way",
            (
                _panel(
                    "Steps by stage and outcome",
                    "Per second.",
                    Unit.PER_SECOND,
                    ("stage_outcome:stockcore_fulfilment_steps:rate5m", "{stage} {outcome}"),
                ),
                _panel(
                    "Orders worked",
                    "Orders the workers hold a lease on.",
                    Unit.COUNT,
                    ("sum(stockcore_fulfilment_in_flight)", "in flight"),
                ),
                _panel(
                    "Paid to shipped, p90",
                    "Over the last 30 minutes.",
                    Unit.SECONDS,
                    ("job:stockcore_fulfilment_paid_to_ship_seconds:p90_rate30m", "{job}"),
                ),
                _panel(
                    "Stale orders",
                    "Orders not synchronised with a partner within the stale threshold.",
                    Unit.COUNT,
                    ("max(stockcore_fulfilment_stale_orders)", "stale"),
                ),
                _panel(
                    "Dead letters in the last 15 minutes",
                    "Steps that failed past their retry budget (0 when none).",
                    Unit.COUNT,
                    (
                        "sum(increase(stockcore_fulfilment_dead_letters_total[15m])) or vector(0)",
                        "dead letters",
                    ),
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, ORDERS, PARTNERS)
"""Every dashboard, in the order the consoles' menu lists them."""
