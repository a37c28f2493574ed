"""`make hostile`: abusive callers against a real server, and what their abuse costs an
ordinary caller measured in the same run.

The stack is the real one with its protections on: the server over TLS checking tokens
(devstack's development credentials), PostgreSQL and Redis. Three phases of DURATION
seconds each, in one run:

1. **quiet**: an ordinary service caller (RATE Reserve + Release pairs a second, each
   started on schedule: an open loop, in a process of its own) alone; its Reserve p99 is
   the reference.
2. **abuse**: the same ordinary caller while, in another process, the abusers run:
   - *worst requests* (a customer's token): WatchOrders naming 30,000 event types,
     CreateOrder with 100 invalid lines (a checkout page's token), and requests over the size
     bound, in a loop at a bounded rate;
   - *health streams* (no token at all): up to 10,000 `grpc.health.v1.Health/Watch`
     attempts held open;
   - *one customer's streams*: one customer's token opening 2,000 WatchOrders streams;
   - *expensive reads*: one service subject sending 64 concurrent STRONG GetStock loops.
   The ordinary caller starts once the abusers' streams have settled (each held or
   refused: their one-time cost paid), so that what it measures is the abuse going on.
3. **after**: the ordinary caller alone again (the server recovered).

Before the phases, the server's CPU and memory per worst request are measured on their
own (a burst of each kind, the server otherwise idle, its idle CPU over the same time
subtracted). The report gives each abuser's outcomes by status code, the ordinary
caller's p99 in each phase and the ratio abuse/quiet (the promise: at most 1.5), and the
server's peak RSS (the promise: under 300 MB).

    python -m loadtests.hostile [--duration 60] [--rate 100] [--abusers worst,health,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc
from stockcore.v1 import orders_pb2 as opb

from clients.credentials import Credentials
from clients.errors import from_rpc_error
from clients.tokens import issue_token, load_signing_key
from devstack.credentials import DevCredentials
from devstack.servers import LocalStockcore, local_servers
from loadtests.report import Run, describe_machine, table
from loadtests.sampler import cpu_seconds, descendants, rss_kb
from runtime.processes import free_port

SKUS = [f"H-{i:02d}" for i in range(16)]
SHARDS = 8
RSS_LIMIT_MB = 300.0
P99_LIMIT = 1.5
# The abusers' knobs: enough to show each protection at work, within what the
# machine's two cores leave the server and the ordinary caller.
HEALTH_ATTEMPTS = 10_000
CUSTOMER_STREAMS = 2_000
STRONG_READERS = 64
# The ordinary caller's pace: a shop's steady traffic, well below what the server can
# serve, so that its latency shows what the abuse costs rather than its own queue.
ORDINARY_RATE = 100.0


ABUSERS = ("worst", "health", "streams", "reads")
"""The abusers by name: worst requests, health streams, one customer's streams, expensive
reads."""


@dataclass(frozen=True)
class Abuse:
    """Which abusers run, and how many streams the stream abusers open."""

    health: int = HEALTH_ATTEMPTS
    customer: int = CUSTOMER_STREAMS
    abusers: tuple[str, ...] = ABUSERS


WORST_PER_SECOND = 40
# The stream abusers have settled once no stream was answered for this long after the
# last attempt; the run waits at most SETTLE_LIMIT_S for that.
SETTLED_S = 1.0
SETTLE_LIMIT_S = 180.0
BURST = 200
# Measured beside the worst requests for scale: what any call costs at the least.
CHEAPEST = "Health/Check (the cheapest call, for scale)"


@dataclass(frozen=True)
class Target:
    """Where the server is and how to reach it (pickled to the helper processes as JSON)."""

    address: str
    data_dir: str

    def credentials(self, token: str | None) -> Credentials:
        """TLS with the development CA, and `token`."""
        dev = DevCredentials(Path(self.data_dir))
        return Credentials(token, root_certificates=dev.ca_cert.read_bytes())

    def token(self, subject: str, scopes: Sequence[str], customer: str | None = None) -> str:
        """A token signed with the development key."""
        key = load_signing_key(DevCredentials(Path(self.data_dir)).signing_key)
        return issue_token(key, subject, scopes, customer_id=customer, ttl_s=3600.0)


def _code(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


# --- the ordinary caller -------------------------------------------------------------


async def ordinary(target: Target, seconds: float, rate: float) -> dict[str, Any]:
    """Reserve + Release at `rate` a second for `seconds`, each pair started on schedule
    whether or not the ones before it were answered (an open loop, as shoppers arrive);
    Reserve latencies, from when each was due, and outcomes."""
    service = target.token("shop", ["inventory:hold", "inventory:read"])
    channel = target.credentials(None).aio_channel(target.address)
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    metadata = (("authorization", f"Bearer {service}"),)
    latencies: list[float] = []
    codes: Counter[str] = Counter()

    async def one(i: int, due: float) -> None:
        rid = f"ord-{os.getpid()}-{i}"
        request = ipb.ReserveRequest(
            reservation_id=rid, lines=[ipb.Line(sku=SKUS[i % len(SKUS)], quantity=1)]
        )
        try:
            await stub.Reserve(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            codes[_code(error)] += 1
            return
        latencies.append(time.perf_counter() - due)
        codes["OK"] += 1
        try:
            await stub.Release(ipb.ReleaseRequest(reservation_id=rid), metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            codes[f"release {_code(error)}"] += 1

    await channel.channel_ready()
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    for i in range(int(seconds * rate)):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await channel.close(None)
    return {"latencies": latencies, "codes": dict(codes)}


# --- the abusers ------------------------------------------------------------------------


class Tally:
    """Outcomes of one abuser by status code."""

    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()

    def add(self, outcome: str) -> None:
        """Count one outcome."""
        self.codes[outcome] += 1


def worst_requests(target: Target) -> list[tuple[str, Callable[[Any, Any], Awaitable[Any]]]]:
    """The worst requests an ordinary token can send, each as (name, call(stubs, md))."""
    customer = target.token("shop-web", ["customer"], customer="eve")
    checkout = target.token("checkout-page", ["customer", "orders:create"], customer="eve")
    as_customer = (("authorization", f"Bearer {customer}"),)
    as_checkout = (("authorization", f"Bearer {checkout}"),)
    unknown, known = opb.EventType.ValueType(99), opb.EventType.ValueType(1)
    many_types = opb.WatchOrdersRequest(customer_id="eve", types=[unknown] * 30_000)
    oversize = opb.WatchOrdersRequest(customer_id="eve", types=[known] * 200_000)
    bad_lines = opb.CreateOrderRequest(
        order_id="o-bad",
        customer_id="eve",
        currency_code="EUR",
        lines=[opb.OrderLine(sku="", quantity=0) for _ in range(100)],
    )

    async def watch(orders: orders_pb2_grpc.OrderServiceStub, request: Any, md: Any) -> None:
        stream: Any = orders.WatchOrders(request, metadata=md, timeout=5)
        try:
            await stream.read()
        finally:
            stream.cancel()

    return [
        ("WatchOrders, 30,000 types", lambda o, _: watch(o, many_types, as_customer)),
        ("WatchOrders, 200 KB", lambda o, _: watch(o, oversize, as_customer)),
        ("CreateOrder, 100 bad lines", lambda o, _: o.CreateOrder(bad_lines, metadata=as_checkout, timeout=5)),
    ]  # fmt: skip


class Abusing:
    """The abusers' run: when it is over (the parent's stop file appears, or `longest`
    seconds passed), and when the stream abusers have settled (every attempt sent, and no
    stream answered for SETTLED_S: each held or refused), which the parent waits for
    before it measures, whatever the machine's speed."""

    def __init__(self, out: Path, longest: float, stream_abusers: int) -> None:
        self.stop = asyncio.Event()
        self._stop_file = out.with_suffix(".stop")
        self._ready_file = out.with_suffix(".ready")
        self._deadline = time.monotonic() + longest
        self._sending = stream_abusers
        self._last_answer = time.monotonic()

    @property
    def running(self) -> bool:
        """Whether the abusers go on."""
        return not self.stop.is_set()

    def answered(self) -> None:
        """A stream was held (its first message came) or refused."""
        self._last_answer = time.monotonic()

    def sent(self) -> None:
        """A stream abuser sent all its attempts."""
        self._sending -= 1
        self._last_answer = time.monotonic()

    async def watch(self) -> None:
        """Say when the streams have settled; stop at the parent's word or the deadline."""
        while self.running:
            now = time.monotonic()
            settled = self._sending == 0 and now - self._last_answer >= SETTLED_S
            if settled and not self._ready_file.exists():
                self._ready_file.write_text("settled")
            if self._stop_file.exists() or now > self._deadline:
                self.stop.set()
            await asyncio.sleep(0.1)


