"""The refund sender's side of stockcore.refunds (019_refunds.sql, sql/live/refunds.sql):
claims under a lease, and what each send or poll learnt. Each write is one function call;
the functions append the order events and return the charges to return."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from runtime.pools import open_pool


class RefundReason(enum.IntEnum):
    """Why a refund is owed (server.domain.orders.RefundReason's values)."""

    ORDER_CANCELLED = 1
    CHARGE_TO_RETURN = 2
    LINE_REFUNDED = 3


class RefundState(enum.IntEnum):
    """How far a refund got (server.domain.orders.RefundState's values)."""

    REQUESTED = 1
    SENT = 2
    REFUNDED = 3
    FAILED = 4


class AttemptOutcome(enum.IntEnum):
    """What one send or poll learnt (stockcore.record_refund_attempt's codes)."""

    PENDING = 1
    SUCCEEDED = 2
    FAILED = 3
    RETRY = 4


@dataclass(frozen=True)
class Refund:
    """A refund as its row holds it."""

    refund_id: str
    reason: RefundReason
    order_id: str
    charge_id: str
    amount_minor: int
    currency: str
    state: RefundState
    provider_refund_id: str | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


_COLUMNS = (
    "refund_id, reason, order_id, charge_id, amount_minor, currency, state,"
    " provider_refund_id, attempts, next_attempt_at, last_error"
)


def _refund(row: asyncpg.Record) -> Refund:
    return Refund(
        **{
            **dict(row),
            "reason": RefundReason(row["reason"]),
            "state": RefundState(row["state"]),
        }
    )


@dataclass(frozen=True)
class Backlog:
    """The refunds not settled: by state (REQUESTED, SENT), how many and how long since the
    oldest was owed (seconds, 0 when none); and how long the refund due longest has waited
    for a sender to claim it (0 when none is due)."""

    unsettled: dict[RefundState, int]
    oldest_s: dict[RefundState, float]
    oldest_due_s: float


# The unsettled rows alone, which the refunds_due index holds: a refund settles within
# seconds to days, so they stay few however many refunds were ever made.
_BACKLOG = """
SELECT state, count(*) AS unsettled,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_s,
       extract(epoch FROM now() - min(next_attempt_at) FILTER (
           WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
       ))::float8 AS due_s
  FROM stockcore.refunds WHERE state IN (1, 2) GROUP BY state
"""


class RefundStore:
    """stockcore.refunds through one pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, *, pool_size: int, timeout: float, name: str = "stockcore-refunds"
    ) -> RefundStore:
        """Open a pool; `name` is what PostgreSQL shows as its connections' application."""
        return cls(await open_pool(dsn, name=name, max_size=pool_size, command_timeout=timeout))

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Refund]:
        """Up to `limit` refunds due that no sender holds, leased to `owner`."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM stockcore.claim_refunds($1, $2, $3)", owner, limit, lease_s
        )
        return [_refund(r) for r in rows]

    async def record(
        self,
        refund_id: str,
        owner: str,
        outcome: AttemptOutcome,
        *,
        provider_refund_id: str | None = None,
        retry_s: float = 0.0,
        error: str | None = None,
    ) -> bool:
        """Record what a send or poll learnt; False when `owner`'s lease had lapsed and
        another sender holds the refund (nothing is recorded)."""
        return bool(
            await self._pool.fetchval(
                "SELECT stockcore.record_refund_attempt($1, $2, $3, $4, $5, $6)",
                refund_id,
                owner,
                int(outcome),
                provider_refund_id,
                retry_s,
                None if error is None else error[:500],
            )
        )

    async def refunds(self, *, order_id: str | None = None) -> list[Refund]:
        """Every refund (of one order), oldest first: for operators and checks."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM stockcore.refunds WHERE $1::text IS NULL OR order_id = $1"
            " ORDER BY created_at, refund_id",
            order_id,
        )
        return [_refund(r) for r in rows]

    async def backlog(self) -> Backlog:
        """The refunds not settled, read in one statement."""
        unsettled = dict.fromkeys((RefundState.REQUESTED, RefundState.SENT), 0)
        oldest = dict.fromkeys((RefundState.REQUESTED, RefundState.SENT), 0.0)
        due = 0.0
        for r in await self._pool.fetch(_BACKLOG):
            state = RefundState(r["state"])
            unsettled[state] = int(r["unsettled"])
            oldest[state] = max(0.0, float(r["oldest_s"]))
            due = max(due, float(r["due_s"] or 0.0))
        return Backlog(unsettled, oldest, due)
