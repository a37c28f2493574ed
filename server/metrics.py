"""Prometheus metrics of the server, defined once, in the server's own registry.

Each program has a registry of its own (the fulfilment worker's is fulfilment/metrics.py),
so a process serves only the series of the program it runs: when a process imports both
(the tests, a tool), neither exports the other's at zero, which would keep an `absent()`
alert on the other program's series from ever firing.
"""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from runtime.registries import program_registry

REGISTRY = program_registry()
"""What the server's /metrics serves: the metrics below and the process's own (CPU, memory,
file descriptors, garbage collection)."""

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

RPC_DURATION = Histogram(
    "stockcore_rpc_duration_seconds",
    "Server-side latency of each RPC, by method and gRPC status code.",
    ["method", "code"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HOLDS = Counter(
    "stockcore_holds_total",
    "Reserve outcomes: admitted (held in PostgreSQL), rejected_by_gate (sold out in Redis, "
    "PostgreSQL untouched), rejected_by_database, repeated, conflicting.",
    ["result"],
    registry=REGISTRY,
)
REDIS_FALLBACK = Gauge(
    "stockcore_redis_fallback",
    "1 while the Redis admission gate is unusable and PostgreSQL alone serves requests.",
    registry=REGISTRY,
)
REDIS_MEMORY_USED = Gauge(
    "stockcore_redis_memory_used_bytes",
    "Memory the Redis server of the gate and the event stream uses (INFO used_memory), as "
    "last probed by this process.",
    registry=REGISTRY,
)
REDIS_MEMORY_MAX = Gauge(
    "stockcore_redis_memory_max_bytes",
    "That Redis server's maxmemory, as last probed (0: no limit; it refuses writes beyond it).",
    registry=REGISTRY,
)
REDIS_RESYNCS = Counter(
    "stockcore_redis_resyncs_total",
    "Full rebuilds of the Redis mirror from PostgreSQL.",
    registry=REGISTRY,
)
EXPIRY_LAG = Histogram(
    "stockcore_expiry_lag_seconds",
    "How long after its expiry time a hold was released by the server.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
EXPIRED = Counter("stockcore_holds_expired_total", "Holds released by expiry.", registry=REGISTRY)
BATCH_SIZE = Histogram(
    "stockcore_batch_size",
    "Requests coalesced into one Redis script run and one PostgreSQL transaction.",
    ["operation"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
STALE_PENDING = Counter(
    "stockcore_stale_pending_total",
    "Redis pending holds dropped because their request died in flight.",
    registry=REGISTRY,
)
ORDER_PAID_MINOR = Counter(
    "stockcore_order_paid_minor_total",
    "Amounts of the payments that paid orders, in minor units of their currency, by currency"
    " (a repeat of a payment is not counted again).",
    ["currency"],
    registry=REGISTRY,
)
ORDER_REFUNDS_OWED_MINOR = Counter(
    "stockcore_order_refunds_owed_minor_total",
    "Amounts owed back for paid orders cancelled (what their lines refunded did not owe"
    " already) and for lines refunded, in minor units of their currency, by currency.",
    ["currency"],
    registry=REGISTRY,
)
WATCHED_STOCK = Gauge(
    "stockcore_watched_stock_units",
    "Stock of each SKU an operator watches (STOCKCORE_WATCHED_SKUS), as PostgreSQL last"
    " answered this process's refresh: level on_hand, reserved or available.",
    ["sku", "level"],
    registry=REGISTRY,
)
GATE_DRIFTED = Gauge(
    "stockcore_gate_drifted_skus",
    "Watched SKUs whose Redis mirror disagreed with PostgreSQL at two refreshes in a row"
    " while PostgreSQL's row did not change: the gate decides by levels that are wrong.",
    registry=REGISTRY,
)
ORDER_TRANSITIONS = Counter(
    "stockcore_order_transitions_total",
    "Order status changes committed, by the status entered (PENDING_PAYMENT: created).",
    ["status"],
    registry=REGISTRY,
)
EVENT_PUBLICATION_LAG = Histogram(
    "stockcore_order_event_publication_lag_seconds",
    "From an order event's commit to its publication on the Redis stream.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "stockcore_order_events_published_total",
    "Order events added to the Redis stream (a retry after a crash may add one again).",
    registry=REGISTRY,
)
EVENTS_REPUBLISHED = Counter(
    "stockcore_order_events_republished_total",
    "Order events published again because the Redis stream lost them.",
    registry=REGISTRY,
)
EVENT_GROUPS_LEFT_BEHIND = Counter(
    "stockcore_order_event_groups_left_behind_total",
    "Trims (by age, or past the stream's hard cap) that removed entries a consumer group "
    "had not finished.",
    ["group"],
    registry=REGISTRY,
)
EVENT_STREAM_LENGTH = Gauge(
    "stockcore_order_event_stream_length",
    "Entries in the Redis order event stream after the relay's last trim (working relay only).",
    registry=REGISTRY,
)
EVENTS_UNPUBLISHED = Gauge(
    "stockcore_order_events_unpublished",
    "Order events committed but not yet published, as last counted by the relay.",
    registry=REGISTRY,
)
RELAY_ACTIVE = Gauge(
    "stockcore_order_relay_active",
    "1 in the process that holds the outbox sequencer lock, 0 in those standing by.",
    registry=REGISTRY,
)
WATCH_STREAMS = Gauge(
    "stockcore_order_watch_streams", "Open WatchOrders streams.", registry=REGISTRY
)
CALLS_REFUSED = Counter(
    "stockcore_calls_refused_total",
    "Calls refused before they ran: UNAUTHENTICATED or PERMISSION_DENIED, by ErrorInfo reason.",
    ["reason"],
    registry=REGISTRY,
)
RPC_IN_FLIGHT = Gauge(
    "stockcore_rpc_in_flight",
    "Unary calls admitted and not yet answered, in this process.",
    registry=REGISTRY,
)
RPC_REFUSED = Counter(
    "stockcore_rpc_refused_total",
    "Calls refused with RESOURCE_EXHAUSTED before any work, by method.",
    ["method"],
    registry=REGISTRY,
)
QUEUE_DELAY = Histogram(
    "stockcore_queue_delay_seconds",
    "How long the oldest request of each batch waited before its batch started, by class"
    " of calls (server/queue_delay.py).",
    ["klass"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
QUEUE_STANDING = Gauge(
    "stockcore_queue_standing",
    "1 while a class of calls has a standing queue and its new calls are refused, else 0.",
    ["klass"],
    registry=REGISTRY,
)
OVERLOAD_RETRY_DELAY = Gauge(
    "stockcore_overload_retry_delay_seconds",
    "The retry delay refused callers are given (before jitter), in this process.",
    registry=REGISTRY,
)
SHARES_HELD = Gauge(
    "stockcore_shares_held",
    "What callers hold at once of each thing bounded per caller (server/shares.py):"
    " open streams, reads in PostgreSQL, health watches, in this process.",
    ["resource"],
    registry=REGISTRY,
)
SHARES_REFUSED = Counter(
    "stockcore_shares_refused_total",
    "Calls refused with RESOURCE_EXHAUSTED because their caller held its share of a"
    " resource (bound=caller), started its share of them in the last second (bound=rate),"
    " or every caller together held the most allowed (bound=total).",
    ["resource", "bound"],
    registry=REGISTRY,
)