async def _worst_loop(target: Target, run: Abusing, tally: dict[str, Tally]) -> None:
    channel = target.credentials(None).aio_channel(target.address)
    orders = orders_pb2_grpc.OrderServiceStub(channel)
    kinds = worst_requests(target)
    interval = 1.0 / WORST_PER_SECOND
    i = 0
    while run.running:
        name, call = kinds[i % len(kinds)]
        i += 1
        try:
            await call(orders, None)
            tally[name].add("OK")
        except Exception as error:
            tally[name].add(_code(error))
        await asyncio.sleep(interval)
    await channel.close(None)


async def _hold_stream(stream: Any, tally: Tally, run: Abusing) -> None:
    try:
        async for _ in stream:
            run.answered()
        tally.add("ended")
    except grpc.aio.AioRpcError as error:
        run.answered()
        tally.add(_code(error))
    except asyncio.CancelledError:
        # Stopped by the end of the run while still open: the abuse held it.
        tally.add("held open")
    finally:
        stream.cancel()


async def _open_streams(
    run: Abusing, tally: Tally, channels: Sequence[grpc.aio.Channel], streams: Sequence[Any]
) -> None:
    held = []
    for i, open_stream in enumerate(streams):
        held.append(
            asyncio.create_task(_hold_stream(open_stream(channels[i % len(channels)]), tally, run))
        )
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    run.sent()
    await run.stop.wait()
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


