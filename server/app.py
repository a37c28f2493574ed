"""Wiring: storage, the inventory core and the gRPC server, with health, reflection
and metrics; one or several worker processes sharing the port."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from stockcore.v1 import inventory_pb2, orders_pb2, reconciliation_pb2

from runtime import logs
from server import metrics
from server.auth import tls
from server.auth.tokens import verifier_from_settings
from server.config import Settings, SettingsError
from server.domain.errors import Unavailable
from server.inventory.core import InventoryCore
from server.inventory.mirror import Mirror
from server.orders.pricing import Pricing
from server.orders.relay import Relay
from server.orders.service import OrderCore
from server.orders.watch import EventFeed
from server.queue_delay import Queues
from server.rates import CallerRates
from server.rpc import orders_convert
from server.rpc.access import Gatekeeper
from server.rpc.health import HealthService
from server.rpc.inventory_servicer import InventoryServicer
from server.rpc.observe import service_handler
from server.rpc.orders_servicer import OrderServicer
from server.rpc.reconciliation_servicer import ReconciliationServicer
from server.rpc.shedding import LoadShedder
from server.shares import CONTENDED_WINDOW_S, Shares
from server.shutdown import cancel_and_wait
from server.storage.event_stream import EventStream
from server.storage.migrations import migrate
from server.storage.orders_pg import OrderStore
from server.storage.postgres import StockStore
from server.storage.reconciliation_pg import ReconciliationReader
from server.storage.redis_gate import AdmissionGate
from server.supervisor import Supervisor

log = logging.getLogger(__name__)

# How long a stopping process gives its calls in flight.
SHUTDOWN_GRACE_S = 5.0
# The delay a reader past its share of reads in PostgreSQL is given (before jitter).
DATABASE_READ_RETRY_S = 0.25
# The delay a caller past its share of open streams is given (before jitter).
STREAM_RETRY_S = 1.0

_INVENTORY = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]
INVENTORY_SERVICE = _INVENTORY.full_name
_ORDERS = orders_pb2.DESCRIPTOR.services_by_name["OrderService"]
ORDER_SERVICE = _ORDERS.full_name
_RECONCILIATION = reconciliation_pb2.DESCRIPTOR.services_by_name["ReconciliationService"]
RECONCILIATION_SERVICE = _RECONCILIATION.full_name
# Health of the Redis admission gate: NOT_SERVING while PostgreSQL serves alone.
ADMISSION_GATE = "stockcore.admission_gate"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def run_migrations(settings: Settings) -> None:
    """Apply pending migrations to the configured database."""
    assert settings.pg_dsn is not None
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        applied = await migrate(conn, settings.shard_count)
        if applied:
            log.info("migrations applied", extra={"applied": ",".join(applied)})
    finally:
        await conn.close()


@dataclass
class App:
    """A running server and what it owns."""

    server: grpc.aio.Server
    port: int
    core: InventoryCore
    store: StockStore
    gate: AdmissionGate | None
    health: HealthService
    orders: OrderCore
    relay: Relay
    shedder: LoadShedder | None = None
    event_stream: EventStream | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _relay_task: asyncio.Task[None] | None = None

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Say NOT_SERVING, refuse new calls (UNAVAILABLE, nothing done) and end the
        watch streams, let the calls in flight finish, then stop the server and close
        storage."""
        await self.health.enter_graceful_shutdown()
        if self.shedder is not None:
            self.shedder.drain()
            if not await self.shedder.wait_idle(grace):
                log.warning("calls were still in flight or arriving when shutdown went on")
        await self.server.stop(grace)
        await cancel_and_wait(self._tasks, "the health reporter")
        await self._stop_relay()
        await self.orders.stop()
        await self.core.stop()
        if self.event_stream is not None:
            await self.event_stream.close()
        if self.gate is not None:
            await self.gate.close()
        await self.store.close()

    async def _stop_relay(self) -> None:
        task = self._relay_task
        if task is None:
            return
        self.relay.stop()
        # A cancellation is only the fallback (see server/orders/relay.py).
        for _ in range(10):
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return
            task.cancel()
        log.error("the order event relay did not stop")


def _pricing(settings: Settings) -> Pricing:
    """The price policy the settings name; SettingsError for a catalogue it cannot read."""
    try:
        return Pricing(settings.price_catalogue_file, settings.price_sources)
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"STOCKCORE_PRICE_CATALOGUE: {settings.price_catalogue_file}: {exc}"
        ) from exc


async def _set_health(app: App) -> None:
    """The health statuses as they are now: the services need PostgreSQL; the gate, Redis.
    Only a change is published: each publication wakes every Watch stream."""
    try:
        await app.store.ping()
        service = _SERVING
    except Unavailable:
        service = _NOT_SERVING
    await app.health.publish(INVENTORY_SERVICE, service)
    await app.health.publish(ORDER_SERVICE, service)
    await app.health.publish(RECONCILIATION_SERVICE, service)
    await app.health.publish("", service)
    await app.health.publish(ADMISSION_GATE, _SERVING if app.core.mirror.usable else _NOT_SERVING)


async def _report_health(app: App, interval: float) -> None:
    """Keep the health statuses true."""
    while True:
        await asyncio.sleep(interval)
        await _set_health(app)


