"""The system under test of a load run, and the catalogue it is loaded with.

Without STOCKCORE_TARGET, a fresh stack is started under the given data folder: PostgreSQL
and Redis (unless STOCKCORE_PG_DSN / STOCKCORE_REDIS_URL name existing ones) and the real
server as a child process, all on loopback and all dying with this process. That server is
plaintext without token checks (PLAINTEXT_ENV). With STOCKCORE_TARGET=host:port the run
goes to that server, which must then serve plaintext as well; STOCKCORE_PG_DSN and
STOCKCORE_REDIS_URL then only enable the read-only checks after the run, and
STOCKCORE_SERVER_PID lets the run sample that server's memory.

With `payments`, the simulated payment provider and stockcore's webhook receiver run
beside the server (devstack.stack.payments_and_receiver), so a run can pay as shoppers do:
the provider captures a charge and its signed webhook makes the receiver confirm the
payment. The reconciler follows the provider's settlement feed beside them, with a grace
period and a settle deadline suited to a run of minutes (LOAD_RECONCILER), and the refund
sender pays refunds back through the provider. The receiver and the reconciler record in
PostgreSQL, so they need one (STOCKCORE_PG_DSN with STOCKCORE_TARGET).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import requests
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from devstack.config import DevSettings
from devstack.servers import LocalStockcore, local_servers
from devstack.stack import payments_and_receiver, with_webhook_secret
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from loadtests.sampler import ProcessSampler
from payments.config import PaymentsSettings
from payments.reconciler.config import ReconcilerSettings
from runtime.processes import free_port

SHARDS = 16
# The sampled process group of the simulated payment provider (with `payments`).
PROVIDER_GROUP = "payment-provider"
PLAINTEXT_ENV = {"STOCKCORE_PLAINTEXT": "true", "STOCKCORE_AUTH_DISABLED": "true"}
"""How the load tools' own servers are started: plaintext without token checks, asked for
explicitly, so the load runs measure the core alone and stay comparable with earlier runs;
`make bench` measures what TLS and token checks add (loadtests/bench.py)."""

LOAD_RECONCILER = ReconcilerSettings(grace_s=20.0, settle_deadline_s=15.0, interval_s=1.0)
"""The reconciler of a load run. A fact waits 20 s for the other side before it is a
discrepancy, past the provider's own webhook faults together (a delivery delayed 5 s,
held back up to 10 s behind a later one, lost once and sent again 1 s later), so a
charge it recovers from the feed is one whose webhook never came; a balance transaction read more than 15 s after its creation is late, well
under the provider's late settlement (30 s) and well over a reconciler that keeps up."""

_SEED_CONCURRENCY = 64
_CALLER = [("stockcore-caller", "loadtests-seed")]


@dataclass(frozen=True)
class Stack:
    """Where the server is, and what the run may read after it."""

    target: str
    pg_dsn: str | None
    redis_url: str | None
    server_pid: int | None
    owned: bool
    """Started by this run (fresh), rather than named by the environment."""
    service_pids: dict[str, int] = field(default_factory=dict)
    """Root processes to sample: "server", and "postgres" and "redis" when started here,
    and "gateway" (Envoy) when asked for."""
    gateway_url: str | None = None
    """The HTTP/JSON gateway in front of the server, when asked for."""
    provider_url: str | None = None
    """The simulated payment provider, when asked for (its webhooks reach the receiver)."""

    def sampler(self, load_pids: list[int]) -> ProcessSampler:
        """A sampler of the services' processes and of the load processes in `load_pids`
        (a list the caller fills in once they have started)."""

        def roots() -> dict[str, list[int]]:
            groups = {name: [pid] for name, pid in self.service_pids.items()}
            groups["load"] = list(load_pids)
            return groups

        return ProcessSampler(roots)


# A bound on calls in flight no load tool reaches.
UNBOUNDED = 100_000
# A server that admits every call: no ceiling a load tool reaches, and a queue-delay
# target (10 s, the most a setting allows) past every deadline. For the closed-loop tools,
# which measure what the server does at each concurrency with callers that never back off.
UNSHED_ENV = {"STOCKCORE_MAX_IN_FLIGHT": str(UNBOUNDED), "STOCKCORE_OVERLOAD_TARGET_S": "10"}


