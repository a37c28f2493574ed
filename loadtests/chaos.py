"""`make chaos`: a seeded fault schedule under mixed load, then everything checked.

    python -m loadtests.chaos --seed 7 --duration 180

One fresh local stack of its own: PostgreSQL, Redis with its append-only file on (as
some operators run it, so a restart brings old keys back) and the server with two
workers. `--callers` callers run a mix: half hold stock (Reserve, then Commit or
Release), half buy (CreateOrder, then ConfirmPayment or CancelOrder), over a catalogue
where a few SKUs are scarce. Every call is retried with its id, as the README tells
callers to, until it has a definite answer or `--budget` seconds passed.

Meanwhile the schedule, drawn from `--seed` alone (the same seed replays the same
faults at the same moments), strikes every `--gap` seconds or so with one of:
kill -9 of Redis, of PostgreSQL or of one server worker; SIGSTOP (then SIGCONT) of
each of those; PostgreSQL slow (a session locks the stock table for a few seconds);
Redis restarted with its data on disk; kill -9 of the reconciler, the webhook receiver or
the refund sender, each started again (`--faults` strikes the kinds named first).

Beside the server run the simulated payment provider, the webhook receiver, the refund
sender and the reconciler; a share of the buyers pay at the provider (its webhook pays the
order) and some of those cancel once paid (a refund).

At the end, once reconciliation settled (every payment, charge to return and refund
stated, every refund settled; at most `--settle-timeout` s): every acknowledged charge
paid its order or is money to return; every refund owed exists once at the provider;
the payment side's programs still run; stockcore.invariant_violations() over the database; every acknowledged
operation found with its acknowledged outcome (holds with their lines, commits,
releases, orders, payments, cancellations); and the gate never refusing what PostgreSQL
would accept (the mirror's levels, which the gate admits against, equal PostgreSQL's for
every SKU). It prints the seed, the schedule, and what each fault cost in failed and
delayed (> 1 s) operations; the exit code is non-zero if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as inv
from stockcore.v1 import inventory_pb2_grpc as inv_grpc
from stockcore.v1 import orders_pb2 as ords
from stockcore.v1 import orders_pb2_grpc as ords_grpc

from clients.errors import from_rpc_error
from devstack.servers import LocalPostgres, LocalRedis, LocalStockcore
from loadtests import invariants, report
from loadtests.arguments import positive_float, positive_int
from loadtests.driver import percentile, run_on_uvloop
from loadtests.locust.shop import CURRENCY, unit_price_minor
from loadtests.money_checks import charges_unaccounted, refunds_at_provider, settle
from loadtests.payment_programs import PaymentPrograms
from loadtests.stack import LOAD_RECONCILER, PLAINTEXT_ENV, payment_side
from runtime.processes import descendants, free_port

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 16
_CALLER = (("stockcore-caller", "loadtests-chaos"),)
_TTL = duration_pb2.Duration(seconds=600)
# Retried with the same id: the call did not get a definite answer.
RETRY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}
FAULTS = (
    "kill-redis",
    "kill-postgres",
    "kill-worker",
    "stop-redis",
    "stop-postgres",
    "stop-worker",
    "slow-postgres",
    "restart-redis",
    "kill-reconciler",
    "kill-receiver",
    "kill-refund-sender",
)
# The payment side's programs each struck with kill -9, then started again.
KILLED_PROGRAM = {
    "kill-reconciler": "payments-reconciler",
    "kill-receiver": "payments-receiver",
    "kill-refund-sender": "refund-sender",
}
DELAYED_S = 1.0
SCARCE_UNITS = 60
_PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
# How long a shopper who paid at the provider waits for the order to be PAID before
# cancelling it: past the reconciler's grace, which pays it when the webhook never came.
_PAID_WAIT_S = LOAD_RECONCILER.grace_s + 20.0


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    seconds: float
    pick: int  # which worker, for worker faults


def schedule(seed: int, duration: float, gap: float, forced: Sequence[str] = ()) -> list[Fault]:
    """The faults of a run: every kind once in a seeded order (the kinds `forced`, in their
    order, instead when given), then seeded extras, one every `gap` seconds (+-30 %), from
    10 s in until 20 s before the end."""
    rng = random.Random(seed)
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    if forced:
        kinds = list(forced)
    faults: list[Fault] = []
    at = 10.0
    while at < duration - 20:
        kind = kinds.pop(0) if kinds else rng.choice(FAULTS)
        faults.append(Fault(round(at, 1), kind, round(rng.uniform(1.0, 4.0), 1), rng.randrange(2)))
        at += gap * rng.uniform(0.7, 1.3)
    return faults


@dataclass
class Op:
    kind: str
    started: float
    ended: float = 0.0
    attempts: int = 0
    outcome: str = ""  # ok | refused (a definite no) | failed (no definite answer)
    codes: Counter[str] = field(default_factory=Counter)


@dataclass
class Seen:
    """What the callers were told, to find again at the end."""

    holds: dict[str, dict[str, int]] = field(default_factory=dict)
    committed: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)
    orders: set[str] = field(default_factory=set)
    paid: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    charged: dict[str, str] = field(default_factory=dict)
    """Orders charged at the provider, with the charge id it acknowledged."""
    refunded: set[str] = field(default_factory=set)
    """Orders paid at the provider whose cancellation (a refund owed) was acknowledged."""


class Load:
    def __init__(self, target: str, skus: list[str], budget: float, provider_url: str) -> None:
        self._target = target
        self._provider = provider_url
        self._http = aiohttp.ClientSession(timeout=_PROVIDER_TIMEOUT)
        self._channels: list[grpc.aio.Channel] = []
        self._retired: list[grpc.aio.Channel] = []
        self._connect()
        self._skus = skus
        self._budget = budget
        self._ids = itertools.count()
        self._prefix = f"ch{random.getrandbits(20):x}-"
        self.ops: list[Op] = []
        self.seen = Seen()
        self.stopping = False

    def _connect(self) -> None:
        # Connections of their own, so the kernel spreads them over both workers.
        self._retired.extend(self._channels)
        self._channels = [
            grpc.aio.insecure_channel(self._target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(8)
        ]
        self._inv = [inv_grpc.InventoryServiceStub(c) for c in self._channels]
        self._ords = [ords_grpc.OrderServiceStub(c) for c in self._channels]

    async def reconnect_every(self, seconds: float) -> None:
        """Open new connections now and then, as clients behind a pool or a balancer
        do: after a worker was replaced, connections reach it again."""
        while not self.stopping:
            await asyncio.sleep(seconds)
            retiring = list(self._retired)
            self._retired.clear()
            self._connect()
            for channel in retiring:  # idle for a whole period by now
                await channel.close()

    async def close(self) -> None:
        for channel in self._channels + self._retired:
            await channel.close()
        await self._http.close()

    async def _call(self, kind: str, send) -> tuple[str, object]:
        op = Op(kind, time.monotonic())
        self.ops.append(op)
        deadline = op.started + self._budget
        delay = 0.05
        while True:
            op.attempts += 1
            try:
                reply = await send(2.0)
            except grpc.aio.AioRpcError as exc:
                op.codes[exc.code().name] += 1
                if exc.code() not in RETRY:
                    op.outcome, op.ended = "refused", time.monotonic()
                    return "refused", exc.code()
                if time.monotonic() + delay > deadline:
                    op.outcome, op.ended = "failed", time.monotonic()
                    return "failed", exc.code()
                await asyncio.sleep(max(delay, from_rpc_error(exc).retry_delay or 0.0))
                delay = min(delay * 2, 1.0)
            else:
                op.outcome, op.ended = "ok", time.monotonic()
                return "ok", reply

    async def caller(self, index: int) -> None:
        rng = random.Random(index)
        while not self.stopping:
            stub_inv = self._inv[index % len(self._inv)]
            stub_ords = self._ords[index % len(self._ords)]
            n = next(self._ids)
            lines = {sku: rng.randint(1, 2) for sku in rng.sample(self._skus, rng.randint(1, 2))}
            if rng.random() < 0.5:
                await self._hold(stub_inv, f"{self._prefix}r{n}", lines, rng)
            else:
                await self._buy(stub_ords, f"{self._prefix}o{n}", f"c{n % 300}", lines, rng)

    async def _hold(self, stub, rid: str, lines: dict[str, int], rng: random.Random) -> None:
        request = inv.ReserveRequest(
            reservation_id=rid,
            lines=[inv.Line(sku=s, quantity=q) for s, q in lines.items()],
            ttl=_TTL,
        )
        got, _ = await self._call(
            "Reserve", lambda t: stub.Reserve(request, timeout=t, metadata=_CALLER)
        )
        if got != "ok":
            return
        self.seen.holds[rid] = lines
        if rng.random() < 0.6:
            got, _ = await self._call(
                "Commit",
                lambda t: stub.Commit(
                    inv.CommitRequest(reservation_id=rid), timeout=t, metadata=_CALLER
                ),
            )
            if got == "ok":
                self.seen.committed.add(rid)
        else:
            got, _ = await self._call(
                "Release",
                lambda t: stub.Release(
                    inv.ReleaseRequest(reservation_id=rid), timeout=t, metadata=_CALLER
                ),
            )
            if got == "ok":
                self.seen.released.add(rid)

    async def _buy(
        self, stub, oid: str, customer: str, lines: dict[str, int], rng: random.Random
    ) -> None:
        request = ords.CreateOrderRequest(
            order_id=oid,
            customer_id=customer,
            lines=[
                ords.OrderLine(sku=s, quantity=q, unit_price_minor=unit_price_minor(s))
                for s, q in lines.items()
            ],
            currency_code=CURRENCY,
            payment_window=_TTL,
        )
        got, reply = await self._call(
            "CreateOrder", lambda t: stub.CreateOrder(request, timeout=t, metadata=_CALLER)
        )
        if got != "ok":
            return
        self.seen.orders.add(oid)
        total = reply.order.total_minor  # type: ignore[attr-defined]
        roll = rng.random()
        if roll < 0.35:
            await self._pay_at_provider(stub, oid, customer, total, rng)
        elif roll < 0.7:
            pay = ords.ConfirmPaymentRequest(
                order_id=oid,
                payment_id=f"pay-{oid}",
                amount_minor=total,
                currency_code=CURRENCY,
            )
            got, _ = await self._call(
                "ConfirmPayment", lambda t: stub.ConfirmPayment(pay, timeout=t, metadata=_CALLER)
            )
            if got == "ok":
                self.seen.paid.add(oid)
        else:
            cancel = ords.CancelOrderRequest(order_id=oid, reason="changed my mind")
            got, _ = await self._call(
                "CancelOrder", lambda t: stub.CancelOrder(cancel, timeout=t, metadata=_CALLER)
            )
            if got == "ok":
                self.seen.cancelled.add(oid)

    async def _pay_at_provider(
        self, stub, oid: str, customer: str, total: int, rng: random.Random
    ) -> None:
        """The shopper pays the provider (its webhook makes the receiver confirm the
        payment); three in ten cancel once the order is paid, which owes a refund."""
        body = {"order_id": oid, "customer_id": customer, "amount": total, "currency": CURRENCY}
        charge_id = await self._charge(oid, body)
        if charge_id is None:
            return
        self.seen.charged[oid] = charge_id
        if rng.random() >= 0.3 or not await self._until_paid(oid):
            return
        # The connections of a moment ago may be closed by now (reconnect_every).
        stub = self._ords[rng.randrange(len(self._ords))]
        cancel = ords.CancelOrderRequest(order_id=oid, reason="a refund, please")
        got, _ = await self._call(
            "CancelPaid", lambda t: stub.CancelOrder(cancel, timeout=t, metadata=_CALLER)
        )
        if got == "ok":
            self.seen.cancelled.add(oid)
            self.seen.refunded.add(oid)

    async def _charge(self, oid: str, body: dict[str, object]) -> str | None:
        """POST /v1/charges, retried with its Idempotency-Key until a definite answer or the
        budget ran out; the charge id when captured."""
        op = Op("Charge", time.monotonic())
        self.ops.append(op)
        deadline = op.started + self._budget
        delay = 0.05
        url = f"{self._provider}/v1/charges"
        headers = {"Idempotency-Key": f"chaos:{oid}"}
        while True:
            op.attempts += 1
            try:
                async with self._http.post(url, json=body, headers=headers) as answer:
                    status = answer.status
                    charge: Any = await answer.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                op.codes[type(exc).__name__] += 1
            else:
                if status == 200:
                    op.outcome, op.ended = "ok", time.monotonic()
                    return str(charge["id"])
                op.codes[f"HTTP {status}"] += 1
                if status < 500:
                    op.outcome, op.ended = "refused", time.monotonic()
                    return None
            if time.monotonic() + delay > deadline:
                op.outcome, op.ended = "failed", time.monotonic()
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _until_paid(self, oid: str) -> bool:
        """Whether the order became PAID (by its webhook, or by the reconciler when the
        webhook never came) within _PAID_WAIT_S; polls that fail are waited through."""
        deadline = time.monotonic() + _PAID_WAIT_S
        while not self.stopping and time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                stub = self._ords[0]  # the current connections: a wait outlasts them
                o = (
                    await stub.GetOrder(
                        ords.GetOrderRequest(order_id=oid), timeout=2.0, metadata=_CALLER
                    )
                ).order
                if o.status == ords.ORDER_STATUS_PAID:
                    return True
                if o.status != ords.ORDER_STATUS_PENDING_PAYMENT:
                    return False
            await asyncio.sleep(0.5)
        return False


def _workers(server: LocalStockcore) -> list[int]:
    assert server.proc is not None
    pid = server.proc.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    found = []
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return sorted(found)


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    for target in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


class Striker:
    """Carries out faults on the stack."""

    def __init__(
        self,
        pg: LocalPostgres,
        redis: LocalRedis,
        server: LocalStockcore,
        programs: PaymentPrograms,
    ) -> None:
        self.pg, self.redis, self.server, self.programs = pg, redis, server, programs

    async def strike(self, fault: Fault) -> str:
        kind, seconds = fault.kind, fault.seconds
        if kind in KILLED_PROGRAM:
            name = KILLED_PROGRAM[kind]
            pid = self.programs.kill(name)
            await asyncio.sleep(seconds)
            self.programs.start(name)
            return f"{name} {pid} killed, started again {seconds:g} s later"
        if kind == "kill-redis":
            self.redis.kill()
            await asyncio.sleep(seconds)
            await self.redis.restart()
            return "Redis killed, started again from its append-only file"
        if kind == "kill-postgres":
            self.pg.kill()
            await asyncio.sleep(seconds)
            await self.pg.restart()
            return "PostgreSQL killed, crash recovery on restart"
        if kind == "restart-redis":
            await asyncio.to_thread(self.redis.stop)
            await self.redis.restart()
            return "Redis shut down cleanly and started again with its data"
        if kind in ("kill-worker", "stop-worker"):
            workers = _workers(self.server)
            if not workers:
                return "no worker found"
            victim = workers[fault.pick % len(workers)]
            if kind == "kill-worker":
                os.kill(victim, signal.SIGKILL)
                return f"worker {victim} killed (the server starts another)"
            return await self._pause(victim, seconds, f"worker {victim}")
        if kind == "stop-redis":
            assert self.redis.proc is not None
            return await self._pause(self.redis.proc.pid, seconds, "Redis")
        if kind == "stop-postgres":
            assert self.pg.proc is not None
            return await self._pause(self.pg.proc.pid, seconds, "PostgreSQL")
        if kind == "slow-postgres":
            conn = await asyncpg.connect(self.pg.dsn)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE stockcore.stock IN EXCLUSIVE MODE")
                    await asyncio.sleep(seconds)
            finally:
                await conn.close()
            return "PostgreSQL slow: every stock change waited on a table lock"
        raise ValueError(kind)

    async def _pause(self, pid: int, seconds: float, what: str) -> str:
        _signal_tree(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            _signal_tree(pid, signal.SIGCONT)
        return f"{what} frozen (SIGSTOP) then resumed"


@dataclass
class Struck:
    fault: Fault
    began: float
    ended: float
    what: str


def _cost(ops: list[Op], start: float, end: float) -> tuple[int, int, int, float]:
    """Operations in flight at any moment of [start, end) (begun before the fault
    included: those are the ones a fault catches): count, failed, delayed, p99 seconds."""
    window = [o for o in ops if o.ended and o.started < end and o.ended > start]
    took = sorted(o.ended - o.started for o in window)
    failed = sum(o.outcome == "failed" for o in window)
    delayed = sum(t > DELAYED_S for t in took)
    return len(window), failed, delayed, percentile(took, 99) if took else 0.0


async def _acknowledged(target: str, seen: Seen) -> list[str]:
    """Every acknowledged operation found with its acknowledged outcome; the mismatches."""
    wrong: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inv_grpc.InventoryServiceStub(channel)
        orders = ords_grpc.OrderServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def hold(rid: str, lines: dict[str, int]) -> None:
            async with gate:
                r = (
                    await stub.GetReservation(
                        inv.GetReservationRequest(reservation_id=rid), timeout=30
                    )
                ).reservation
            if {line.sku: line.quantity for line in r.lines} != lines:
                wrong.append(f"hold {rid}: lines {r.lines} != {lines}")
            if rid in seen.committed and r.status != inv.RESERVATION_STATUS_COMMITTED:
                wrong.append(f"hold {rid}: commit acknowledged, status {r.status}")
            if rid in seen.released and r.status not in (
                inv.RESERVATION_STATUS_RELEASED,
                inv.RESERVATION_STATUS_EXPIRED,
            ):
                wrong.append(f"hold {rid}: release acknowledged, status {r.status}")

        async def order(oid: str) -> None:
            async with gate:
                o = (await orders.GetOrder(ords.GetOrderRequest(order_id=oid), timeout=30)).order
            if oid in seen.paid and o.status in (
                ords.ORDER_STATUS_PENDING_PAYMENT,
                ords.ORDER_STATUS_CANCELLED,
            ):
                wrong.append(f"order {oid}: payment acknowledged, status {o.status}")
            if oid in seen.cancelled and o.status != ords.ORDER_STATUS_CANCELLED:
                wrong.append(f"order {oid}: cancellation acknowledged, status {o.status}")

        async def guarded(check) -> None:
            try:
                await check
            except grpc.aio.AioRpcError as exc:
                wrong.append(f"{exc.code().name}: {exc.details()}")

        await asyncio.gather(
            *(guarded(hold(rid, lines)) for rid, lines in seen.holds.items()),
            *(guarded(order(oid)) for oid in seen.orders),
        )
    return wrong


async def _gate_agrees(target: str, skus: list[str], timeout: float = 30.0) -> list[str]:
    """SKUs whose mirrored level (what the gate admits against) differs from
    PostgreSQL's once pending holds settled; empty when the gate is true everywhere."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inv_grpc.InventoryServiceStub(channel)
        while True:
            mirror = await stub.GetStock(inv.GetStockRequest(skus=skus), timeout=10)
            strong = await stub.GetStock(
                inv.GetStockRequest(skus=skus, consistency=inv.CONSISTENCY_STRONG), timeout=10
            )
            differ = [
                f"{a.sku}: mirror {a.on_hand}/{a.reserved}, PostgreSQL {b.on_hand}/{b.reserved}"
                for a, b in zip(mirror.levels, strong.levels, strict=True)
                if (a.on_hand, a.reserved) != (b.on_hand, b.reserved)
            ]
            if not differ or time.monotonic() > deadline:
                return differ
            await asyncio.sleep(0.5)


