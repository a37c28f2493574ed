"""The development stack (`make run`): project-owned PostgreSQL and Redis unless the
environment names servers, the migrations and the demo catalogue, then the gRPC server in
this process with Envoy, the simulated partners, a fulfilment worker, the simulated payment
provider, the payment webhook receiver, the reconciler and the refund sender beside it as
child processes that die with it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from clients.credentials import Credentials
from devstack import demo, page_session
from devstack.config import DevSettings
from devstack.credentials import DevCredentials
from devstack.page_session import PageSessions, dev_page_sessions
from devstack.payments import SimulatedPayments
from devstack.prometheus import Job, LocalPrometheus
from devstack.prometheus import binary as prometheus_binary
from devstack.servers import local_servers
from devstack.stockctl import local_target, write_stockctl_config
from fulfilment import config as fulfilment_config
from fulfilment.config import FulfilmentSettings
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from payments import config as payments_config
from payments.config import PaymentsSettings
from payments.endpoint import WEBHOOK_PATH
from payments.reconciler import config as reconciler_config
from payments.reconciler.config import ReconcilerSettings
from refunds import config as refunds_config
from refunds.config import RefundSettings
from runtime.processes import spawn, stop_child
from server import app
from server.config import Settings
from server.storage.postgres import StockStore

log = logging.getLogger("stockcore")


@dataclass(frozen=True)
class StackSettings:
    """The development stack's own settings and those of the programs it starts, each
    read by its program's own settings module."""

    dev: DevSettings
    server: Settings
    gateway: GatewaySettings
    fulfilment: FulfilmentSettings
    payments: PaymentsSettings
    reconciler: ReconcilerSettings = field(default_factory=ReconcilerSettings)
    refunds: RefundSettings = field(default_factory=RefundSettings)
    stockctl_config: Path | None = None
    """stockctl's config file, written for this stack (None: none)."""

    @property
    def root(self) -> Path:
        """The data folder, absolute."""
        return Path(self.dev.data_dir).resolve()


async def _load_demo(settings: Settings) -> None:
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


def with_dev_credentials(settings: Settings, data_dir: Path | str) -> Settings:
    """Server settings that serve TLS with the development certificate and check tokens
    against the development key (made under `data_dir` if missing), where the environment
    named no files and did not turn TLS or token checks off; reflection on unless set."""
    credentials = DevCredentials(Path(data_dir).resolve())
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


def gateway_for(
    gateway: GatewaySettings, server: Settings, data_dir: Path | str
) -> GatewaySettings:
    """The gateway in front of `server`: its address and transport, trusting the
    development CA when the server serves the development certificate and no CA is named."""
    credentials = DevCredentials(Path(data_dir).resolve())
    changes: dict[str, object] = {
        "grpc_host": server.grpc_host,
        "grpc_port": server.grpc_port,
        "plaintext": server.plaintext,
        "data_dir": str(data_dir),
    }
    if (
        server.tls_cert_file == str(credentials.server_cert)
        and not gateway.gateway_upstream_ca_file
    ):
        changes["gateway_upstream_ca_file"] = str(credentials.ca_cert)
    return gateway.with_overrides(**changes)


