"""The stockcore server as the tests start it, on the suite's PostgreSQL and Redis and with
the session's credentials: in this process (`serving`, on `server_settings`) or as a child
process (`server_process`), each stopped when its block ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from devstack.credentials import DevCredentials
from devstack.servers import LocalPostgres, LocalRedis, LocalStockcore
from server.app import App, create_server
from server.config import Settings

SHARDS = 8

# For a child server whose test kills a dependency or the server itself: a pending hold is
# given up after 3 s and a statement after 2, holds are swept and Redis is probed five
# times a second, so that recovery fits in the test's time.
QUICK_RECOVERY = {
    "STOCKCORE_PENDING_GRACE": "3",
    "STOCKCORE_DB_TIMEOUT": "2",
    "STOCKCORE_EXPIRY_INTERVAL": "0.2",
    "STOCKCORE_REDIS_PROBE_INTERVAL": "0.2",
}


@dataclass
class Servers:
    """Where the test servers are, and handles to kill them when we own them."""

    pg_dsn: str
    redis_url: str
    pg: LocalPostgres | None
    redis: LocalRedis | None


def server_settings(
    pg_dsn: str, redis_url: str, credentials: DevCredentials, **changes: Any
) -> Settings:
    """Settings for an in-process server on a free loopback port, serving TLS with the
    session's certificate, checking tokens against its signing key and sweeping holds and
    probing Redis ten times a second; `changes` on top, validated."""
    return Settings(
        pg_dsn=pg_dsn,
        redis_url=redis_url,
        grpc_port=0,
        metrics_port=0,
        shard_count=SHARDS,
        log_json=False,
        expiry_interval_s=0.1,
        redis_probe_interval_s=0.1,
        tls_cert_file=str(credentials.server_cert),
        tls_key_file=str(credentials.server_key),
        auth_jwks_file=str(credentials.jwks),
    ).with_overrides(**changes)


@asynccontextmanager
async def serving(settings: Settings, *, grace: float = 0.5) -> AsyncIterator[App]:
    """A server started in this process; stopped when the block ends, the calls in flight
    given `grace` seconds."""
    app = await create_server(settings)
    try:
        yield app
    finally:
        await app.stop(grace=grace)


@asynccontextmanager
async def server_process(
    servers: Servers, credentials: DevCredentials, **env: str
) -> AsyncIterator[LocalStockcore]:
    """`python -m server` as a child process on `servers`, serving TLS and checking tokens
    with `credentials`, `env` setting its STOCKCORE_* variables; healthy when the block
    starts, stopped when it ends unless the test stopped it."""
    server = LocalStockcore(
        servers.pg_dsn, servers.redis_url, SHARDS, credentials=credentials, **env
    )
    try:
        await server.start()
        yield server
    finally:
        server.stop()
