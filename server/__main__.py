"""`python -m server`: serve, migrate, or `dev` (local PostgreSQL and Redis, then serve)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server import app, config, demo, logs
from server.devcredentials import DevCredentials
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


def with_dev_credentials(settings: config.Settings) -> config.Settings:
    """Settings that serve TLS with the development certificate and check tokens against
    the development key (made under the data folder if missing), where the environment
    named no files and did not turn TLS or token checks off; reflection on unless set."""
    credentials = DevCredentials(Path(settings.data_dir).resolve())
    changes: dict[str, object] = {}
    if not settings.plaintext and not settings.tls_cert_file:
        changes["tls_cert_file"] = str(credentials.server_cert)
        changes["tls_key_file"] = str(credentials.server_key)
    if not settings.auth_disabled and not settings.auth_jwks_file:
        changes["auth_jwks_file"] = str(credentials.jwks)
    if changes:
        credentials.ensure()
    if settings.reflection is None:
        changes["reflection"] = True
    return settings.with_overrides(**changes)


def dev(settings: config.Settings) -> None:
    """Start PostgreSQL and Redis unless the environment names servers, then serve."""
    import uvloop

    root = Path(settings.data_dir).resolve()
    settings = with_dev_credentials(settings)
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
            f" ({'plaintext' if settings.plaintext else 'TLS, CA ' + _dev_ca(settings)};"
            f" metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics); Ctrl-C stops\n"
            "a development token for stockctl:"
            " export STOCKCORE_TOKEN=$(.venv/bin/stockctl token issue --sub $USER --scopes all)",
            file=sys.stderr,
            flush=True,
        )
        app.serve(settings)


def _dev_ca(settings: config.Settings) -> str:
    credentials = DevCredentials(Path(settings.data_dir).resolve())
    if settings.tls_cert_file == str(credentials.server_cert):
        return str(credentials.ca_cert)
    return "of the configured certificate"


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
    problem = settings.security_problem()
    if problem is not None:
        parser.exit(2, f"invalid settings: {problem}\n")
    app.serve(settings)


if __name__ == "__main__":
    main()
