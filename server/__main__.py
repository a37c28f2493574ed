"""`python -m server`: serve, migrate, or `dev` (local PostgreSQL and Redis, then serve)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server import app, config, demo, logs
from server.devservers import local_servers
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
        print(
            f"stockcore serving on {settings.grpc_host}:{settings.grpc_port}"
            f" (metrics http://{settings.grpc_host}:{settings.metrics_port}/metrics); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        app.serve(settings)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="stockcore-server", description=__doc__)
    parser.add_argument("command", choices=["serve", "dev", "migrate"], nargs="?", default="serve")
    args = parser.parse_args(argv)
    try:
        settings = config.from_env()
    except config.SettingsError as exc:
        parser.exit(2, f"invalid settings: {exc}\n")
    logs.configure(settings.log_level, settings.log_json)
    if args.command == "dev":
        dev(settings)
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