@contextlib.contextmanager
def open_stack(
    data_dir: Path,
    *,
    server_workers: int = 1,
    extra_env: dict[str, str] | None = None,
    gateway: bool = False,
    shed: bool = False,
    payments: bool = False,
    reconciler: ReconcilerSettings = LOAD_RECONCILER,
) -> Iterator[Stack]:
    """The servers named by the environment, or a fresh local stack under `data_dir`; with
    `gateway`, Envoy in front of the server (on a free port, its access log in `data_dir`);
    with `payments`, the payment provider, the webhook receiver, the refund sender and the
    reconciler (`reconciler`'s policy; its database and server are the stack's) beside it.

    A local server is started admitting every call (UNSHED_ENV) unless `shed`: these
    tools measure what the server does at each concurrency (their callers do not back
    off when refused); `make load-overload` and the flash sale measure admission itself."""
    with (
        _open_stack(data_dir, server_workers, extra_env, shed) as stack,
        contextlib.ExitStack() as more,
    ):
        if payments:
            stack = more.enter_context(_with_payments(stack, data_dir.resolve(), reconciler))
        if not gateway:
            yield stack
            return
        host, _, port = stack.target.rpartition(":")
        settings = GatewaySettings(
            # The load runs' servers serve plaintext (PLAINTEXT_ENV; STOCKCORE_TARGET must).
            plaintext=True,
            grpc_host=host,
            gateway_port=free_port(),
            gateway_stats_port=0,
            gateway_access_log=str(data_dir.resolve() / "gateway-access.log"),
        ).validate()
        with Gateway(settings, data_dir.resolve() / "gateway", grpc_port=int(port)) as envoy:
            assert envoy.proc is not None
            pids = {**stack.service_pids, "gateway": envoy.proc.pid}
            yield replace(stack, service_pids=pids, gateway_url=envoy.url)


@contextlib.contextmanager
def _with_payments(stack: Stack, data_dir: Path, reconciler: ReconcilerSettings) -> Iterator[Stack]:
    """`stack` with the provider, the receiver, the refund sender and the reconciler beside
    its server, until the provider and the receiver answer."""
    if stack.pg_dsn is None:
        raise SystemExit(
            "paying through the provider needs the receiver's PostgreSQL: set STOCKCORE_PG_DSN"
            " (or pay with ConfirmPayment: PAY_VIA=confirm)"
        )
    side = payment_side(stack.pg_dsn, stack.target, data_dir, reconciler)
    with payments_and_receiver(
        side.dev,
        side.receiver,
        data_dir / "logs",
        receiver_env=side.client_env,
        reconciler=side.reconciler,
    ) as pids:
        side.wait_answering()
        yield replace(
            stack, service_pids={**stack.service_pids, **pids}, provider_url=side.provider_url
        )


@dataclass(frozen=True)
class PaymentSide:
    """The settings of the payment side of a load run's stack (payments_and_receiver's
    arguments): the provider on a free port, the receiver checking deliveries with a secret
    of the run's own, the reconciler following that provider."""

    dev: DevSettings
    receiver: PaymentsSettings
    client_env: dict[str, str]
    """What the receiver and the reconciler present to the server."""
    reconciler: ReconcilerSettings

    @property
    def provider_url(self) -> str:
        """The simulated provider's API."""
        return f"http://127.0.0.1:{self.dev.dev_payments_port}"

    @property
    def receiver_url(self) -> str:
        """The webhook receiver's HTTP root."""
        return f"http://127.0.0.1:{self.receiver.webhook_port}/"

    def wait_answering(self, timeout_s: float = 60.0) -> None:
        """Until the provider and the receiver answer HTTP."""
        _wait_answering([f"{self.provider_url}/v1/balance", self.receiver_url], timeout_s)