async def _health_streams(target: Target, run: Abusing, tally: Tally, attempts: int) -> None:
    channels = [target.credentials(None).aio_channel(target.address) for _ in range(20)]
    request = health_pb2.HealthCheckRequest(service="")
    opener = lambda channel: health_pb2_grpc.HealthStub(channel).Watch(request)  # noqa: E731
    await _open_streams(run, tally, channels, [opener] * attempts)


async def _customer_streams(target: Target, run: Abusing, tally: Tally, streams: int) -> None:
    token = target.token("shop-web", ["customer"], customer="mallory")
    md = (("authorization", f"Bearer {token}"),)
    channels = [target.credentials(None).aio_channel(target.address) for _ in range(10)]
    request = opb.WatchOrdersRequest(customer_id="mallory")
    opener = lambda channel: orders_pb2_grpc.OrderServiceStub(channel).WatchOrders(  # noqa: E731
        request, metadata=md
    )
    await _open_streams(run, tally, channels, [opener] * streams)


async def _strong_reads(target: Target, run: Abusing, tally: Tally) -> None:
    token = target.token("reporting", ["inventory:read"])
    md = (("authorization", f"Bearer {token}"),)
    channel = target.credentials(None).aio_channel(target.address)
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    read = ipb.GetStockRequest(skus=SKUS, consistency=ipb.CONSISTENCY_STRONG)

    async def loop() -> None:
        while run.running:
            try:
                await stub.GetStock(read, metadata=md, timeout=5)
                tally.add("OK")
            except grpc.aio.AioRpcError as error:
                tally.add(_code(error))
                # A refused reader comes back when the refusal says, as any client with a
                # retry policy does (clients/errors.py reads RetryInfo and gRPC's pushback).
                await asyncio.sleep(from_rpc_error(error).retry_delay or 0.01)

    await asyncio.gather(*(loop() for _ in range(STRONG_READERS)))
    await channel.close(None)


