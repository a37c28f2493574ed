"""Shared fixtures: real PostgreSQL and Redis, started once per test process by the
project's own scripts (devstack.servers), or existing servers named by
STOCKCORE_PG_DSN and STOCKCORE_REDIS_URL. Tests reset the `stockcore` schema and
the Redis keys under the gate's prefix, so point those variables at scratch servers."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from devstack.credentials import DevCredentials
from devstack.servers import LocalPostgres, LocalRedis
from runtime.processes import free_port
from server.config import Settings
from server.storage.migrations import migrate
from tests import callers
from tests.servers import SHARDS, Servers, server_settings
from tests.support import connected

ROOT = Path(__file__).resolve().parent.parent

# A suite started as a background job of a non-interactive shell (`make test &`, nohup, a
# CI step that backgrounds it) inherits SIGINT ignored and passes that on to every command
# it starts, so the doc runner's Ctrl-C (tests/doc_session.py) would end none of them.
# A handler, unlike SIG_IGN, is reset to the default in a child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """PostgreSQL and Redis for the whole session."""
    pg_dsn = os.environ.get("STOCKCORE_PG_DSN")
    redis_url = os.environ.get("STOCKCORE_REDIS_URL")
    base = ROOT / ".data" / f"test-{os.getpid()}"
    # Free ports, not ones derived from the pid: another suite on the machine may hold those.
    pg = None if pg_dsn else LocalPostgres(base / "pg", free_port())
    rd = None if redis_url else LocalRedis(base / "redis", free_port())
    try:
        if pg is not None:
            pg.start()
        if rd is not None:
            rd.start()
        yield Servers(pg_dsn or pg.dsn, redis_url or rd.url, pg, rd)  # type: ignore[union-attr]
    finally:
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()
        if pg is not None or rd is not None:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def migrated(servers: Servers) -> str:
    """The database DSN, with a fresh stockcore schema."""
    async with connected(servers.pg_dsn) as conn:
        await conn.execute("DROP SCHEMA IF EXISTS stockcore CASCADE")
        await migrate(conn, SHARDS)
    return servers.pg_dsn


async def reset_state(pg_dsn: str, redis_url: str) -> None:
    """Empty every table and the gate's Redis keys."""
    async with connected(pg_dsn) as conn:
        await conn.execute(
            "TRUNCATE stockcore.stock, stockcore.reservations, stockcore.reservation_changes,"
            " stockcore.movements,"
            " stockcore.adjustments, stockcore.orders, stockcore.order_history,"
            " stockcore.payments, stockcore.order_events, stockcore.fulfilments,"
            " stockcore.fulfilment_history, stockcore.fulfilment_dead_letters,"
            " stockcore.fulfilment_workers, stockcore.fulfilment_breaker_transitions,"
            " stockcore.payment_events, stockcore.payments_to_return, stockcore.ledger_transfers,"
            " stockcore.settlement_transactions, stockcore.reconciliation_statements,"
            " stockcore.reconciliation_exceptions, stockcore.refunds,"
            " stockcore.daily_closes, stockcore.daily_close_items"
        )
        await conn.execute("UPDATE stockcore.outbox_state SET published_upto = 0")
        await conn.execute("UPDATE stockcore.settlement_cursor SET cursor = 0")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
async def clean(servers: Servers, migrated: str) -> AsyncIterator[Servers]:
    """Servers with empty tables and an empty Redis."""
    await reset_state(migrated, servers.redis_url)
    yield servers


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> DevCredentials:
    """A CA, server and client certificates and a token signing key for this session."""
    return DevCredentials(tmp_path_factory.mktemp("credentials")).ensure()


@pytest.fixture(scope="session")
def service_token(credentials: DevCredentials) -> str:
    """A token with every service scope, for the subject `tests`."""
    return callers.token(credentials)


@pytest.fixture(scope="session", autouse=True)
def caller_environment(credentials: DevCredentials, service_token: str) -> Iterator[None]:
    """What a deployed caller's environment names (clients/credentials.py), for callers
    that read it, such as the fulfilment worker: the session's CA and service token."""
    names = {"STOCKCORE_CA_FILE": str(credentials.ca_cert), "STOCKCORE_TOKEN": service_token}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def settings(clean: Servers, credentials: DevCredentials) -> Settings:
    """The suite's settings for an in-process server (tests.servers.server_settings) on the
    clean servers."""
    return server_settings(
        clean.pg_dsn,
        clean.redis_url,
        credentials,
        # Tests of behaviour send hundreds of calls at once, all with one token, and hold
        # locks for seconds; the ceiling on calls in flight and admission by queue delay
        # are tested on their own (tests/e2e/test_overload.py), and so are the shares of
        # one caller (tests/e2e/test_caller_limits.py).
        max_in_flight=10_000,
        overload_target_s=10.0,
        streams_per_caller=10_000,
        database_reads_per_caller=10_000,
    )


ChannelOpener = Callable[..., grpc.aio.Channel]


@pytest.fixture
def open_channel(credentials: DevCredentials, service_token: str) -> ChannelOpener:
    """Opens TLS channels (to a port on loopback, or a host:port) whose calls carry the
    service token; keyword arguments go to tests.callers.secure_channel."""

    def open_(where: int | str, **options: object) -> grpc.aio.Channel:
        target = where if isinstance(where, str) else f"127.0.0.1:{where}"
        return callers.secure_channel(target, credentials, service_token, **options)  # type: ignore[arg-type]

    return open_