def payment_side(
    pg_dsn: str, target: str, data_dir: Path, reconciler: ReconcilerSettings
) -> PaymentSide:
    """The payment side beside the server `target` and its database `pg_dsn`, its secret
    under `data_dir` (`reconciler`'s policy)."""
    receiver = with_webhook_secret(
        PaymentsSettings(
            pg_dsn=pg_dsn, payments_target=target, webhook_port=free_port(), webhook_metrics_port=0
        ),
        data_dir / "payments",
    ).validate()
    dev = DevSettings(dev_payments_port=free_port())
    # No metrics of the payment side, as the receiver's: a run beside `make run` would take
    # its ports.
    following = reconciler.with_overrides(
        pg_dsn=pg_dsn,
        payments_target=target,
        provider_url=f"http://127.0.0.1:{dev.dev_payments_port}",
        reconcile_metrics_port=0,
    )
    # The load runs' servers serve plaintext without token checks (PLAINTEXT_ENV).
    return PaymentSide(dev, receiver, {"STOCKCORE_PLAINTEXT": "true"}, following)


def _wait_answering(urls: Sequence[str], timeout_s: float) -> None:
    """Until every URL answers HTTP (any status)."""
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                requests.get(url, timeout=1.0)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not answer within {timeout_s:g} s") from None
                time.sleep(0.1)


@contextlib.contextmanager
def _open_stack(
    data_dir: Path, server_workers: int, extra_env: dict[str, str] | None, shed: bool
) -> Iterator[Stack]:
    pg_dsn = os.environ.get("STOCKCORE_PG_DSN") or None
    redis_url = os.environ.get("STOCKCORE_REDIS_URL") or None
    target = os.environ.get("STOCKCORE_TARGET") or None
    if target is not None:
        pid = os.environ.get("STOCKCORE_SERVER_PID")
        pids = {"server": int(pid)} if pid else {}
        yield Stack(target, pg_dsn, redis_url, int(pid) if pid else None, False, pids)
        return
    data_dir = data_dir.resolve()  # PostgreSQL is started with its socket folder there
    shutil.rmtree(data_dir, ignore_errors=True)
    with local_servers(
        data_dir, free_port(), free_port(), want_pg=pg_dsn is None, want_redis=redis_url is None
    ) as (pg, redis):
        pg_dsn = pg_dsn or (pg.dsn if pg else None)
        redis_url = redis_url or (redis.url if redis else None)
        assert pg_dsn is not None and redis_url is not None
        server = LocalStockcore(
            pg_dsn,
            redis_url,
            SHARDS,
            data_dir,
            STOCKCORE_WORKERS=str(server_workers),
            STOCKCORE_DEMO_CATALOGUE="false",
            **PLAINTEXT_ENV,
            **({} if shed else UNSHED_ENV),
            **(extra_env or {}),
        )
        asyncio.run(server.start(timeout=120.0))
        try:
            assert server.proc is not None
            pids = {"server": server.proc.pid}
            if pg is not None and pg.proc is not None:
                pids["postgres"] = pg.proc.pid
            if redis is not None and redis.proc is not None:
                pids["redis"] = redis.proc.pid
            yield Stack(server.target, pg_dsn, redis_url, server.proc.pid, True, pids)
        finally:
            server.stop()


async def stock_catalogue(
    target: str, skus: Sequence[str], on_hand: int, *, key: str, concurrency: int = 0
) -> None:
    """Set every SKU's on_hand through AdjustStock (idempotent on `key` and the SKU)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        queue = iter(skus)

        async def adjust_all() -> None:
            for sku in queue:
                await stub.AdjustStock(
                    pb.AdjustStockRequest(
                        sku=sku,
                        on_hand=on_hand,
                        reason="load test stock",
                        idempotency_key=f"{key}:{sku}",
                    ),
                    timeout=30.0,
                    metadata=_CALLER,
                )

        workers = concurrency or min(_SEED_CONCURRENCY, len(skus))
        await asyncio.gather(*(adjust_all() for _ in range(max(1, workers))))


async def read_stock(target: str, skus: Sequence[str]) -> list[pb.StockLevel]:
    """Every SKU's level, 1,000 per GetStock call."""
    levels: list[pb.StockLevel] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        it = iter(skus)
        while chunk := list(itertools.islice(it, 1000)):
            reply = await stub.GetStock(pb.GetStockRequest(skus=chunk), timeout=30.0)
            levels.extend(reply.levels)
    return levels


async def wait_for_no_holds(target: str, skus: Sequence[str], timeout: float) -> bool:
    """Wait until none of `skus` has units held; False if some still are after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        levels = await read_stock(target, skus)
        if all(level.reserved == 0 for level in levels):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(1.0)