async def create_server(settings: Settings, *, reuse_port: bool = False) -> App:
    """Build and start the server on settings.grpc_host:grpc_port (0 picks a free port):
    TLS unless plaintext was asked for, every call admitted by its scope."""
    assert settings.pg_dsn is not None, "pg_dsn must be set"
    problem = settings.security_problem()
    if problem is not None:
        raise SettingsError(problem)
    credentials = tls.server_credentials(settings)
    gatekeeper = Gatekeeper(
        None if settings.auth_disabled else verifier_from_settings(settings),
        client_certificates=bool(settings.tls_client_ca_file),
    )
    pricing = _pricing(settings)
    store = await StockStore.connect(
        settings.pg_dsn,
        shard_count=settings.shard_count,
        pool_size=settings.pg_pool_size,
        read_pool_size=settings.pg_read_pool_size,
        timeout=settings.db_timeout_s,
    )
    gate = AdmissionGate.from_url(settings.redis_url) if settings.redis_url else None
    mirror = Mirror(gate, store, settings)
    queues = Queues.create(settings.overload_target_s, settings.overload_interval_s)
    # Reads in PostgreSQL at once per caller; a reader refused comes back soon (its own
    # reads take milliseconds to seconds), jittered. Rows read a second per caller, held
    # only while another caller reads or writes are being served.
    rows = settings.database_read_rows_per_caller
    readers = Shares(
        "database_reads",
        settings.database_reads_per_caller,
        retry_after=DATABASE_READ_RETRY_S,
        rate=CallerRates("database_rows", rows, burst=max(1, round(rows))),
        busy=lambda now: queues.writes.served_since(now - CONTENDED_WINDOW_S),
    )
    core = InventoryCore(settings, store, mirror, queues, readers)
    order_store = OrderStore(store)
    feed = EventFeed(
        order_store,
        settings.pg_dsn,
        orders_convert.stored_event,
        safety_interval=settings.watch_poll_interval_s,
    )
    orders = OrderCore(settings, mirror, order_store, feed, queues, readers)
    await core.start()
    orders.start()
    event_stream = (
        EventStream.from_url(
            settings.redis_url, settings.event_stream_maxlen, settings.event_stream_max_age_s
        )
        if settings.redis_url
        else None
    )
    relay = Relay(settings, event_stream, orders_convert.encoded_event)

    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
    )
    shedder = LoadShedder(
        settings.max_in_flight,
        settings.max_watch_streams,
        queues=queues,
        refusal_budget=settings.overload_refusal_budget,
    )
    # Open streams per caller; a place frees only when a stream ends, so a caller refused
    # comes back in about a second.
    streams = Shares("streams", settings.streams_per_caller, retry_after=STREAM_RETRY_S)
    server.add_generic_rpc_handlers(
        [
            service_handler(
                InventoryServicer(core, settings), _INVENTORY, shedder, gatekeeper, streams
            ),
            service_handler(
                OrderServicer(orders, settings, pricing), _ORDERS, shedder, gatekeeper, streams
            ),
            service_handler(
                ReconciliationServicer(ReconciliationReader(store)),
                _RECONCILIATION,
                shedder,
                gatekeeper,
                streams,
            ),
        ]
    )
    health_servicer = HealthService(settings.health_watches_per_peer, settings.max_health_watches)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            [
                INVENTORY_SERVICE,
                ORDER_SERVICE,
                RECONCILIATION_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    await server.start()
    app = App(
        server, port, core, store, gate, health_servicer, orders, relay, shedder, event_stream
    )
    # Every status is set before the server is handed over, so a health check never finds
    # a service unknown (NOT_FOUND) on a server that is up.
    await _set_health(app)
    app._tasks.append(asyncio.create_task(_report_health(app, 0.5), name="health"))
    app._relay_task = asyncio.create_task(relay.run(), name="order-relay")
    log.info(
        "serving",
        extra={
            "address": f"{settings.grpc_host}:{port}",
            "redis_gate": core.mirror.usable,
            "tls": "off"
            if credentials is None
            else "mutual"
            if settings.tls_client_ca_file
            else "on",
            "auth": "off" if settings.auth_disabled else "tokens",
        },
    )
    if credentials is None or settings.auth_disabled:
        log.warning(
            "serving without %s, as configured",
            " or ".join(
                what
                for what, off in (
                    ("TLS", credentials is None),
                    ("token checks", settings.auth_disabled),
                )
                if off
            ),
        )
    return app


async def serve_one(settings: Settings, worker: int = 0) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port + worker, addr=settings.metrics_host, registry=metrics.REGISTRY
        )
    app = await create_server(settings, reuse_port=settings.workers > 1)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await app.stop()


def _worker_main(settings: Settings, worker: int) -> None:
    import uvloop

    logs.configure(settings.log_level, settings.log_json, worker)
    uvloop.run(serve_one(settings, worker))


def serve(settings: Settings) -> None:
    """Migrate, then serve in settings.workers processes sharing the port."""
    import functools

    import uvloop

    uvloop.run(run_migrations(settings))
    if settings.workers == 1:
        uvloop.run(serve_one(settings))
        return
    supervisor = Supervisor(
        functools.partial(_worker_main, settings), settings.workers, kill_after=SHUTDOWN_GRACE_S * 3
    )
    signal.signal(signal.SIGINT, supervisor.stop)
    signal.signal(signal.SIGTERM, supervisor.stop)
    supervisor.run()
