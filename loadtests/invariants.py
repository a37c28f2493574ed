"""What must hold on the server after a load run, read through the API and, when the DSN is
known, straight from PostgreSQL in one read-only snapshot.

Oversell is impossible when, for every SKU, on_hand >= 0 and on_hand >= reserved, reserved
equals the units of its HELD reservations, and on_hand and reserved equal the sums of the
movement ledger. Nothing here writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

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
    """The whole stock table against the reservations and the movement ledger."""

    skus: int
    negative_on_hand: int
    over_reserved: int
    reserved_not_held: int
    """SKUs whose reserved differs from the units of their HELD reservations."""
    off_ledger: int
    """SKUs whose on_hand or reserved differs from the sums of their movements."""
    overdue_holds: int
    """HELD reservations more than 10 s past their expiry."""
    committed_units: dict[str, int] = field(default_factory=dict)
    """Units deducted by commits, for the SKUs asked about."""

    @property
    def ok(self) -> bool:
        """Every invariant holds."""
        return not (
            self.negative_on_hand
            or self.over_reserved
            or self.reserved_not_held
            or self.off_ledger
            or self.overdue_holds
        )


_CHECK = """
WITH held AS (
    SELECT line.sku, sum(line.quantity) AS units
    FROM stockcore.reservations r, unnest(r.skus, r.quantities) AS line(sku, quantity)
    WHERE r.status = 1
    GROUP BY line.sku
), ledger AS (
    SELECT sku, sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved
    FROM stockcore.movements
    GROUP BY sku
)
SELECT
    count(*) AS skus,
    count(*) FILTER (WHERE s.on_hand < 0) AS negative_on_hand,
    count(*) FILTER (WHERE s.reserved > s.on_hand) AS over_reserved,
    count(*) FILTER (WHERE s.reserved <> coalesce(h.units, 0)) AS reserved_not_held,
    count(*) FILTER (
        WHERE s.on_hand <> coalesce(l.on_hand, 0) OR s.reserved <> coalesce(l.reserved, 0)
    ) AS off_ledger
FROM stockcore.stock s
LEFT JOIN held h ON h.sku = s.sku
LEFT JOIN ledger l ON l.sku = s.sku
"""

_OVERDUE = """
SELECT count(*) FROM stockcore.reservations
WHERE status = 1 AND expires_at < now() - interval '10 seconds'
"""

_COMMITTED = """
SELECT sku, -sum(on_hand_delta) AS units FROM stockcore.movements
WHERE kind = 'commit' AND sku = ANY($1::text[])
GROUP BY sku
"""


async def check_via_sql(dsn: str, commit_skus: Sequence[str] = ()) -> SqlCheck:
    """Run every check in one read-only, repeatable-read transaction."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(_CHECK)
            overdue = await conn.fetchval(_OVERDUE)
            committed = await conn.fetch(_COMMITTED, list(commit_skus))
    finally:
        await conn.close()
    assert row is not None
    return SqlCheck(
        skus=row["skus"],
        negative_on_hand=row["negative_on_hand"],
        over_reserved=row["over_reserved"],
        reserved_not_held=row["reserved_not_held"],
        off_ledger=row["off_ledger"],
        overdue_holds=overdue,
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