async def run_chaos(args: argparse.Namespace, run: report.Run, stack) -> None:
    pg, redis, server, programs, provider_url = stack
    skus = [f"CH-{i:03d}" for i in range(args.skus)]
    scarce = set(skus[:10])
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = inv_grpc.InventoryServiceStub(channel)
        for sku in skus:
            await stub.AdjustStock(
                inv.AdjustStockRequest(
                    sku=sku,
                    on_hand=SCARCE_UNITS if sku in scarce else 1_000_000,
                    reason="chaos stock",
                    idempotency_key=f"chaos-{sku}",
                ),
                timeout=30,
            )
    faults = schedule(args.seed, args.duration, args.gap, args.faults)
    run.say(
        "# Chaos: faults under mixed load",
        "",
        f"- command: `{' '.join(sys.argv[1:]) or '(defaults)'}` (python -m loadtests.chaos)",
        f"- **seed {args.seed}** (replay: `make chaos SEED={args.seed} DURATION={args.duration:g}`)",
        f"- machine: {report.describe_machine()}",
        f"- {args.callers} callers: half Reserve then Commit (60 %) or Release; half "
        f"CreateOrder then a charge at the payment provider (35 %: its webhook pays the order;"
        f" 30 % of those cancelled once paid, a refund), ConfirmPayment (35 %) or CancelOrder;"
        f" {args.skus} SKUs, 10 scarce "
        f"({SCARCE_UNITS} units: they sell out); every call retried with its id for up to {args.budget:g} s",
        "- the server runs 2 workers; Redis keeps an append-only file; the callers open "
        "new connections every 10 s, as pooled clients do",
        "- beside them the simulated payment provider (no faults of its own), the webhook "
        f"receiver, the refund sender and the reconciler (grace {LOAD_RECONCILER.grace_s:g} s)"
        + (f"; faults forced: {', '.join(args.faults)}" if args.faults else ""),
        "",
        "## Schedule",
        "",
        *report.table(
            ["at s", "fault", "seconds"],
            [[f"{f.at:g}", f.kind, f"{f.seconds:g}"] for f in faults],
        ),
        "",
    )
    load = Load(server.target, skus, args.budget, provider_url)
    striker = Striker(pg, redis, server, programs)
    struck: list[Struck] = []
    t0 = time.monotonic()
    callers = [asyncio.create_task(load.caller(i)) for i in range(args.callers)]
    reconnecting = asyncio.create_task(load.reconnect_every(10.0))
    try:
        for fault in faults:
            await asyncio.sleep(max(0.0, t0 + fault.at - time.monotonic()))
            began = time.monotonic()
            what = await striker.strike(fault)
            struck.append(Struck(fault, began, time.monotonic(), what))
            print(f"  {began - t0:6.1f} s  {fault.kind}: {what}", flush=True)
        await asyncio.sleep(max(0.0, t0 + args.duration - time.monotonic()))
    finally:
        load.stopping = True
        reconnecting.cancel()
        await asyncio.gather(*callers)
        await load.close()
    ended = time.monotonic()

    rows = []
    for s in struck:
        n, failed, delayed, p99 = _cost(load.ops, s.began, s.ended + 5.0)
        rows.append(
            [
                f"{s.began - t0:.1f}",
                s.fault.kind,
                f"{s.ended - s.began:.1f}",
                n,
                failed,
                delayed,
                f"{p99 * 1000:,.0f}",
                s.what,
            ]
        )
    quiet = [
        o
        for o in load.ops
        if o.ended and not any(o.started < s.ended + 5 and o.ended > s.began for s in struck)
    ]
    quiet_took = sorted(o.ended - o.started for o in quiet)
    outcomes = Counter(o.outcome for o in load.ops if o.ended)
    codes: Counter[str] = Counter()
    for o in load.ops:
        codes.update(o.codes)
    run.say(
        "## What each fault cost",
        "",
        "Operations in flight at any moment from the fault's start until 5 s after it ended",
        "(including those it caught under way); *failed*: no",
        f"definite answer within {args.budget:g} s of retries; *delayed*: answered after more",
        f"than {DELAYED_S:g} s (retries included).",
        "",
        *report.table(
            ["at s", "fault", "lasted s", "operations", "failed", "delayed", "p99 ms", "what"],
            rows,
        ),
        "",
        f"- outside the faults' windows: {len(quiet):,} operations, p99 "
        f"{percentile(quiet_took, 99) * 1000 if quiet_took else 0:,.0f} ms, "
        f"{sum(o.outcome == 'failed' for o in quiet)} failed",
        f"- all: {sum(outcomes.values()):,} operations in {ended - t0:.0f} s "
        f"({dict(outcomes)}); answers other than OK seen: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(codes.items())) or "none"),
        f"- acknowledged: {len(load.seen.holds):,} holds ({len(load.seen.committed):,} "
        f"committed, {len(load.seen.released):,} released), {len(load.seen.orders):,} orders "
        f"({len(load.seen.paid):,} paid by ConfirmPayment, {len(load.seen.charged):,} "
        f"charged at the provider, {len(load.seen.cancelled):,} cancelled of which "
        f"{len(load.seen.refunded):,} once paid)",
        "",
        "## Checks",
        "",
    )
    settled = await settle(pg.dsn, args.settle_timeout)
    found = settled.found
    run.say(
        f"- reconciliation: waited {settled.waited_s:.1f} s after the load for every payment,"
        f" charge to return and refund to be stated and every refund settled (at most"
        f" {args.settle_timeout:g} s); open exceptions: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(found.open_exceptions.items())) or "none")
        + " (ConfirmPayment's payments are no charge of the provider's: MISSING_AT_PROVIDER)",
        f"- refunds by state: {settled.refund_states or 'none'}",
        "",
    )
    run.check(
        settled.ok,
        f"reconciliation settled: {len(found.subjects) - found.unstated:,} of"
        f" {len(found.subjects):,} subjects stated, {settled.unsettled_refunds} refunds"
        " not settled",
    )
    sql = await invariants.check_via_sql(pg.dsn)
    run.check(sql.ok, f"stockcore.invariant_violations(): {sql.describe()}")
    lost = await charges_unaccounted(pg.dsn, load.seen.charged)
    run.check(
        not lost,
        f"every acknowledged charge ({len(load.seen.charged):,}) paid its order or is money"
        " to return" + (f": {len(lost)} neither, e.g. {lost[:3]}" if lost else ""),
    )
    refunds = await refunds_at_provider(pg.dsn, provider_url, load.seen.refunded)
    run.check(
        not refunds.wrong,
        f"every refund owed exists once at the provider: {refunds.checked:,} refunds of"
        f" {refunds.charges:,} charges, each found by its id with its charge and amount, and"
        " each charge's amount refunded the sum of ours"
        + (f"; {len(refunds.wrong)} not, e.g. {refunds.wrong[:3]}" if refunds.wrong else ""),
    )
    exited = programs.exited()
    run.check(
        not exited,
        "the payment side's programs still run (those killed were started again)"
        + (f"; ended by themselves: {exited}" if exited else ""),
    )
    wrong = await _acknowledged(server.target, load.seen)
    run.check(
        not wrong,
        "every acknowledged operation found with its acknowledged outcome"
        + (f": {len(wrong)} not, e.g. {wrong[:3]}" if wrong else ""),
    )
    differ = await _gate_agrees(server.target, skus)
    run.check(
        not differ,
        f"the gate never refuses what PostgreSQL would accept: the mirror equals PostgreSQL "
        f"on all {len(skus)} SKUs" + (f"; differs: {differ[:3]}" if differ else ""),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make chaos`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=None, help="random unless given")
    parser.add_argument("--duration", type=positive_float, default=180.0, help="seconds of load")
    parser.add_argument("--gap", type=positive_float, default=12.0, help="seconds between faults")
    parser.add_argument("--callers", type=positive_int, default=32)
    parser.add_argument("--skus", type=positive_int, default=100)
    parser.add_argument(
        "--budget", type=positive_float, default=60.0, help="seconds of retries per call"
    )
    parser.add_argument(
        "--faults",
        type=_fault_kinds,
        default=(),
        help=f"comma-separated kinds struck first, in this order (of {', '.join(FAULTS)});"
        " default: every kind once in a seeded order",
    )
    parser.add_argument(
        "--settle-timeout",
        type=positive_float,
        default=120.0,
        help="seconds to wait after the load for reconciliation to settle",
    )
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    return parser.parse_args(argv)


def _fault_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"not fault kinds: {unknown or text!r}")
    return kinds


def main() -> None:
    """Entry point of `make chaos`."""
    args = parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 100_000)
    run = report.Run("chaos", Path(args.reports))
    data = (ROOT / ".data" / "chaos").resolve()
    shutil.rmtree(data, ignore_errors=True)
    pg = LocalPostgres(data / "pg", free_port())
    redis = LocalRedis(data / "redis", free_port(), persistent=True)
    pg.start()
    redis.start()
    server = LocalStockcore(
        pg.dsn,
        redis.url,
        SHARDS,
        data,
        STOCKCORE_WORKERS="2",
        STOCKCORE_DEMO_CATALOGUE="false",
        **PLAINTEXT_ENV,
    )
    try:
        asyncio.run(server.start(timeout=120.0))
        side = payment_side(pg.dsn, server.target, data, LOAD_RECONCILER)
        with PaymentPrograms(side, data / "logs") as programs:
            side.wait_answering()
            run_on_uvloop(run_chaos(args, run, (pg, redis, server, programs, side.provider_url)))
    finally:
        server.stop()
        redis.stop()
        pg.stop()
    raise SystemExit(run.finish())


if __name__ == "__main__":
    main()
