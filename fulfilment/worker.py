"""The fulfilment worker, `python -m fulfilment`: its own process, several at once.

- **Intake.** A consumer of the order event stream in the group "fulfilment"
  (clients/events.py: claims, retries, the group's event dead letters): ORDER_PAID starts
  an order's fulfilment row in PostgreSQL, ORDER_CANCELLED stops it. Other events are
  acknowledged unread.
- **Steps.** The worker leases due rows (FOR UPDATE SKIP LOCKED, so workers share them)
  and works up to `fulfil_concurrency` orders at once (fulfilment/steps.py),
  recording each batch's outcomes in one statement. A worker that dies leaves its leases
  to run out; another worker takes the rows over, and what the dead one had sent is
  repeated with the same idempotency keys.
- **Heartbeat.** Every second: the breakers' states and transitions into PostgreSQL (for
  `stockctl fulfilment status`) and the metrics gauges.
- **Stale-sync scan.** Every `stale_scan_interval_s`: orders whose last sync is older than
  `stale_after_s` are counted (a gauge the alert rules read) and pushed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import start_http_server

from clients.credentials import Credentials
from clients.events import REDIS_OUTAGES, OrderEventConsumer
from clients.inventory import RetryPolicy as ClientRetryPolicy
from clients.orders import EventType, OrderClient, OrderEvent
from fulfilment.config import FulfilmentSettings
from fulfilment.guard import PartnerGuard, RetryPolicy
from fulfilment.http_partners import HttpCarrier, HttpWarehouse
from fulfilment.metrics import (
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    FULFILMENT_IN_FLIGHT,
    REGISTRY,
    STALE_OLDEST,
    STALE_ORDERS,
    STALE_PUSHED,
    STALE_SCANS,
)
from fulfilment.steps import CarrierLink, Partners, Steps
from fulfilment.store import BreakerTransitionRow, FulfilmentStore, StaleScan
from runtime.breaker import BreakerSettings, CircuitBreaker, Transition

log = logging.getLogger(__name__)

#: The consumer group of the order event stream the workers share.
GROUP = "fulfilment"
_WANTED = frozenset({EventType.EVENT_TYPE_ORDER_PAID, EventType.EVENT_TYPE_ORDER_CANCELLED})
_HEARTBEAT_S = 1.0


def order_client(settings: FulfilmentSettings, credentials: Credentials) -> OrderClient:
    """The worker's client of the order server: the one place it is built. It presents
    `credentials` (read at start-up, clients/credentials.py: STOCKCORE_TOKEN,
    STOCKCORE_CA_FILE, ...); the token's subject, not a name of its own, is what the audit
    trail records."""
    return OrderClient(
        settings.order_target,
        credentials=credentials,
        default_timeout=10.0,
        retry=ClientRetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0),
    )


def breaker_settings(settings: FulfilmentSettings) -> BreakerSettings:
    """The breakers' thresholds from the settings."""
    return BreakerSettings(
        slow_call_s=settings.breaker_slow_call_s,
        slow_rate=settings.breaker_slow_rate,
        error_rate=settings.breaker_error_rate,
        min_calls=settings.breaker_min_calls,
        window_s=settings.breaker_window_s,
        consecutive_failures=settings.breaker_consecutive_failures,
        open_s=settings.breaker_open_s,
        half_open_calls=settings.breaker_half_open_calls,
    )