async def abuse(
    target: Target, longest: float, sizes: Abuse, out: Path
) -> dict[str, dict[str, int]]:
    """Every chosen abuser at once, until the parent's stop file (`out` + .stop) appears
    or `longest` seconds passed; outcomes by abuser and status."""
    run = Abusing(out, longest, len({"health", "streams"} & set(sizes.abusers)))
    worst = {name: Tally() for name, _ in worst_requests(target)}
    health, streams, reads = Tally(), Tally(), Tally()
    chosen = {
        "worst": lambda: _worst_loop(target, run, worst),
        "health": lambda: _health_streams(target, run, health, sizes.health),
        "streams": lambda: _customer_streams(target, run, streams, sizes.customer),
        "reads": lambda: _strong_reads(target, run, reads),
    }
    watcher = asyncio.create_task(run.watch())
    await asyncio.gather(*(chosen[name]() for name in sizes.abusers))
    await watcher
    found = {name: dict(t.codes) for name, t in worst.items() if "worst" in sizes.abusers}
    tallies = {"health": ("Health/Watch, no token", health),
               "streams": ("WatchOrders, one customer", streams),
               "reads": ("GetStock STRONG, one subject", reads)}  # fmt: skip
    for name, (label, tally) in tallies.items():
        if name in sizes.abusers:
            found[label] = dict(tally.codes)
    return found


# --- the cost of one worst request ---------------------------------------------------


def _server_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in descendants(pid))


def _server_rss_mb(pid: int) -> float:
    return sum(rss_kb(p) or 0 for p in descendants(pid)) / 1024


async def request_costs(target: Target, pid: int) -> dict[str, tuple[float, float]]:
    """(server CPU ms, RSS growth MB) per request of each worst kind: a burst of BURST
    sequential requests, less the server's idle CPU over the same time."""
    channel = target.credentials(None).aio_channel(target.address)
    orders = orders_pb2_grpc.OrderServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    found: dict[str, tuple[float, float]] = {}
    kinds = [
        *worst_requests(target),
        (CHEAPEST, lambda *_: health.Check(health_pb2.HealthCheckRequest(), timeout=5)),
    ]
    for name, call in kinds:
        idle_started, idle_cpu = time.monotonic(), _server_cpu(pid)
        await asyncio.sleep(1.0)
        idle_rate = (_server_cpu(pid) - idle_cpu) / (time.monotonic() - idle_started)
        rss_before = _server_rss_mb(pid)
        started, cpu = time.monotonic(), _server_cpu(pid)
        for _ in range(BURST):
            try:
                await call(orders, None)
            except grpc.aio.AioRpcError:
                pass
        took = time.monotonic() - started
        spent = _server_cpu(pid) - cpu - idle_rate * took
        found[name] = (max(spent, 0.0) / BURST * 1000, _server_rss_mb(pid) - rss_before)
    await channel.close(None)
    return found


# --- orchestration ------------------------------------------------------------------------


def _child(
    role: str, target: Target, seconds: float, rate: float, sizes: Abuse, out: Path
) -> subprocess.Popen[bytes]:
    """A helper process of `role`, writing its result as JSON to `out` (a file, not a
    pipe: the parent samples the server while it runs, and a large result must not block
    on a pipe nobody reads yet). The abusers run at the lowest CPU priority: abusers are
    other machines, and what is measured is what serving them costs this one, not what
    their own client code costs the two cores they share here."""
    nice = ["nice", "-n", "19"] if role == "abuse" else []
    argv = [*nice, sys.executable, "-m", "loadtests.hostile", "--role", role, "--target", target.address,
            "--data", target.data_dir, "--duration", str(seconds), "--rate", str(rate),
            "--health-streams", str(sizes.health), "--customer-streams", str(sizes.customer),
            "--abusers", ",".join(sizes.abusers), "--out", str(out)]  # fmt: skip
    return subprocess.Popen(argv)