@contextlib.contextmanager
def partners_and_worker(
    dev: DevSettings,
    fulfilment: FulfilmentSettings,
    logs_dir: Path,
    *,
    workers: int = 1,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """The simulated warehouse and carriers (`fulfilment`'s carriers) on the dev_*_port
    settings, and `workers` fulfilment workers with `fulfilment` pointed at them, as child
    processes that die with this one (their logs under `logs_dir`). `worker_env` adds what
    the workers' client presents to the server (clients/credentials.py)."""
    simulate = [sys.executable, "-m", "simulators"]
    children = [
        ("warehouse", [*simulate, "warehouse", "--port", str(dev.dev_warehouse_port)]),
        (
            fulfilment.primary_carrier,
            [*simulate, "carrier", "--carrier", fulfilment.primary_carrier,
             "--port", str(dev.dev_primary_carrier_port)],
        ),
    ]  # fmt: skip
    if fulfilment.fallback_carrier:
        children.append(
            (
                fulfilment.fallback_carrier,
                [*simulate, "carrier", "--carrier", fulfilment.fallback_carrier,
                 "--port", str(dev.dev_fallback_carrier_port)],
            )
        )  # fmt: skip
    fulfilment = fulfilment.with_overrides(
        warehouse_url=f"http://127.0.0.1:{dev.dev_warehouse_port}",
        primary_carrier_url=f"http://127.0.0.1:{dev.dev_primary_carrier_port}",
        fallback_carrier_url=f"http://127.0.0.1:{dev.dev_fallback_carrier_port}",
    )
    env = program_env(worker_env, fulfilment_config.to_env(fulfilment))
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
            extra={"logs": str(logs_dir), "warehouse": fulfilment.warehouse_url},
        )
        yield
    finally:
        for proc in reversed(started):
            stop_child(proc)


def with_webhook_secret(settings: PaymentsSettings, data_dir: Path | str) -> PaymentsSettings:
    """The receiver's settings, checking deliveries with the development webhook secret
    (made under `data_dir` if missing) unless the environment named a secret file."""
    if settings.webhook_secret_file:
        return settings
    credentials = DevCredentials(Path(data_dir).resolve()).ensure()
    return settings.with_overrides(webhook_secret_file=str(credentials.webhook_secret))


PaymentProgram = tuple[str, list[str], dict[str, str] | None]
"""A program of the payment side: its name (that of its log), its argv, its environment
(None: this process's)."""


def _webhook_url(receiver: PaymentsSettings) -> str:
    host = "127.0.0.1" if receiver.webhook_host in ("", "0.0.0.0", "::") else receiver.webhook_host
    return f"http://{host}:{receiver.webhook_port}{WEBHOOK_PATH}"


def payment_programs(
    dev: DevSettings,
    receiver: PaymentsSettings,
    *,
    receiver_env: Mapping[str, str] | None = None,
    reconciler: ReconcilerSettings | None = None,
    sender: RefundSettings | None = None,
) -> list[PaymentProgram]:
    """What payments_and_receiver starts, in its order: the receiver, the provider, the
    refund sender (`sender`'s settings; None: the defaults, serving no metrics) and
    (unless `reconciler` is None) the reconciler."""
    url = _webhook_url(receiver)
    provider = [
        sys.executable, "-m", "simulators", "payments", "--port", str(dev.dev_payments_port),
        "--webhook-url", url, "--webhook-secret-file", receiver.webhook_secret_file,
    ]  # fmt: skip
    env = program_env(receiver_env, payments_config.to_env(receiver))
    # The refund sender pays back what stockcore owes through the same provider; it needs
    # the database alone (no token: it calls no server).
    sender = (sender or RefundSettings(refund_metrics_port=0)).with_overrides(
        pg_dsn=receiver.pg_dsn, provider_url=f"http://127.0.0.1:{dev.dev_payments_port}"
    )
    sender_env = program_env(None, refunds_config.to_env(sender))
    programs: list[PaymentProgram] = [
        ("payments-receiver", [sys.executable, "-m", "payments"], env),
        ("payment-provider", provider, None),
        ("refund-sender", [sys.executable, "-m", "refunds"], sender_env),
    ]
    if reconciler is not None:
        following = reconciler.with_overrides(
            provider_url=f"http://127.0.0.1:{dev.dev_payments_port}"
        )
        programs.append(
            (
                "payments-reconciler",
                [sys.executable, "-m", "payments.reconciler"],
                program_env(receiver_env, reconciler_config.to_env(following)),
            )
        )
    return programs


