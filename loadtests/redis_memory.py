"""What a load run left in Redis, and the memory budget it gives at the reference day's
volume (README, "Redis memory").

After the run, read-only: the order-event stream's length and its exact size (MEMORY USAGE
with SAMPLES 0, so every entry is counted, not estimated from a few), the gate's known
reservation ids and any consumer group's ledger entries (counted with SCAN, their size the
mean MEMORY USAGE of up to `SAMPLE` of them), INFO memory; orders and events in PostgreSQL.

The budget is arithmetic on those figures: the stream holds the events published in its
last `event_stream_max_age_s` (at most `event_stream_maxlen` entries while every group keeps
up, 10x that when one lags), the gate a known id per reservation for a day after it ends,
a group's ledger an entry per event it handled for a week (clients/events.py's LEDGER_TTL_S).
Events per order are those of the orders whose life ended (delivered, cancelled or expired:
one event per version), and all of them are counted in the window their order was created
in: a run compresses an order's life into minutes, so this is the upper bound a day sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import redis

from clients.events import LEDGER_TTL_S
from loadtests.locust.daycurve import DAY_S, DayCurve
from server.config import Settings
from server.domain.orders import OrderStatus

STREAM = "stockcore:order-events"
KNOWN_IDS = "sc:r:*"
LEDGERS = STREAM + ":ledger:*"
# Keys whose MEMORY USAGE is read, of each kind.
SAMPLE = 1000
# The stream's hard cap as a multiple of its usual length (server/storage/event_stream.py).
HARD_CAP = 10
MB = 1_000_000
ENDED = [OrderStatus.DELIVERED, OrderStatus.CANCELLED, OrderStatus.EXPIRED]


@dataclass(frozen=True)
class KeySample:
    """How many keys of one kind Redis holds, and their mean size."""

    count: int
    bytes_each: float


@dataclass(frozen=True)
class RedisFootprint:
    """Redis after a run, beside the orders and events that filled it."""

    stream_entries: int
    stream_bytes: int
    known_ids: KeySample
    ledgers: KeySample
    orders: int
    events: int
    ended_orders: int
    ended_events: int
    """Orders whose life ended, and their events."""
    used_bytes: int
    max_bytes: int
    policy: str

    @property
    def bytes_per_entry(self) -> float:
        """The stream's bytes per entry (its share of the stream's own structure included)."""
        return self.stream_bytes / self.stream_entries if self.stream_entries else 0.0

    @property
    def events_per_order(self) -> float:
        """Order events per order created, as far as the run took them."""
        return self.events / self.orders if self.orders else 0.0

    @property
    def events_per_life(self) -> float:
        """Order events per order over its whole life (those of the run's ended orders)."""
        return self.ended_events / self.ended_orders if self.ended_orders else 0.0


def _sample(client: redis.Redis, pattern: str) -> KeySample:
    count, sizes = 0, list[int]()
    for key in client.scan_iter(match=pattern, count=1000):
        count += 1
        if len(sizes) < SAMPLE:
            sizes.append(int(client.memory_usage(key, samples=0) or 0))
    return KeySample(count, sum(sizes) / len(sizes) if sizes else 0.0)


async def _counts(pg_dsn: str) -> tuple[int, int, int, int]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        orders = await conn.fetchval("SELECT count(*) FROM stockcore.orders")
        events = await conn.fetchval("SELECT count(*) FROM stockcore.order_events")
        # An order has one event per version.
        ended = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(version), 0) FROM stockcore.orders"
            " WHERE status = ANY($1::smallint[])",
            [int(status) for status in ENDED],
        )
    finally:
        await conn.close()
    return int(orders), int(events), int(ended[0]), int(ended[1])


def measure(redis_url: str, pg_dsn: str) -> RedisFootprint:
    """Read the footprint (nothing is written)."""
    orders, events, ended_orders, ended_events = asyncio.run(_counts(pg_dsn))
    client = redis.Redis.from_url(redis_url)
    try:
        memory = client.info("memory")
        return RedisFootprint(
            stream_entries=int(client.xlen(STREAM)),
            stream_bytes=int(client.memory_usage(STREAM, samples=0) or 0),
            known_ids=_sample(client, KNOWN_IDS),
            ledgers=_sample(client, LEDGERS),
            orders=orders,
            events=events,
            ended_orders=ended_orders,
            ended_events=ended_events,
            used_bytes=int(memory["used_memory"]),
            max_bytes=int(memory["maxmemory"]),
            policy=str(memory["maxmemory_policy"]),
        )
    finally:
        client.close()


