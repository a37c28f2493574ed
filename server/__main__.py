"""`python -m server`: serve, migrate, fulfil (the fulfilment worker), simulate (a simulated
partner), or `dev` (local PostgreSQL and Redis, the simulators and a fulfilment worker,
then serve)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from server import app, config, demo, logs
from server.devcredentials import DevCredentials
from server.devservers import local_servers, spawn, stop_child
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


@contextlib.contextmanager
def partners_and_worker(
    settings: config.Settings, logs_dir: Path, *, workers: int = 1
) -> Iterator[None]:
    """The simulated warehouse and carriers on the dev_*_port settings, and `workers`
    fulfilment workers with `settings`, as child processes that die with this one (their
    logs under `logs_dir`)."""
    me = [sys.executable, "-m", "server"]
    children = [
        ("warehouse", [*me, "simulate", "warehouse", "--port", str(settings.dev_warehouse_port)]),
        (
            settings.primary_carrier,
            [*me, "simulate", "carrier", "--carrier", settings.primary_carrier,
             "--port", str(settings.dev_primary_carrier_port)],
        ),
    ]  # fmt: skip
    if settings.fallback_carrier:
        children.append(
            (
                settings.fallback_carrier,
                [*me, "simulate", "carrier", "--carrier", settings.fallback_carrier,
                 "--port", str(settings.dev_fallback_carrier_port)],
            )
        )  # fmt: skip
    env = {
        **os.environ,
        **config.to_env(settings),
        "STOCKCORE_WAREHOUSE_URL": f"http://127.0.0.1:{settings.dev_warehouse_port}",
        "STOCKCORE_PRIMARY_CARRIER_URL": f"http://127.0.0.1:{settings.dev_primary_carrier_port}",
        "STOCKCORE_FALLBACK_CARRIER_URL": f"http://127.0.0.1:{settings.dev_fallback_carrier_port}",
        **worker_credentials_env(settings),
    }
    logs_dir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        fulfil = [(f"fulfil-{i}", [*me, "fulfil"]) for i in range(workers)]
        for name, argv in [*children, *fulfil]:
            with open(logs_dir / f"{name}.log", "ab") as out:
                started.append(
                    spawn(
                        argv,
                        death_signal=signal.SIGTERM,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        log.info(
            "simulated partners and a fulfilment worker started",
            extra={"logs": str(logs_dir), "warehouse": env["STOCKCORE_WAREHOUSE_URL"]},
        )
        yield
    finally:
        for proc in reversed(started):
            stop_child(proc)


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
            f" metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics); a warehouse"
            f" on :{settings.dev_warehouse_port}, carriers {settings.primary_carrier} on"
            f" :{settings.dev_primary_carrier_port} and {settings.fallback_carrier or '-'} on"
            f" :{settings.dev_fallback_carrier_port}, a fulfilment worker (logs in {root}/logs);"
            " Ctrl-C stops\n"
            "a development token for stockctl:"
            " export STOCKCORE_TOKEN=$(.venv/bin/stockctl token issue --sub $USER --scopes all)",
            file=sys.stderr,
            flush=True,
        )
        with partners_and_worker(settings, root / "logs"):
            app.serve(settings)


def worker_credentials_env(settings: config.Settings) -> dict[str, str]:
    """What a fulfilment worker started by `dev` presents to the server (read by
    Credentials.from_env): the development CA, and a token signed with the development key
    for the scopes it uses, when the server uses the development credentials."""
    from clients.tokens import issue_token, load_signing_key

    credentials = DevCredentials(Path(settings.data_dir).resolve())
    env: dict[str, str] = {}
    if settings.tls_cert_file == str(credentials.server_cert):
        env["STOCKCORE_CA_FILE"] = str(credentials.ca_cert)
    if not settings.auth_disabled and settings.auth_jwks_file == str(credentials.jwks):
        env["STOCKCORE_TOKEN"] = issue_token(
            load_signing_key(credentials.signing_key),
            "fulfilment-worker",
            ("orders:read", "orders:write", "orders:fulfil"),
            ttl_s=7 * 86400.0,
        )
    return env


def _dev_ca(settings: config.Settings) -> str:
    credentials = DevCredentials(Path(settings.data_dir).resolve())
    if settings.tls_cert_file == str(credentials.server_cert):
        return str(credentials.ca_cert)
    return "of the configured certificate"


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        from server.simulators import run as simulators

        logging.basicConfig(level=logging.INFO)
        simulators.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="stockcore-server", description=__doc__)
    parser.add_argument(
        "command", choices=["serve", "dev", "migrate", "fulfil"], nargs="?", default="serve"
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
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set (or use `dev` to start local servers)\n")
    if args.command == "migrate":
        import uvloop

        uvloop.run(app.run_migrations(settings))
        return
    if args.command == "fulfil":
        import uvloop

        from server.fulfilment.worker import run_worker

        if settings.redis_url is None:
            parser.exit(2, "STOCKCORE_REDIS_URL is not set: the worker reads the event stream\n")
        uvloop.run(run_worker(settings))
        return
    problem = settings.security_problem()
    if problem is not None:
        parser.exit(2, f"invalid settings: {problem}\n")
    app.serve(settings)


if __name__ == "__main__":
    main()
