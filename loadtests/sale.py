"""The hot-SKU sale of `make bench`: buyers of a few SKUs, one unit per purchase, until every
SKU is sold out, as closed-loop ops of the load driver (loadtests/driver.py).

Three kinds of buyer, one per way the purchase runs:

- `StockcoreBuyers`: Reserve, then Commit, on stockcore's InventoryService (two calls);
- `EdgeBuyers`: one call of the classic gRPC edge (loadtests/edge.py), which buys by a
  classic design in PostgreSQL;
- `StraightBuyers`: one classic purchase straight at PostgreSQL (one statement or
  transaction, no gRPC).

A SKU some buyer found sold out is no longer offered; once none is, the op sets `exhausted`
and the driver ends the loop. Outcome labels: SOLD, SOLD_OUT.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Sequence

import asyncpg
import grpc
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from loadtests import classic, edge

SOLD = "sold"
"""Outcome label of a purchase that went through."""

SOLD_OUT = "sold out"
"""Outcome label of a purchase refused for lack of stock."""

_TIMEOUT = 10.0
_CALLER = (("stockcore-caller", "loadtests-sale"),)


class _Offer:
    """The SKUs still on offer; a SKU found sold out is withdrawn."""

    def __init__(self, skus: Sequence[str]) -> None:
        self._offered = list(skus)
        self.exhausted = asyncio.Event()
        """Set once every SKU was found sold out."""

    def pick(self) -> str | None:
        """A SKU still on offer, or None when the sale is over."""
        return random.choice(self._offered) if self._offered else None

    def sold_out(self, sku: str) -> str:
        """Withdraw `sku`; the outcome label."""
        if sku in self._offered:
            self._offered.remove(sku)
            if not self._offered:
                self.exhausted.set()
        return SOLD_OUT


class StockcoreBuyers(_Offer):
    """Reserve one unit, then Commit it: a purchase is two calls to stockcore."""

    def __init__(self, channel: grpc.aio.Channel, skus: Sequence[str]) -> None:
        """Buy `skus` over `channel`."""
        super().__init__(skus)
        self._channel = channel
        self._stub = pb_grpc.InventoryServiceStub(channel)
        self._ids = itertools.count()
        self._prefix = f"sale-{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> str:
        """One purchase."""
        sku = self.pick()
        if sku is None:
            return SOLD_OUT
        rid = f"{self._prefix}{next(self._ids)}"
        try:
            await self._stub.Reserve(
                pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, quantity=1)]),
                timeout=_TIMEOUT,
                metadata=_CALLER,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            return self.sold_out(sku)
        await self._stub.Commit(
            pb.CommitRequest(reservation_id=rid), timeout=_TIMEOUT, metadata=_CALLER
        )
        return SOLD

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


class EdgeBuyers(_Offer):
    """One call of the classic gRPC edge per purchase."""

    def __init__(self, channel: grpc.aio.Channel, skus: Sequence[str]) -> None:
        """Buy `skus` from the edge server behind `channel`."""
        super().__init__(skus)
        self._channel = channel
        self._buy = channel.unary_unary(edge.BUY, None, None)

    async def __call__(self, worker: int) -> str:
        """One purchase."""
        sku = self.pick()
        if sku is None:
            return SOLD_OUT
        answer = await self._buy(sku.encode(), timeout=_TIMEOUT)
        return SOLD if answer == edge.SOLD else self.sold_out(sku)

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


class StraightBuyers(_Offer):
    """One classic purchase straight at PostgreSQL, one connection per buyer."""

    def __init__(self, pool: asyncpg.Pool, design: classic.Design, skus: Sequence[str]) -> None:
        """Buy `skus` by `design` over `pool`."""
        super().__init__(skus)
        self._pool = pool
        self._design = design

    async def __call__(self, worker: int) -> str:
        """One purchase."""
        sku = self.pick()
        if sku is None:
            return SOLD_OUT
        return SOLD if await classic.buy(self._pool, self._design, sku) else self.sold_out(sku)

    async def aclose(self) -> None:
        """Close the pool."""
        await self._pool.close()


async def open_stockcore(target: str, skus: Sequence[str]) -> StockcoreBuyers:
    """Op factory: stockcore's buyers (module level, so a load process can build it)."""
    return StockcoreBuyers(grpc.aio.insecure_channel(target), skus)


async def open_edge(target: str, skus: Sequence[str]) -> EdgeBuyers:
    """Op factory: the classic gRPC edge's buyers."""
    return EdgeBuyers(grpc.aio.insecure_channel(target), skus)


async def open_straight(
    dsn: str, design: classic.Design, skus: Sequence[str], buyers: int
) -> StraightBuyers:
    """Op factory: buyers straight at PostgreSQL."""
    # One connection per buyer: waiting for a connection is not what is being measured.
    pool = await asyncpg.create_pool(dsn, min_size=buyers, max_size=buyers)
    return StraightBuyers(pool, design, skus)