def start_payment_program(program: PaymentProgram, logs_dir: Path) -> subprocess.Popen[bytes]:
    """One program of payment_programs as a child that dies with this process, its output
    appended to its log under `logs_dir`."""
    name, argv, child_env = program
    logs_dir.mkdir(parents=True, exist_ok=True)
    with open(logs_dir / f"{name}.log", "ab") as out:
        return spawn(
            argv, death_signal=signal.SIGTERM, env=child_env, stdout=out, stderr=subprocess.STDOUT
        )


@contextlib.contextmanager
def payments_and_receiver(
    dev: DevSettings,
    receiver: PaymentsSettings,
    logs_dir: Path,
    *,
    receiver_env: Mapping[str, str] | None = None,
    reconciler: ReconcilerSettings | None = None,
    sender: RefundSettings | None = None,
) -> Iterator[dict[str, int]]:
    """The simulated payment provider on dev_payments_port, sending its webhooks, signed
    with the receiver's secret, to stockcore's webhook receiver (`receiver`), and the
    reconciler following its settlement feed (`reconciler`, None: not started), and the
    refund sender (python -m refunds, `sender`'s settings; None: the defaults without
    metrics) sending refunds to that provider, as child processes that die with this one
    (their logs under `logs_dir`); their pids are yielded by name
    ("payments-receiver", "payment-provider", "refund-sender", "payments-reconciler").
    `receiver_env` adds what the receiver's client presents to the server
    (clients/credentials.py); the reconciler presents the same, to confirm the payments
    whose webhook never came. The secret reaches the provider and the receiver by its file,
    never on a command line."""
    programs = payment_programs(
        dev, receiver, receiver_env=receiver_env, reconciler=reconciler, sender=sender
    )
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for program in programs:
            started[program[0]] = start_payment_program(program, logs_dir)
        log.info(
            "simulated payment provider, webhook receiver, reconciler and refund sender started",
            extra={
                "provider": f"http://127.0.0.1:{dev.dev_payments_port}",
                "webhooks": _webhook_url(receiver),
            },
        )
        yield {name: proc.pid for name, proc in started.items()}
    finally:
        for proc in reversed(started.values()):
            stop_child(proc)