def _result(proc: subprocess.Popen[bytes], out: Path) -> Any:
    if proc.wait() != 0:
        raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
    return json.loads(out.read_text())


def p99_ms(latencies: Sequence[float]) -> float:
    """The 99th percentile in milliseconds (nearest rank)."""
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


async def _stock(target: Target) -> None:
    token = target.token("hostile-setup", ["stock:adjust"])
    async with target.credentials(token).aio_channel(target.address) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        for sku in SKUS:
            await stub.AdjustStock(
                ipb.AdjustStockRequest(
                    sku=sku, on_hand=10**9, reason="hostile run", idempotency_key=f"hostile-{sku}"
                ),
                metadata=md,
            )


def _wait_settled(abuser: subprocess.Popen[bytes], out: Path) -> None:
    """Wait until the abusers' streams are all held or refused (their one-time cost paid),
    so that what is measured beside them is the abuse going on."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    while not out.with_suffix(".ready").exists():
        if abuser.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the abusers' streams did not settle in {SETTLE_LIMIT_S:g} s")
        time.sleep(0.2)


def measure(run: Run, seconds: float, rate: float, sizes: Abuse) -> None:
    """The whole run on a fresh stack, reported to `run`."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        data = Path(folder)
        data.chmod(0o755)  # PostgreSQL runs as its own user when we are root
        DevCredentials(data).ensure()
        with local_servers(data, free_port(), free_port(), want_pg=True, want_redis=True) as (
            pg,
            redis,
        ):
            assert pg is not None and redis is not None
            server = LocalStockcore(
                pg.dsn, redis.url, SHARDS, data, STOCKCORE_DEMO_CATALOGUE="false"
            )
            asyncio.run(server.start(timeout=120.0))
            try:
                assert server.proc is not None
                pid = server.proc.pid
                target = Target(server.target, str(data))
                asyncio.run(_stock(target))
                costs = asyncio.run(request_costs(target, pid))
                peak = [_server_rss_mb(pid)]
                phases: dict[str, Any] = {}
                abused = data / "abusers.json"
                for phase in ("quiet", "abuse", "after"):
                    abuser = None
                    if phase == "abuse":
                        longest = seconds + SETTLE_LIMIT_S + 30
                        abuser = _child("abuse", target, longest, rate, sizes, abused)
                        _wait_settled(abuser, abused)
                    cpu, started = _server_cpu(pid), time.monotonic()
                    caller = _child(
                        "ordinary", target, seconds, rate, sizes, data / f"{phase}.json"
                    )
                    while caller.poll() is None:
                        peak.append(_server_rss_mb(pid))
                        time.sleep(0.5)
                    busy = (_server_cpu(pid) - cpu) / (time.monotonic() - started)
                    phases[phase] = _result(caller, data / f"{phase}.json")
                    phases[phase]["server_cpu"] = busy
                    if abuser is not None:
                        abused.with_suffix(".stop").write_text("stop")
                        phases["abusers"] = _result(abuser, abused)
                    peak.append(_server_rss_mb(pid))
            finally:
                server.stop()
    report(run, costs, phases, max(peak), seconds, rate)