@dataclass(frozen=True)
class DayBudget:
    """Redis memory for one day of orders at a given volume, by what holds it."""

    orders_per_day: float
    busiest_window_orders: float
    """Orders created in the busiest `max_age_s` of the day."""
    stream_mb: float
    """The stream at its fullest while every consumer group keeps up."""
    stream_lagging_mb: float
    """The same with a group that lags (the stream keeps what it has not read, to the cap)."""
    day_of_stream_mb: float
    """What the stream would hold after a day without the age bound (or a length cap)."""
    known_ids_mb: float
    ledger_mb: float
    """A consumer group's ledger, if its entries per order are those of the run."""


def busiest_window(curve: DayCurve, seconds: float, step: float = 60.0) -> float:
    """The most orders the day's curve creates in any `seconds` (stepped by `step`)."""
    starts = [i * step for i in range(int(DAY_S / step))]
    return max(curve.orders_between(s, s + seconds, step=min(step, seconds)) for s in starts)


def day_budget(
    footprint: RedisFootprint, settings: Settings, curve: DayCurve | None = None
) -> DayBudget:
    """The budget of `curve`'s day (the reference day unless given) from a run's figures."""
    curve = curve or DayCurve()
    per_order = footprint.events_per_life or footprint.events_per_order
    entry = footprint.bytes_per_entry
    busiest = busiest_window(curve, settings.event_stream_max_age_s)
    by_age = busiest * per_order
    ledger_per_order = footprint.ledgers.count / footprint.orders if footprint.orders else 0.0
    return DayBudget(
        orders_per_day=curve.orders_per_day,
        busiest_window_orders=busiest,
        stream_mb=min(by_age, settings.event_stream_maxlen) * entry / MB,
        stream_lagging_mb=min(by_age, HARD_CAP * settings.event_stream_maxlen) * entry / MB,
        day_of_stream_mb=curve.orders_per_day * per_order * entry / MB,
        # A known id stays for a day after its hold ends: a day's orders at any time.
        known_ids_mb=curve.orders_per_day * footprint.known_ids.bytes_each / MB,
        ledger_mb=curve.orders_per_day
        * (LEDGER_TTL_S / DAY_S)
        * ledger_per_order
        * footprint.ledgers.bytes_each
        / MB,
    )


def report_lines(footprint: RedisFootprint, settings: Settings) -> Sequence[str]:
    """The footprint and the reference day's budget, as the run's summary shows them."""
    budget = day_budget(footprint, settings)
    f = footprint
    return [
        f"- Redis used_memory {f.used_bytes / MB:,.1f} MB of maxmemory "
        f"{f.max_bytes / MB:,.0f} MB ({f.policy})",
        f"- order-event stream: {f.stream_entries:,} entries, {f.stream_bytes / MB:,.1f} MB "
        f"(MEMORY USAGE, SAMPLES 0): **{f.bytes_per_entry:,.0f} bytes per entry**",
        f"- {f.events:,} events for {f.orders:,} orders ({f.events_per_order:.2f} per order); "
        f"the {f.ended_orders:,} orders whose life ended (delivered, cancelled, expired) had "
        f"**{f.events_per_life:.2f} events per order** (PostgreSQL)",
        f"- gate known ids: {f.known_ids.count:,} keys of {f.known_ids.bytes_each:,.0f} bytes; "
        f"consumer-group ledgers: {f.ledgers.count:,} keys of {f.ledgers.bytes_each:,.0f} bytes",
        "",
        f"At the reference volume ({budget.orders_per_day:,.0f} orders/day; the busiest "
        f"{settings.event_stream_max_age_s:g} s creates {budget.busiest_window_orders:,.0f}), "
        f"with STOCKCORE_EVENT_STREAM_MAX_AGE={settings.event_stream_max_age_s:g} and "
        f"STOCKCORE_EVENT_STREAM_MAXLEN={settings.event_stream_maxlen:,}:",
        "",
        "| what | MB |",
        "| --- | --- |",
        f"| a day of events, if the stream kept them | {budget.day_of_stream_mb:,.0f} |",
        f"| the stream at its fullest, every group keeping up | {budget.stream_mb:,.0f} |",
        f"| the stream at its fullest, a group lagging | {budget.stream_lagging_mb:,.0f} |",
        f"| gate known ids (a day's reservations) | {budget.known_ids_mb:,.0f} |",
        f"| a consumer group's ledger (a week), at this run's entries per order "
        f"| {budget.ledger_mb:,.0f} |",
    ]