def dev(stack: StackSettings) -> None:
    """Start PostgreSQL and Redis unless the environment names servers, then serve."""
    import uvloop

    root = stack.root
    server = with_dev_credentials(stack.server, root)
    dev_settings = stack.dev
    if dev_settings.demo_catalogue and not server.price_catalogue_file:
        # The checkout page's prices are the catalogue's: a browser cannot set its own.
        server = server.with_overrides(price_catalogue_file=str(DEMO_PRICES))
    with local_servers(
        root,
        dev_settings.dev_pg_port,
        dev_settings.dev_redis_port,
        want_pg=server.pg_dsn is None,
        want_redis=server.redis_url is None,
        redis_maxmemory_mb=dev_settings.dev_redis_maxmemory_mb,
    ) as (pg, redis):
        server = server.with_overrides(
            pg_dsn=server.pg_dsn or (pg.dsn if pg else None),
            redis_url=server.redis_url or (redis.url if redis else None),
        )
        log.info(
            "dev servers ready",
            extra={"postgres": server.pg_dsn, "redis": server.redis_url, "data": str(root)},
        )
        uvloop.run(app.run_migrations(server))
        if dev_settings.demo_catalogue:
            uvloop.run(_load_demo(server))
        gateway_settings = gateway_for(stack.gateway, server, root)
        sessions = dev_page_sessions(
            server, gateway_settings, root, dev_settings.dev_page_token_ttl_s
        )
        fulfilment = stack.fulfilment.with_overrides(
            pg_dsn=server.pg_dsn, redis_url=server.redis_url
        )
        receiver = with_webhook_secret(stack.payments.with_overrides(pg_dsn=server.pg_dsn), root)
        stockctl_config = stack.stockctl_config
        if stockctl_config is not None and not write_stockctl_config(stockctl_config, server, root):
            stockctl_config = None
        with (
            _page_sessions(
                sessions,
                server,
                gateway_settings,
                f"http://127.0.0.1:{dev_settings.dev_payments_port}",
            ) as gateway_settings,
            _gateway(gateway_settings, root) as gateway,
        ):
            print(
                f"stockcore serving on {server.grpc_host}:{server.grpc_port}"
                f" ({'plaintext' if server.plaintext else 'TLS, CA ' + _dev_ca(server, root)};"
                f" metrics http://{server.metrics_host}:{server.metrics_port}/metrics)"
                + (f"; HTTP/JSON and the checkout page on {gateway.url}/" if gateway else "")
                + f"; a warehouse on :{dev_settings.dev_warehouse_port}, carriers"
                f" {fulfilment.primary_carrier} on :{dev_settings.dev_primary_carrier_port} and"
                f" {fulfilment.fallback_carrier or '-'} on"
                f" :{dev_settings.dev_fallback_carrier_port},"
                f" a fulfilment worker, a payment provider on :{dev_settings.dev_payments_port}"
                f" sending its webhooks to the receiver on :{receiver.webhook_port}, its"
                " settlement feed followed by the reconciler"
                f" (logs in {root}/logs); Ctrl-C stops\n"
                + (
                    f"stockctl's settings for this stack: {stockctl_config}\n"
                    if stockctl_config is not None
                    else ""
                )
                + "a development token for stockctl: export STOCKCORE_TOKEN=$(.venv/bin/stockctl"
                ' token issue --sub "${USER:-dev}" --scopes all)',
                file=sys.stderr,
                flush=True,
            )
            worker_env = service_credentials_env(server, root, FULFILMENT_WORKER)
            receiver_env = service_credentials_env(server, root, PAYMENT_WEBHOOKS)
            with (
                renewing_service_token(worker_env, root, FULFILMENT_WORKER),
                renewing_service_token(receiver_env, root, PAYMENT_WEBHOOKS),
                partners_and_worker(dev_settings, fulfilment, root / "logs", worker_env=worker_env),
                payments_and_receiver(
                    dev_settings,
                    receiver,
                    root / "logs",
                    receiver_env=receiver_env,
                    reconciler=stack.reconciler.with_overrides(pg_dsn=server.pg_dsn),
                    sender=stack.refunds,
                ),
                _prometheus(
                    dev_settings,
                    scrape_jobs(
                        server,
                        fulfilment,
                        gateway,
                        receiver=receiver,
                        reconciler=stack.reconciler,
                        sender=stack.refunds,
                    ),
                    root,
                ),
            ):
                app.serve(server)


# How often `make run`'s Prometheus scrapes and evaluates its rules: graphs move within
# seconds of a change on a development machine.
DEV_SCRAPE_INTERVAL_S = 5.0


def scrape_jobs(
    server: Settings,
    fulfilment: FulfilmentSettings,
    gateway: Gateway | None,
    *,
    workers: int = 1,
    receiver: PaymentsSettings | None = None,
    reconciler: ReconcilerSettings | None = None,
    sender: RefundSettings | None = None,
) -> list[Job]:
    """What Prometheus scrapes of a stack: each server process's metrics, each of `workers`
    fulfilment workers' (the first on fulfil_metrics_port, the next on the ports after it,
    as `make run` and the tests start them), the money programs' (the payment webhook
    receiver, the reconciler, the refund sender: on loopback), and Envoy's admin
    interface."""
    jobs = []
    if server.metrics_port:
        host = "127.0.0.1" if server.metrics_host in ("", "0.0.0.0", "::") else server.metrics_host
        ports = range(server.metrics_port, server.metrics_port + server.workers)
        jobs.append(Job("stockcore", tuple(f"{host}:{port}" for port in ports)))
    if fulfilment.fulfil_metrics_port:
        ports = range(fulfilment.fulfil_metrics_port, fulfilment.fulfil_metrics_port + workers)
        jobs.append(Job("stockcore-fulfilment", tuple(f"127.0.0.1:{port}" for port in ports)))
    if receiver is not None and receiver.webhook_metrics_port:
        jobs.append(Job("stockcore-payments", (f"127.0.0.1:{receiver.webhook_metrics_port}",)))
    if reconciler is not None and reconciler.reconcile_metrics_port:
        port = reconciler.reconcile_metrics_port
        jobs.append(Job("stockcore-reconciler", (f"127.0.0.1:{port}",)))
    if sender is not None and sender.refund_metrics_port:
        jobs.append(Job("stockcore-refunds", (f"127.0.0.1:{sender.refund_metrics_port}",)))
    if gateway is not None:
        stats = gateway.stats_url().removeprefix("http://")
        jobs.append(Job("envoy", (stats,), metrics_path="/stats/prometheus"))
    return jobs