def report(
    run: Run,
    costs: dict[str, tuple[float, float]],
    phases: dict[str, Any],
    peak_mb: float,
    seconds: float,
    rate: float,
) -> None:
    """Say the figures, check what must hold and report the promises as targets."""
    run.say(
        f"# Hostile callers: {seconds:g} s per phase, an ordinary caller at {rate:g} Reserve/s", ""
    )
    run.say("Server cost of one worst request (burst of 200, idle CPU subtracted):", "")
    run.say(*table(
        ["request", "server CPU ms", "RSS growth over the burst MB"],
        [[name, f"{cpu:.2f}", f"{rss:+.2f}"] for name, (cpu, rss) in costs.items()],
    ), "")  # fmt: skip
    run.say("Abusers' outcomes, by status:", "")
    run.say(*table(
        ["abuser", "outcomes"],
        [[name, ", ".join(f"{c} {n:,}" for c, n in sorted(codes.items()))]
         for name, codes in phases["abusers"].items()],
    ), "")  # fmt: skip
    p99: dict[str, float] = {}
    rows = []
    for phase in ("quiet", "abuse", "after"):
        found = phases[phase]
        lat = found["latencies"]
        p99[phase] = p99_ms(lat) if lat else float("inf")
        other = {k: v for k, v in found["codes"].items() if k != "OK"}
        rows.append([
            phase, f"{found['server_cpu']:.2f}", f"{len(lat) / seconds:.1f}",
            f"{statistics.mean(lat) * 1000:.2f}" if lat else "-", f"{p99[phase]:.2f}",
            ", ".join(f"{k} {v}" for k, v in sorted(other.items())) or "-",
        ])  # fmt: skip
    run.say("The ordinary caller's Reserve, and the server's CPU use (cores) meanwhile:", "")
    headers = ["phase", "server CPU", "Reserve/s", "mean ms", "p99 ms", "not OK"]
    run.say(*table(headers, rows), "")

    worst = {name for name in costs if name != CHEAPEST}
    refused = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    served = {
        name: codes for name, codes in phases["abusers"].items()
        if name in worst and set(codes) - refused
    }  # fmt: skip
    run.check(not served, f"every worst request was refused whole, none served ({served or 'ok'})")
    run.check(
        all(phases[p]["codes"].get("OK", 0) > 0 for p in ("quiet", "abuse", "after")),
        "the ordinary caller was served in every phase",
    )
    ratio = p99["abuse"] / p99["quiet"]
    run.target(ratio <= P99_LIMIT, f"Reserve p99 under abuse / quiet {ratio:.2f} <= {P99_LIMIT}")
    run.target(peak_mb < RSS_LIMIT_MB, f"server peak RSS {peak_mb:.0f} MB < {RSS_LIMIT_MB:.0f} MB")
    dearest = max(cpu for name, (cpu, _) in costs.items() if name != CHEAPEST)
    run.target(dearest < 5.0, f"the dearest worst request costs {dearest:.2f} ms of server CPU < 5")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the run, or one of its helper processes (--role)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument(
        "--rate", type=float, default=ORDINARY_RATE, help="the ordinary caller's Reserve/s"
    )
    parser.add_argument("--reports", default=".reports", help="where the run's folder goes")
    parser.add_argument(
        "--health-streams", type=int, default=HEALTH_ATTEMPTS, help="Health/Watch attempts"
    )
    parser.add_argument(
        "--customer-streams", type=int, default=CUSTOMER_STREAMS, help="one customer's streams"
    )
    parser.add_argument(
        "--abusers",
        default=",".join(ABUSERS),
        help=f"which abusers run, comma-separated (default: all of {','.join(ABUSERS)})",
    )
    parser.add_argument("--role", choices=["ordinary", "abuse"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0:
        parser.error("--duration and --rate must be above 0")
    abusers = tuple(name for name in args.abusers.split(",") if name)
    unknown = sorted(set(abusers) - set(ABUSERS))
    if unknown or not abusers:
        parser.error(f"--abusers takes names from {','.join(ABUSERS)}, not {args.abusers!r}")
    sizes = Abuse(args.health_streams, args.customer_streams, abusers)
    if args.role is not None:
        target = Target(args.target, args.data)
        if args.role == "ordinary":
            found: Any = asyncio.run(ordinary(target, args.duration, args.rate))
        else:
            found = asyncio.run(abuse(target, args.duration, sizes, Path(args.out)))
        Path(args.out).write_text(json.dumps(found))
        return 0
    run = Run("hostile", Path(args.reports))
    run.say(describe_machine(), "")
    measure(run, args.duration, args.rate, sizes)
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
