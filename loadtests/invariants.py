"""What must hold on the server after a load run: the stock read through the API, and,
when the DSN is known, stockcore.invariant_violations() (server/storage/sql/live/invariants.sql,
the one invariant check the test suite asserts too) with a few figures of the same snapshot.
Nothing here writes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from loadtests.report import Run
from loadtests.stack import read_stock


@dataclass(frozen=True)
class ApiCheck:
    """The catalogue's stock as GetStock reports it."""

    skus: int
    on_hand: int
    reserved: int
    negative_on_hand: int
    over_reserved: int
    """SKUs with reserved > on_hand (or a negative available)."""

    @property
    def ok(self) -> bool:
        """No SKU oversold."""
        return self.negative_on_hand == 0 and self.over_reserved == 0


async def check_via_api(target: str, skus: Sequence[str]) -> ApiCheck:
    """Read every SKU of the catalogue through GetStock."""
    levels = await read_stock(target, skus)
    return ApiCheck(
        skus=len(levels),
        on_hand=sum(level.on_hand for level in levels),
        reserved=sum(level.reserved for level in levels),
        negative_on_hand=sum(level.on_hand < 0 for level in levels),
        over_reserved=sum(
            level.reserved > level.on_hand or level.available < 0 for level in levels
        ),
    )


@dataclass(frozen=True)
class SqlCheck:
    """The invariants over the whole database, and what commits took from the SKUs asked about."""

    skus: int
    orders: int
    violations: list[tuple[str, str, str]]
    """(check, subject, detail) rows of stockcore.invariant_violations()."""
    committed_units: dict[str, int] = field(default_factory=dict)
    """Units deducted by commits, for the SKUs asked about."""

    @property
    def ok(self) -> bool:
        """Every invariant holds."""
        return not self.violations

    def describe(self, shown: int = 10) -> str:
        """One line: how much was checked, and the first violations by check."""
        head = (
            f"stockcore.invariant_violations() over {self.skus:,} SKUs and {self.orders:,} orders"
        )
        if self.ok:
            return f"{head}: none"
        listed = "; ".join(f"{c} {s}: {d}" for c, s, d in self.violations[:shown])
        more = len(self.violations) - shown
        return f"{head}: {len(self.violations):,}: {listed}" + (
            f" (+{more} more)" if more > 0 else ""
        )


_COMMITTED = """
SELECT sku, -sum(on_hand_delta) AS units FROM stockcore.movements
WHERE kind = 'commit' AND sku = ANY($1::text[])
GROUP BY sku
"""


async def check_via_sql(dsn: str, commit_skus: Sequence[str] = ()) -> SqlCheck:
    """Run the invariant check and read the figures, in one read-only snapshot."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            found = await conn.fetch(
                'SELECT "check", subject, detail FROM stockcore.invariant_violations()'
            )
            skus = await conn.fetchval("SELECT count(*) FROM stockcore.stock")
            orders = await conn.fetchval("SELECT count(*) FROM stockcore.orders")
            committed = await conn.fetch(_COMMITTED, list(commit_skus))
    finally:
        await conn.close()
    return SqlCheck(
        skus=skus,
        orders=orders,
        violations=[(r["check"], r["subject"], r["detail"]) for r in found],
        committed_units={r["sku"]: r["units"] for r in committed},
    )


@dataclass(frozen=True)
class BufferStats:
    """PostgreSQL's shared-buffer hits and reads of the database, cumulative."""

    hits: int
    reads: int

    def hit_ratio_since(self, before: BufferStats) -> float:
        """The share of block requests served from shared buffers since `before`."""
        hits, reads = self.hits - before.hits, self.reads - before.reads
        return hits / (hits + reads) if hits + reads else math.nan


async def buffer_stats(dsn: str) -> BufferStats:
    """The database's block hits and reads so far."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    assert row is not None
    return BufferStats(row["blks_hit"], row["blks_read"])


def check_after_run(
    run: Run,
    target: str,
    pg_dsn: str | None,
    skus: Sequence[str],
    commit_skus: Sequence[str] = (),
) -> SqlCheck | None:
    """Record both checks as the run's PASS/FAIL lines; the SQL one's figures, when run."""
    api = asyncio.run(check_via_api(target, skus))
    run.check(
        api.ok and api.skus == len(skus),
        f"GetStock of all {api.skus:,} catalogue SKUs: {api.negative_on_hand} with on_hand < 0, "
        f"{api.over_reserved} with reserved > on_hand (oversold: 0 required)",
    )
    if pg_dsn is None:
        run.say("- SQL checks skipped: no STOCKCORE_PG_DSN")
        return None
    sql = asyncio.run(check_via_sql(pg_dsn, commit_skus))
    run.check(sql.ok, sql.describe())
    return sql