@contextlib.contextmanager
def _prometheus(dev: DevSettings, jobs: list[Job], root: Path) -> Iterator[None]:
    """Prometheus on dev_prometheus_port scraping `jobs`, while the block runs; none when the
    port is 0 or Prometheus is not installed (said in one line: the stack runs without)."""
    if not dev.dev_prometheus_port:
        yield
        return
    if prometheus_binary() is None:
        print(
            "prometheus is not installed (apt-get install prometheus, or `make run` as root):"
            " serving without it",
            file=sys.stderr,
            flush=True,
        )
        yield
        return
    with LocalPrometheus(
        root / "prometheus", dev.dev_prometheus_port, jobs, interval_s=DEV_SCRAPE_INTERVAL_S
    ) as prometheus:
        print(
            f"Prometheus on {prometheus.url}/ (consoles: {prometheus.url}/consoles/"
            "stockcore-overview.html)",
            file=sys.stderr,
            flush=True,
        )
        yield


@contextlib.contextmanager
def _page_sessions(
    sessions: PageSessions | None, server: Settings, gateway: GatewaySettings, provider_url: str
) -> Iterator[GatewaySettings]:
    """The checkout page's session endpoint, paying through the payment provider at
    `provider_url`, while the gateway runs (none without `sessions` or a gateway); the
    gateway's settings, pointing at it, are yielded."""
    if sessions is None or not gateway.gateway_port:
        yield gateway
        return
    tls = Credentials.from_files(
        ca_file=gateway.gateway_upstream_ca_file or None, plaintext=server.plaintext
    )
    payments = SimulatedPayments(
        local_target(server), tls, sessions.signing_key, sessions.audience, provider_url
    )
    with page_session.serving(sessions, payments) as socket:
        yield gateway.with_overrides(gateway_session_socket=str(socket))


@contextlib.contextmanager
def _gateway(settings: GatewaySettings, root: Path) -> Iterator[Gateway | None]:
    """Envoy in front of the server while it serves (none when gateway_port is 0). It dies
    with this process, and is stopped when serving ends."""
    if not settings.gateway_port:
        yield None
        return
    with Gateway(settings, root / "gateway") as gateway:
        log.info("gateway ready", extra={"url": gateway.url, "metrics": gateway.stats_url()})
        yield gateway


def gateway_alone(settings: GatewaySettings, data_dir: Path | str) -> GatewaySettings:
    """The settings of a gateway run alone (`python -m devstack gateway`) in front of a
    server `make run` started on this machine: trusting the development CA when no CA is
    named and it exists, as the typed clients do (Credentials.from_env)."""
    dev_ca = DevCredentials(Path(data_dir).resolve()).ca_cert
    if not settings.plaintext and not settings.gateway_upstream_ca_file and dev_ca.is_file():
        return settings.with_overrides(gateway_upstream_ca_file=str(dev_ca))
    return settings


# The demo catalogue's prices, the file the checkout page shows.
DEMO_PRICES = Path(str(resources.files("gateway") / "static" / "catalogue.json"))

