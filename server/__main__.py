"""`python -m server`: serve, migrate, `dev` (local PostgreSQL and Redis, the simulators and a fulfilment worker, then
serve, with the HTTP/JSON gateway beside), `gateway` (the gateway alone) or
`gateway-config` (print Envoy's configuration, for running Envoy elsewhere)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from runtime import logs
from server import app, config, demo
from server.devcredentials import DevCredentials
from server.devservers import local_servers, spawn, stop_child
from server.gateway.bootstrap import bootstrap
from server.gateway.envoy import Gateway
from server.gateway.page_token import dev_page_token
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
    named no files and did not turn TLS or token checks off, the gateway trusting the
    development CA; reflection on unless set."""
    credentials = DevCredentials(Path(settings.data_dir).resolve())
    changes: dict[str, object] = {}
    if not settings.plaintext and not settings.tls_cert_file:
        changes["tls_cert_file"] = str(credentials.server_cert)
        changes["tls_key_file"] = str(credentials.server_key)
    if not settings.auth_disabled and not settings.auth_jwks_file:
        changes["auth_jwks_file"] = str(credentials.jwks)
    if changes.get("tls_cert_file") and not settings.gateway_upstream_ca_file:
        changes["gateway_upstream_ca_file"] = str(credentials.ca_cert)
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
    from fulfilment import config as fulfilment_config

    carriers = fulfilment_config.from_env()
    simulate = [sys.executable, "-m", "simulators"]
    children = [
        ("warehouse", [*simulate, "warehouse", "--port", str(settings.dev_warehouse_port)]),
        (
            carriers.primary_carrier,
            [*simulate, "carrier", "--carrier", carriers.primary_carrier,
             "--port", str(settings.dev_primary_carrier_port)],
        ),
    ]  # fmt: skip
    if carriers.fallback_carrier:
        children.append(
            (
                carriers.fallback_carrier,
                [*simulate, "carrier", "--carrier", carriers.fallback_carrier,
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
        fulfil = [(f"fulfil-{i}", [sys.executable, "-m", "fulfilment"]) for i in range(workers)]
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
        redis_maxmemory_mb=settings.dev_redis_maxmemory_mb,
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
        from fulfilment import config as fulfilment_config

        carriers = fulfilment_config.from_env()
        with _gateway(settings, root, page_token=dev_page_token(settings)) as gateway:
            print(
                f"stockcore serving on {settings.grpc_host}:{settings.grpc_port}"
                f" ({'plaintext' if settings.plaintext else 'TLS, CA ' + _dev_ca(settings)};"
                f" metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics)"
                + (f"; HTTP/JSON and the checkout page on {gateway.url}/" if gateway else "")
                + f"; a warehouse on :{settings.dev_warehouse_port}, carriers"
                f" {carriers.primary_carrier} on :{settings.dev_primary_carrier_port} and"
                f" {carriers.fallback_carrier or '-'} on :{settings.dev_fallback_carrier_port},"
                f" a fulfilment worker (logs in {root}/logs); Ctrl-C stops\n"
                "a development token for stockctl:"
                " export STOCKCORE_TOKEN=$(.venv/bin/stockctl token issue --sub $USER --scopes all)",
                file=sys.stderr,
                flush=True,
            )
            with partners_and_worker(settings, root / "logs"):
                app.serve(settings)


@contextlib.contextmanager
def _gateway(
    settings: config.Settings, root: Path, *, page_token: str | None = None
) -> Iterator[Gateway | None]:
    """Envoy in front of the server while it serves (none when gateway_port is 0), the
    checkout page calling with `page_token`. It dies with this process, and is stopped
    when serving ends."""
    if not settings.gateway_port:
        yield None
        return
    with Gateway(settings, root / "gateway", page_token=page_token) as gateway:
        log.info("gateway ready", extra={"url": gateway.url, "admin": gateway.admin_url()})
        yield gateway


def gateway(settings: config.Settings) -> None:
    """Run only the gateway, in front of the server at settings.grpc_host:grpc_port,
    until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    root = Path(settings.data_dir).resolve()
    dev_ca = DevCredentials(root).ca_cert
    if not settings.plaintext and not settings.gateway_upstream_ca_file and dev_ca.is_file():
        # As stockctl does: a server started by `dev` on this machine uses the dev CA.
        settings = settings.with_overrides(gateway_upstream_ca_file=str(dev_ca))
    with _gateway(settings, root) as running:
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
    problem = settings.security_problem()
    if problem is not None:
        parser.exit(2, f"invalid settings: {problem}\n")
    app.serve(settings)


if __name__ == "__main__":
    main()
