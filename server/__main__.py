"""`python -m server`: serve, migrate, `dev` (local PostgreSQL and Redis, then serve, with
the HTTP/JSON gateway beside), `gateway` (the gateway alone) or `gateway-config` (print
Envoy's configuration, for running Envoy elsewhere)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from server import app, config, demo, logs
from server.devservers import local_servers
from server.gateway.bootstrap import bootstrap
from server.gateway.envoy import Gateway
from server.storage.postgres import StockStore

log = logging.getLogger("stockcore")


async def _load_demo(settings: config.Settings) -> None:
    assert settings.pg_dsn is not None
    store = await StockStore.connect(
        settings.pg_dsn,
        shard_count=settings.shard_count,
        pool_size=2,
        timeout=settings.db_timeout_s,
    )
    try:
        loaded = await demo.load(store)
        log.info("demo catalogue ready", extra={"newly_loaded": loaded})
    finally:
        await store.close()


def dev(settings: config.Settings) -> None:
    """Start PostgreSQL and Redis unless the environment names servers, then serve."""
    import uvloop

    root = Path(settings.data_dir).resolve()
    with local_servers(
        root,
        settings.dev_pg_port,
        settings.dev_redis_port,
        want_pg=settings.pg_dsn is None,
        want_redis=settings.redis_url is None,
    ) as (pg, redis):
        settings = settings.with_overrides(
            pg_dsn=settings.pg_dsn or (pg.dsn if pg else None),
            redis_url=settings.redis_url or (redis.url if redis else None),
        )
        log.info(
            "dev servers ready",
            extra={"postgres": settings.pg_dsn, "redis": settings.redis_url, "data": str(root)},
        )
        uvloop.run(app.run_migrations(settings))
        if settings.demo_catalogue:
            uvloop.run(_load_demo(settings))
        with _gateway(settings, root) as gateway:
            print(
                f"stockcore serving on {settings.grpc_host}:{settings.grpc_port}"
                f" (metrics http://{settings.grpc_host}:{settings.metrics_port}/metrics)"
                + (f"; HTTP/JSON and the checkout page on {gateway.url}/" if gateway else "")
                + "; Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
            app.serve(settings)


@contextlib.contextmanager
def _gateway(settings: config.Settings, root: Path) -> Iterator[Gateway | None]:
    """Envoy in front of the server while it serves (none when gateway_port is 0). It
    dies with this process, and is stopped when serving ends."""
    if not settings.gateway_port:
        yield None
        return
    with Gateway(settings, root / "gateway") as gateway:
        log.info("gateway ready", extra={"url": gateway.url, "admin": gateway.admin_url()})
        yield gateway


def gateway(settings: config.Settings) -> None:
    """Run only the gateway, in front of the server at settings.grpc_host:grpc_port,
    until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _gateway(settings, Path(settings.data_dir).resolve()) as running:
        if running is None:
            raise SystemExit("STOCKCORE_GATEWAY_PORT is 0: no gateway to run")
        print(
            f"gateway on {running.url}/ in front of {settings.grpc_host}:{settings.grpc_port}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if running.proc is not None and running.proc.poll() is not None:
                raise SystemExit(f"Envoy exited with {running.proc.returncode}; see {running.log}")


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="stockcore-server", description=__doc__)
    parser.add_argument(
        "command",
        choices=["serve", "dev", "migrate", "gateway", "gateway-config"],
        nargs="?",
        default="serve",
    )
    args = parser.parse_args(argv)
    try:
        settings = config.from_env()
    except config.SettingsError as exc:
        parser.exit(2, f"invalid settings: {exc}\n")
    logs.configure(settings.log_level, settings.log_json)
    if args.command == "dev":
        dev(settings)
        return
    if args.command == "gateway":
        gateway(settings)
        return
    if args.command == "gateway-config":
        print(json.dumps(bootstrap(settings), indent=1))
        return
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set (or use `dev` to start local servers)\n")
    if args.command == "migrate":
        import uvloop

        uvloop.run(app.run_migrations(settings))
        return
    app.serve(settings)


if __name__ == "__main__":
    main()