# A service's token lives a day at most (the server's default STOCKCORE_AUTH_MAX_LIFETIME);
# the stack writes a fresh one to the service's token file well before the last expires.
SERVICE_TOKEN_TTL_S = 86_400.0
SERVICE_TOKEN_RENEW_S = SERVICE_TOKEN_TTL_S / 4


@dataclass(frozen=True)
class ServiceToken:
    """The token `make run` mints for a program it starts that calls the server: the
    subject the audit trail records, and the scopes the program uses, no more."""

    subject: str
    scopes: tuple[str, ...]

    def path(self, data_dir: Path | str) -> Path:
        """Its token file."""
        return Path(data_dir).resolve() / "tokens" / f"{self.subject}.jwt"


# It reads orders and records shipping; it never creates, pays or cancels.
FULFILMENT_WORKER = ServiceToken("fulfilment-worker", ("orders:read", "orders:fulfil"))
# It confirms payments; it reads, creates and cancels nothing.
PAYMENT_WEBHOOKS = ServiceToken("payment-webhooks", ("orders:pay",))


def service_credentials_env(
    settings: Settings, data_dir: Path | str, token: ServiceToken
) -> dict[str, str]:
    """What a program started by `make run` presents to the server (read by
    Credentials.from_env): the development CA, and a token file holding `token` signed with
    the development key (renewed by `renewing_service_token`), when the server uses the
    development credentials."""
    credentials = DevCredentials(Path(data_dir).resolve())
    env: dict[str, str] = {"STOCKCORE_PLAINTEXT": "1" if settings.plaintext else "0"}
    if settings.tls_cert_file == str(credentials.server_cert):
        env["STOCKCORE_CA_FILE"] = str(credentials.ca_cert)
    if not settings.auth_disabled and settings.auth_jwks_file == str(credentials.jwks):
        path = token.path(data_dir)
        write_service_token(credentials, path, token)
        env["STOCKCORE_TOKEN_FILE"] = str(path)
    return env


def program_env(credentials: Mapping[str, str] | None, own: Mapping[str, str]) -> dict[str, str]:
    """The environment of a program `make run` starts: this one's, what the program
    presents to the server (`credentials`), and its own settings. Given a token file of
    its own, the program uses it, never a STOCKCORE_TOKEN this shell carries (the README
    has the user export one, and a user's token is not the worker's)."""
    env = {**os.environ, **(credentials or {}), **own}
    if "STOCKCORE_TOKEN_FILE" in env:
        env.pop("STOCKCORE_TOKEN", None)
    return env


def write_service_token(credentials: DevCredentials, path: Path, token: ServiceToken) -> None:
    """A fresh token in `path` (readable by this user only), replaced whole."""
    from clients.tokens import issue_token, load_signing_key

    signed = issue_token(
        load_signing_key(credentials.signing_key),
        token.subject,
        token.scopes,
        ttl_s=SERVICE_TOKEN_TTL_S,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(signed)
    partial.chmod(0o600)
    partial.replace(path)


@contextlib.contextmanager
def renewing_service_token(
    env: Mapping[str, str], data_dir: Path, token: ServiceToken
) -> Iterator[None]:
    """While the block runs, write a fresh `token` to the token file `env` names (if it
    names one) every SERVICE_TOKEN_RENEW_S."""
    path = env.get("STOCKCORE_TOKEN_FILE")
    if path is None:
        yield
        return
    stop = threading.Event()
    credentials = DevCredentials(data_dir.resolve())

    def renew() -> None:
        while not stop.wait(SERVICE_TOKEN_RENEW_S):
            try:
                write_service_token(credentials, Path(path), token)
            except OSError:
                log.exception("could not renew a service's token", extra={"subject": token.subject})

    thread = threading.Thread(target=renew, name=f"{token.subject}-token", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _dev_ca(settings: Settings, data_dir: Path) -> str:
    credentials = DevCredentials(data_dir)
    if settings.tls_cert_file == str(credentials.server_cert):
        return str(credentials.ca_cert)
    return "of the configured certificate"
