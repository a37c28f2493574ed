"""The two classic stock designs, run under hot-SKU contention on the same PostgreSQL.

`select-check-update` reads the stock, checks it in the application and writes back the value
it computed, each statement on its own: concurrent buyers overwrite each other and sell more
than there is. `select-for-update` locks the row for the whole purchase: it never oversells,
but every buyer of a SKU waits in line for that row.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import asyncpg

from loadtests.driver import RunResult, run_closed_loop

Design = Literal["select-check-update", "select-for-update"]
"""Which classic design to run."""

SCHEMA = "classic"
"""The schema holding the classic tables, apart from stockcore's own."""

SOLD = "sold"
"""Outcome label of a purchase that went through."""

REJECTED = "rejected"
"""Outcome label of a purchase refused for lack of stock."""

_QUANTITY = 1

_RESET = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
DROP TABLE IF EXISTS {SCHEMA}.classic_sales, {SCHEMA}.classic_stock;
CREATE TABLE {SCHEMA}.classic_stock (sku text PRIMARY KEY, stock integer NOT NULL);
CREATE TABLE {SCHEMA}.classic_sales (
    id bigserial PRIMARY KEY,
    sku text NOT NULL,
    sold_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""
_SEED = f"INSERT INTO {SCHEMA}.classic_stock (sku, stock) SELECT unnest($1::text[]), $2"
_READ = f"SELECT stock FROM {SCHEMA}.classic_stock WHERE sku = $1"
_READ_LOCKED = f"SELECT stock FROM {SCHEMA}.classic_stock WHERE sku = $1 FOR UPDATE"
_WRITE_COMPUTED = f"UPDATE {SCHEMA}.classic_stock SET stock = $2 WHERE sku = $1"
_DECREMENT = f"UPDATE {SCHEMA}.classic_stock SET stock = stock - $2 WHERE sku = $1"
_RECORD_SALE = f"INSERT INTO {SCHEMA}.classic_sales (sku) VALUES ($1)"
_TALLY = f"""
SELECT
    coalesce(sum(sold), 0)::bigint,
    coalesce(sum(greatest(sold - $1, 0)), 0)::bigint,
    (SELECT coalesce(sum(stock), 0)::bigint FROM {SCHEMA}.classic_stock)
FROM (SELECT count(*) AS sold FROM {SCHEMA}.classic_sales GROUP BY sku) AS per_sku
"""


@dataclass(frozen=True)
class ClassicResult:
    """How a classic design fared: attempt rate and latency, units sold, and units oversold."""

    design: Design
    concurrency: int
    attempts_per_s: float
    attempts: int
    p50_ms: float
    p99_ms: float
    sold: int
    """Sale rows, including those of purchases still in flight when the run ended."""
    oversold: int
    """Sales beyond a SKU's initial stock, summed over SKUs."""
    initial_stock: int
    remaining_stock: int
    """The stock column summed over SKUs after the run."""
    sold_out: bool
    elapsed_s: float
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def lost_updates(self) -> int:
        """Sales the stock column never saw: overwritten decrements, visible before selling out."""
        return self.sold - (self.initial_stock - self.remaining_stock)

    def summary(self) -> str:
        """One line for a terminal or a log."""
        outcomes = ", ".join(f"{label}={n}" for label, n in sorted(self.outcomes.items()))
        return (
            f"{self.design}: {self.attempts_per_s:,.0f} attempts/s  n={self.attempts}  "
            f"p50={self.p50_ms:.2f}ms  p99={self.p99_ms:.2f}ms  sold={self.sold}/"
            f"{self.initial_stock}  oversold={self.oversold}  lost_updates={self.lost_updates}  "
            f"{'sold out' if self.sold_out else 'not sold out'} after {self.elapsed_s:.2f}s  "
            f"[{outcomes}]"
        )


class _Storefront:
    """Buyers of the hot SKUs; a SKU some buyer found empty is no longer offered."""

    def __init__(self, pool: asyncpg.Pool, design: Design, skus: Sequence[str]) -> None:
        self._pool = pool
        self._offered = list(skus)
        self.sold_out = asyncio.Event()
        self.buy = self._buy_unlocked if design == "select-check-update" else self._buy_locked

    def _found_empty(self, sku: str) -> str:
        if sku in self._offered:
            self._offered.remove(sku)
            if not self._offered:
                self.sold_out.set()
        return REJECTED

    async def _buy_unlocked(self, worker: int) -> str:
        sku = random.choice(self._offered)
        async with self._pool.acquire() as conn:
            stock = await conn.fetchval(_READ, sku)
            if stock < _QUANTITY:
                return self._found_empty(sku)
            await conn.execute(_WRITE_COMPUTED, sku, stock - _QUANTITY)
            await conn.execute(_RECORD_SALE, sku)
        return SOLD

    async def _buy_locked(self, worker: int) -> str:
        sku = random.choice(self._offered)
        async with self._pool.acquire() as conn, conn.transaction():
            stock = await conn.fetchval(_READ_LOCKED, sku)
            if stock < _QUANTITY:
                return self._found_empty(sku)
            await conn.execute(_DECREMENT, sku, _QUANTITY)
            await conn.execute(_RECORD_SALE, sku)
        return SOLD


async def run_classic(
    dsn: str,
    design: Design,
    *,
    concurrency: int,
    duration: float,
    hot_skus: int,
    stock_per_sku: int,
) -> ClassicResult:
    """Reset the classic tables, let `concurrency` buyers compete for the hot SKUs, tally sales.

    Buyers buy one unit of a random SKU still on offer until `duration` seconds pass or every
    SKU has been found empty. There is no warm-up: the stock is finite and would be spent.
    """
    if design not in get_args(Design):
        raise ValueError(f"unknown design {design!r}")
    if hot_skus < 1 or stock_per_sku < 1:
        raise ValueError("need at least one hot SKU with at least one unit")
    # One connection per buyer: waiting for a connection is not what is being measured.
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        async with pool.acquire() as conn:
            await conn.execute(_RESET)
            skus = [f"hot-{n}" for n in range(hot_skus)]
            await conn.execute(_SEED, skus, stock_per_sku)
        storefront = _Storefront(pool, design, skus)
        run: RunResult = await run_closed_loop(
            storefront.buy,
            concurrency=concurrency,
            duration=duration,
            warmup=0.0,
            stop=storefront.sold_out,
        )
        async with pool.acquire() as conn:
            sold, oversold, remaining = await conn.fetchrow(_TALLY, stock_per_sku)
    finally:
        await pool.close()
    return ClassicResult(
        design=design,
        concurrency=concurrency,
        attempts_per_s=run.ops_per_s,
        attempts=run.count,
        p50_ms=run.p50_ms,
        p99_ms=run.p99_ms,
        sold=int(sold),
        oversold=int(oversold),
        initial_stock=hot_skus * stock_per_sku,
        remaining_stock=int(remaining),
        sold_out=storefront.sold_out.is_set(),
        elapsed_s=run.window_s,
        outcomes=run.outcomes,
    )


def main() -> None:
    """Run one classic design against the PostgreSQL named by --dsn and print the result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--design", choices=get_args(Design), required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--hot-skus", type=int, default=4)
    parser.add_argument("--stock-per-sku", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(
        run_classic(
            args.dsn,
            args.design,
            concurrency=args.concurrency,
            duration=args.duration,
            hot_skus=args.hot_skus,
            stock_per_sku=args.stock_per_sku,
        )
    )
    print(result.summary())


if __name__ == "__main__":
    main()
