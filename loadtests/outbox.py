"""How long a payment takes to reach the order-event stream that reconciliation reads.

The competitor reconciles "within 30 s of payment". Here an ORDER_PAID event is written in the
payment's own transaction and relayed to the Redis stream "stockcore:order-events"; a consumer
(finance) can reconcile as soon as it is there. The lag of one event is the stream entry's
time (its id's milliseconds, Redis' clock) minus the event's occur_time (the commit, server
clock; both clocks are this machine's). Read-only: XRANGE only.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from stockcore.v1 import orders_pb2

from loadtests.driver import percentile

STREAM = "stockcore:order-events"


@dataclass(frozen=True)
class PublicationLag:
    """Payment-to-stream lag of the ORDER_PAID events of a run."""

    events: int
    p50_s: float
    p99_s: float
    max_s: float


def payment_lag(redis_url: str, since: float, until: float) -> PublicationLag | None:
    """Lag of ORDER_PAID events that occurred in [since, until]; None if the stream is empty."""
    client = redis.Redis.from_url(redis_url)
    lags: list[float] = []
    try:
        start = f"{int(since * 1000)}-0"
        while True:
            entries = client.xrange(STREAM, min=start, max="+", count=5000)
            if not entries:
                break
            for entry_id, fields in entries:
                event = orders_pb2.OrderEvent.FromString(fields[b"event"])
                occurred = event.occur_time.ToNanoseconds() / 1e9
                if event.type != orders_pb2.EVENT_TYPE_ORDER_PAID or not since <= occurred <= until:
                    continue
                published = int(entry_id.split(b"-")[0]) / 1000.0
                lags.append(max(0.0, published - occurred))
            last_ms, last_seq = entries[-1][0].decode().split("-")
            start = f"{last_ms}-{int(last_seq) + 1}"
    finally:
        client.close()
    if not lags:
        return None
    lags.sort()
    return PublicationLag(len(lags), percentile(lags, 50), percentile(lags, 99), lags[-1])
