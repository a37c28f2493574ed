"""The reconciler's tables in PostgreSQL (018_reconciliation.sql, sql/live/reconciliation.sql):
the settlement feed as read and its ledger postings, the facts to state, the statements and
exceptions. Each write is one function call answering with a typed value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from payments.reconciler.feed import BalanceTransaction, FeedPage
from payments.reconciler.matching import (
    ChargeFacts,
    Money,
    RefundFacts,
    Resolved,
    Statement,
)
from runtime.pools import open_pool
from server.domain.reconciliation import Resolution, SubjectKind, Verdict

#: The settlement feed's name in stockcore.settlement_cursor.
FEED = "provider"
#: Who closes the days, as stockcore.daily_closes.closed_by records it.
CLOSER = "reconciler"


@dataclass(frozen=True)
class PageRecorded:
    """What recording a page did: whether the cursor moved (False: another reader had
    moved it), where it is now, and how many transactions were posted."""

    moved: bool
    cursor: int
    posted: int


@dataclass(frozen=True)
class UnrecordedCharge:
    """A captured charge in the feed for which stockcore records nothing."""

    txn_id: str
    charge_id: str
    order_id: str
    amount_minor: int
    currency: str
    created_at: datetime


@dataclass(frozen=True)
class StatedLine:
    """A statement line written: what it is about, its verdict, and its lag (seconds from
    the fact it states to the line, as reconciliation_statements.lag_s has it)."""

    kind: SubjectKind
    verdict: Verdict
    lag_s: float


def _money(amount: int | None, currency: str | None) -> Money | None:
    return None if amount is None or currency is None else Money(amount, currency)


def _verdict(code: int | None) -> Verdict | None:
    return None if code is None else Verdict(code)


class ReconciliationStore:
    """The reconciler's tables, through one pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, *, pool_size: int, timeout: float, name: str = "stockcore-reconciler"
    ) -> ReconciliationStore:
        """Open a pool; `name` is what PostgreSQL shows as its connections' application."""
        return cls(await open_pool(dsn, name=name, max_size=pool_size, command_timeout=timeout))

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool, which the reconciler's record of a recovered event shares."""
        return self._pool

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def cursor(self) -> int:
        """The cursor of the last transaction read and posted."""
        return int(await self._pool.fetchval("SELECT stockcore.read_settlement_cursor($1)", FEED))

    async def record_page(
        self, after: int, page: FeedPage, charges: dict[str, str]
    ) -> PageRecorded:
        """Record and post a page read after `after` and move the cursor past it, in one
        transaction; `charges` names the charge of each refund's source."""
        txns: list[BalanceTransaction] = page.transactions
        row = await self._pool.fetchrow(
            "SELECT * FROM stockcore.record_settlement_page($1, $2, $3, $4, $5, $6, $7, $8, $9,"
            " $10, $11, $12, $13)",
            FEED,
            after,
            page.next_cursor,
            [t.txn_id for t in txns],
            [t.cursor for t in txns],
            [t.type for t in txns],
            [t.source_id for t in txns],
            [charges.get(t.source_id, t.source_id) if t.type != "payout" else None for t in txns],
            [t.order_id for t in txns],
            [t.amount for t in txns],
            [t.currency for t in txns],
            [t.created for t in txns],
            [t.available_on for t in txns],
        )
        assert row is not None
        return PageRecorded(row["moved"], row["at_cursor"], row["recorded"])

    async def unrecorded_charges(self, before: datetime) -> list[UnrecordedCharge]:
        """Charges in the feed created before `before` that stockcore records nothing of."""
        rows = await self._pool.fetch("SELECT * FROM stockcore.unrecorded_charges($1)", before)
        return [UnrecordedCharge(**dict(r)) for r in rows]

    async def charges_to_state(self) -> list[ChargeFacts]:
        """Both sides of every charge whose latest statement is missing or open."""
        rows = await self._pool.fetch("SELECT * FROM stockcore.charges_to_state()")
        return [
            ChargeFacts(
                charge_id=r["charge_id"],
                order_id=r["order_id"],
                recorded=r["ours_kind"] is not None,
                recorded_at=r["ours_at"],
                asked=_money(r["ours_amount"], r["ours_currency"]),
                paid_by=r["paid_by"],
                captured=_money(r["theirs_amount"], r["theirs_currency"]),
                captured_at=r["theirs_at"],
                settled_at=r["settled_at"],
                fee_created_at=r["fee_created_at"],
                fee_settled_at=r["fee_settled_at"],
                recovered=r["recovered"],
                latest=r["latest"],
                latest_verdict=_verdict(r["latest_verdict"]),
            )
            for r in rows
        ]

    async def refunds_to_state(self) -> list[RefundFacts]:
        """Every refund in the feed whose latest statement is missing or open, or that the
        provider failed since its latest statement."""
        rows = await self._pool.fetch("SELECT * FROM stockcore.refunds_to_state()")
        return [
            RefundFacts(
                refund_id=r["refund_id"],
                charge_id=r["charge_id"],
                order_id=r["order_id"],
                owed=_money(r["owed_amount"], r["owed_currency"]),
                owed_at=r["owed_at"],
                refunded=Money(r["theirs_amount"], r["theirs_currency"]),
                refunded_at=r["theirs_at"],
                settled_at=r["settled_at"],
                failed_at=r["failed_at"],
                latest=r["latest"],
                latest_verdict=_verdict(r["latest_verdict"]),
            )
            for r in rows
        ]

    async def record_statements(self, statements: list[Statement]) -> list[StatedLine]:
        """Write the lines (and open or close their exceptions); those written (a subject
        stated meanwhile is skipped)."""
        if not statements:
            return []
        rows = await self._pool.fetch(
            "SELECT * FROM stockcore.record_statements($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
            " $11, $12)",
            FEED,
            [int(s.kind) for s in statements],
            [s.subject_id for s in statements],
            [s.order_id for s in statements],
            [int(s.verdict) for s in statements],
            [None if s.ours is None else s.ours.amount for s in statements],
            [None if s.ours is None else s.ours.currency for s in statements],
            [None if s.theirs is None else s.theirs.amount for s in statements],
            [None if s.theirs is None else s.theirs.currency for s in statements],
            [s.recovered for s in statements],
            [s.fact_at for s in statements],
            [s.corrects for s in statements],
        )
        return [
            StatedLine(
                SubjectKind(r["stated_kind"]), Verdict(r["stated_verdict"]), r["stated_lag_s"]
            )
            for r in rows
        ]

    async def resolve(
        self, exception_id: int, resolution: Resolution, by: str, why: str
    ) -> Resolved:
        """Resolve one exception, as a person decided; the answer says whether it was."""
        return Resolved(
            await self._pool.fetchval(
                "SELECT stockcore.resolve_reconciliation_exception($1, $2, $3, $4)",
                exception_id,
                int(resolution),
                by,
                why,
            )
        )

    async def close_due_days(self, before: datetime) -> list[tuple[str, date]]:
        """Close every currency's days that ended before `before`, in order; (currency,
        day) of each closed (stockcore.close_due_days)."""
        rows = await self._pool.fetch(
            "SELECT * FROM stockcore.close_due_days($1, $2)", before, CLOSER
        )
        return [(r["currency"], r["day"]) for r in rows]

    async def open_exceptions(self) -> dict[Verdict, int]:
        """How many exceptions are open, by reason (a reason with none is absent)."""
        # The open rows alone, by the partial index of open exceptions: a person resolves
        # them, so they stay few however many statements there are.
        rows = await self._pool.fetch(
            "SELECT reason, count(*) AS open FROM stockcore.reconciliation_exceptions"
            " WHERE resolution IS NULL GROUP BY reason"
        )
        return {Verdict(r["reason"]): int(r["open"]) for r in rows}

    async def ledger_imbalance(self) -> dict[str, int]:
        """By currency, the minor units by which the ledger differs from the facts it
        records (stockcore.ledger_imbalance: 0 in each while it is whole)."""
        rows = await self._pool.fetch(
            "SELECT currency, imbalance_minor FROM stockcore.ledger_imbalance()"
        )
        return {r["currency"]: int(r["imbalance_minor"]) for r in rows}
