"""The two classic stock designs, one purchase at a time in PostgreSQL.

`select-check-update` reads the stock, checks it in the application and writes back the value
it computed, each statement on its own: concurrent buyers overwrite each other and sell more
than there is. `select-for-update` locks the row for the whole purchase: it never oversells,
but every buyer of a SKU waits in line for that row. The hot-SKU sale of `make bench`
(loadtests/sale.py) runs both straight at PostgreSQL and behind a gRPC edge
(loadtests/edge.py), beside stockcore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import asyncpg

Design = Literal["select-check-update", "select-for-update"]
"""Which classic design to run."""

DESIGNS: tuple[Design, ...] = get_args(Design)
"""Every classic design."""

SCHEMA = "classic"
"""The schema holding the classic tables, apart from stockcore's own."""

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


def design(name: str) -> Design:
    """`name` as a Design, or ValueError."""
    for known in DESIGNS:
        if known == name:
            return known
    raise ValueError(f"unknown design {name!r}; known: {', '.join(DESIGNS)}")


async def reset(conn: asyncpg.Connection, skus: Sequence[str], units_per_sku: int) -> None:
    """Recreate the classic tables with `units_per_sku` of each SKU and no sales."""
    if not skus or units_per_sku < 1:
        raise ValueError("need at least one SKU with at least one unit")
    await conn.execute(_RESET)
    await conn.execute(_SEED, list(skus), units_per_sku)


async def buy(pool: asyncpg.Pool, chosen: Design, sku: str) -> bool:
    """One purchase of one unit of `sku`; False when the design found it sold out."""
    async with pool.acquire() as conn:
        if chosen == "select-check-update":
            stock = await conn.fetchval(_READ, sku)
            if stock < _QUANTITY:
                return False
            await conn.execute(_WRITE_COMPUTED, sku, stock - _QUANTITY)
            await conn.execute(_RECORD_SALE, sku)
            return True
        async with conn.transaction():
            stock = await conn.fetchval(_READ_LOCKED, sku)
            if stock < _QUANTITY:
                return False
            await conn.execute(_DECREMENT, sku, _QUANTITY)
            await conn.execute(_RECORD_SALE, sku)
            return True


@dataclass(frozen=True)
class Tally:
    """What a classic sale left behind."""

    sold: int
    """Sale rows, including those of purchases still in flight when the run ended."""
    oversold: int
    """Sales beyond a SKU's initial stock, summed over SKUs."""
    remaining: int
    """The stock column summed over SKUs."""


async def tally(conn: asyncpg.Connection, units_per_sku: int) -> Tally:
    """Count the sales against the stock each SKU started with."""
    row = await conn.fetchrow(_TALLY, units_per_sku)
    assert row is not None
    sold, oversold, remaining = row
    return Tally(int(sold), int(oversold), int(remaining))