def worker_name() -> str:
    """This process's name among the workers."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """One fulfilment worker process's loops."""

    def __init__(
        self,
        settings: FulfilmentSettings,
        store: FulfilmentStore,
        redis_client: aioredis.Redis,
        orders: OrderClient,
        *,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or worker_name()
        self._store = store
        self._redis = redis_client
        self._orders = orders
        self._started_at = datetime.now(UTC)
        self._stopping = asyncio.Event()
        self._transitions: list[BreakerTransitionRow] = []
        self._in_flight = 0
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.partners = self._partners()
        self.steps = Steps(settings, self.partners, orders, store, self.name)
        self.consumer = OrderEventConsumer(
            redis_client,
            group=GROUP,
            consumer=self.name,
            claim_idle_ms=int(settings.fulfil_event_claim_idle_s * 1000),
            retry_ms=1000,
        )

    def _guard(self, partner: str) -> PartnerGuard:
        breaker = CircuitBreaker(
            partner, breaker_settings(self.settings), on_transition=self._transition
        )
        BREAKER_STATE.labels(partner).set(breaker.state.value)
        s = self.settings
        policy = RetryPolicy(
            s.partner_call_attempts, s.partner_retry_initial_s, s.partner_retry_max_s
        )
        return PartnerGuard(breaker, policy)

    def _partners(self) -> Partners:
        s = self.settings
        timeout_s, max_reply = s.partner_timeout_s, s.partner_max_reply_bytes
        warehouse = HttpWarehouse(s.warehouse_url, timeout_s=timeout_s, max_reply_bytes=max_reply)

        def carrier(code: str, url: str) -> CarrierLink:
            return CarrierLink(
                HttpCarrier(code, url, timeout_s=timeout_s, max_reply_bytes=max_reply),
                self._guard(code),
            )

        carriers = {s.primary_carrier: carrier(s.primary_carrier, s.primary_carrier_url)}
        if s.fallback_carrier:
            carriers[s.fallback_carrier] = carrier(s.fallback_carrier, s.fallback_carrier_url)
        return Partners(
            warehouse,
            self._guard(warehouse.name),
            carriers,
            s.primary_carrier,
            s.fallback_carrier or None,
        )

    def _transition(self, t: Transition) -> None:
        BREAKER_STATE.labels(t.partner).set(t.after.value)
        BREAKER_TRANSITIONS.labels(t.partner, t.after.name).inc()
        log.warning(
            "circuit breaker %s: %s -> %s (%s)",
            t.partner,
            t.before.name,
            t.after.name,
            t.reason,
            extra={"partner": t.partner, "state": t.after.name, "reason": t.reason},
        )
        self._transitions.append(
            BreakerTransitionRow(
                t.partner, t.before.name, t.after.name, t.reason, datetime.now(UTC)
            )
        )

    def stop(self) -> None:
        """Ask every loop to finish."""
        self._stopping.set()

    async def run(self) -> None:
        """Run every loop until stopped; then let the steps in flight finish."""
        await self.consumer.ensure_group("0")
        loops = [
            asyncio.create_task(self._intake(), name="fulfil-intake"),
            asyncio.create_task(self._claim_loop(), name="fulfil-steps"),
            asyncio.create_task(self._heartbeat_loop(), name="fulfil-heartbeat"),
            asyncio.create_task(self._scan_loop(), name="fulfil-scan"),
        ]
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()
            _, pending = await asyncio.wait(loops, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self.settings.partner_timeout_s + 2)
            with contextlib.suppress(Exception):
                await self._heartbeat()

    async def close(self) -> None:
        """Close the partners' connections."""
        await self.partners.warehouse.close()
        for link in self.partners.carriers.values():
            await link.carrier.close()

    # --- intake ---------------------------------------------------------------------

    async def handle(self, event: OrderEvent) -> None:
        """One ORDER_PAID or ORDER_CANCELLED event."""
        order = event.order
        if event.type == EventType.EVENT_TYPE_ORDER_PAID:
            lines = [(line.sku, line.quantity) for line in order.lines]
            await self._store.paid(
                order.order_id, order.customer_id, lines, event.occur_time, self.name
            )
        elif event.type == EventType.EVENT_TYPE_ORDER_CANCELLED:
            await self._store.cancelled(order.order_id, order.customer_id, self.name)

    async def _intake(self) -> None:
        pause = 0.1
        while not self._stopping.is_set():
            try:
                deliveries = await self.consumer.fetch(count=200, block_ms=500)
                wanted = [d for d in deliveries if d.event.type in _WANTED]
                await self.consumer.ack(
                    [d.entry_id for d in deliveries if d.event.type not in _WANTED]
                )
                await self.consumer.handle(wanted, self.handle)
                pause = 0.1
            except REDIS_OUTAGES as exc:
                log.warning(
                    "Redis unreachable or full; taking in events again when it is back",
                    extra={"error": str(exc)},
                )
                self.consumer.reread_pending()
                await self._sleep(pause)
                pause = min(pause * 2, 5.0)

    # --- steps ----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            room = s.fulfil_concurrency - self._in_flight
            if room <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), s.fulfil_poll_interval_s)
                continue
            try:
                rows = await self._store.claim(
                    self.name, min(s.fulfil_batch, room), s.fulfil_lease_s
                )
            except Exception:
                log.exception("claiming fulfilment work failed")
                await self._sleep(1.0)
                continue
            if not rows:
                await self._sleep(s.fulfil_poll_interval_s)
                continue
            self._in_flight += len(rows)
            FULFILMENT_IN_FLIGHT.set(self._in_flight)
            task = asyncio.create_task(self._work(rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self, rows: list[Any]) -> None:
        try:
            outcomes = await self.steps.run(rows)
            await self._store.record(outcomes, self.name)
        except Exception:
            # The leases run out and the rows are worked again, by whoever claims them.
            log.exception("a fulfilment batch failed", extra={"orders": len(rows)})
        finally:
            self._in_flight -= len(rows)
            FULFILMENT_IN_FLIGHT.set(self._in_flight)
            self._slot_freed.set()

    # --- heartbeat and scan ---------------------------------------------------------

    async def _heartbeat(self) -> None:
        breakers: dict[str, object] = {}
        for guard in self.partners.guards():
            snapshot = guard.breaker.snapshot()
            breakers[guard.partner] = snapshot
            BREAKER_STATE.labels(guard.partner).set(guard.breaker.state.value)
        transitions, self._transitions = self._transitions, []
        try:
            await self._store.heartbeat(
                self.name, self._started_at, self._in_flight, breakers, transitions
            )
        except Exception:
            self._transitions = transitions + self._transitions
            raise

    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._heartbeat()
            except Exception:
                log.warning("the fulfilment heartbeat failed", exc_info=True)
            await self._sleep(_HEARTBEAT_S)

    async def scan(self) -> StaleScan:
        """One stale-sync scan; what it found and did."""
        found = await self._store.scan_stale(self.settings.stale_after_s, self.name)
        STALE_SCANS.inc()
        STALE_ORDERS.set(found.stale)
        STALE_OLDEST.set(found.oldest_s)
        STALE_PUSHED.inc(found.pushed + found.created)
        level = logging.WARNING if found.stale else logging.INFO
        log.log(
            level,
            "stale-sync scan: %d stale, %d pushed again, %d fulfilments created",
            found.stale,
            found.pushed,
            found.created,
            extra={
                "stale": found.stale,
                "oldest_s": round(found.oldest_s, 1),
                "stale_after": str(timedelta(seconds=self.settings.stale_after_s)),
            },
        )
        return found

    async def _scan_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.scan()
            except Exception:
                log.exception("the stale-sync scan failed")
            await self._sleep(self.settings.stale_scan_interval_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def run_worker(settings: FulfilmentSettings, credentials: Credentials) -> None:
    """Serve as a fulfilment worker, calling the order server with `credentials`, until
    SIGINT or SIGTERM."""
    assert settings.pg_dsn is not None and settings.redis_url is not None
    if settings.fulfil_metrics_port:
        start_http_server(settings.fulfil_metrics_port, addr=settings.grpc_host, registry=REGISTRY)
    store = await FulfilmentStore.connect(
        settings.pg_dsn, pool_size=8, timeout=settings.db_timeout_s
    )
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    orders = order_client(settings, credentials)
    worker = Worker(settings, store, client, orders)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    log.info(
        "fulfilment worker running",
        extra={
            "worker": worker.name,
            "orders": settings.order_target,
            "warehouse": settings.warehouse_url,
        },
    )
    try:
        await worker.run()
    finally:
        await worker.close()
        await orders.close()
        await client.aclose()
        await store.close()
