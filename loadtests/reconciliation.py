"""What the reconciler (python -m payments.reconciler) stated of a load run, read after the
load stops: every payment, charge to return and refund stockcore recorded, with the lag of
its first statement (`lag_s` of stockcore.reconciliation_statements: seconds from the fact
to its statement), the exceptions still open by reason, and the money ledger's imbalance per
currency (its transfers against the facts they record: 0, or the ledger is broken).

A refund's subject is the provider's refund id, so a refund the provider has not accepted
yet (no provider id) is not stated. The provider's times are whole seconds, so the lag of
a refund, which starts at the provider's time, may read up to 1 s long. Nothing here
writes; the queries run in one read-only snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from loadtests import invariants
from loadtests.driver import percentile
from loadtests.report import Run, table
from server.domain.reconciliation import Verdict

SUBJECTS = ("payment", "charge to return", "refund")
"""What stockcore records that the reconciler must state, in the order reported."""

LAG_P99_TARGET_S = 5.0
LAG_MAX_TARGET_S = 30.0

_SUBJECTS_SQL = """
WITH firsts AS (
    SELECT subject_kind, subject_id, lag_s FROM stockcore.reconciliation_statements
     WHERE corrects IS NULL
)
SELECT 'payment' AS what, p.payment_id AS id, f.lag_s
  FROM stockcore.payments p
  LEFT JOIN firsts f ON f.subject_kind = 1 AND f.subject_id = p.payment_id
UNION ALL
SELECT 'charge to return', r.charge_id, f.lag_s
  FROM stockcore.payments_to_return r
  LEFT JOIN firsts f ON f.subject_kind = 1 AND f.subject_id = r.charge_id
UNION ALL
SELECT 'refund', rf.refund_id, f.lag_s
  FROM stockcore.refunds rf
  LEFT JOIN firsts f ON f.subject_kind = 2 AND f.subject_id = rf.provider_refund_id
"""

_OPEN_SQL = """
SELECT e.reason, count(*) AS n FROM stockcore.reconciliation_exceptions e
 WHERE e.resolution IS NULL GROUP BY e.reason ORDER BY e.reason
"""

# Per currency, by how much the ledger's transfers differ from the facts they record,
# kind by kind (stockcore.ledger_imbalance(), live/invariants.sql): one statement, so one
# snapshot, in which a fact and its transfer are always both or neither. (The accounts'
# balances always sum to 0, since every transfer debits what it credits: no check.)
_IMBALANCE_SQL = """
SELECT currency, imbalance_minor AS imbalance FROM stockcore.ledger_imbalance()
"""


@dataclass(frozen=True)
class Subject:
    """One thing stockcore recorded (`what`: one of SUBJECTS) and its first statement's
    lag (None: not stated yet)."""

    what: str
    subject_id: str
    lag_s: float | None


@dataclass(frozen=True)
class LagSummary:
    """Statement lags: how many, p50, p99 and max seconds (NaN when none)."""

    count: int
    p50_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, lags: Sequence[float]) -> LagSummary:
        """The summary of `lags`, in any order."""
        ordered = sorted(lags)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 99),
            ordered[-1] if ordered else float("nan"),
        )


@dataclass(frozen=True)
class Reconciled:
    """The reconciler's work as read in one snapshot."""

    subjects: list[Subject]
    open_exceptions: dict[str, int]
    """Open exceptions by reason (a Verdict's name)."""
    imbalance: dict[str, int]
    """Per currency, by how much the transfers differ from their facts (0 when whole)."""

    def of(self, what: str) -> list[Subject]:
        """The subjects of one kind."""
        return [s for s in self.subjects if s.what == what]

    @property
    def unstated(self) -> int:
        """Subjects without a statement."""
        return sum(s.lag_s is None for s in self.subjects)

    @property
    def lag(self) -> LagSummary:
        """The lags of every stated subject."""
        return LagSummary.of([s.lag_s for s in self.subjects if s.lag_s is not None])

    @property
    def balanced(self) -> bool:
        """In every currency the transfers equal their facts."""
        return all(v == 0 for v in self.imbalance.values())


def reason_name(code: int) -> str:
    """The name of an exception's reason code (a Verdict)."""
    try:
        return Verdict(code).name
    except ValueError:
        return f"reason {code}"


async def read_reconciled(dsn: str) -> Reconciled:
    """The subjects, open exceptions and ledger balance, in one read-only snapshot."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            subjects = await conn.fetch(_SUBJECTS_SQL)
            opened = await conn.fetch(_OPEN_SQL)
            imbalance = await conn.fetch(_IMBALANCE_SQL)
    finally:
        await conn.close()
    return Reconciled(
        [Subject(r["what"], r["id"], r["lag_s"]) for r in subjects],
        {reason_name(r["reason"]): r["n"] for r in opened},
        {r["currency"]: r["imbalance"] for r in imbalance},
    )


async def imbalance(dsn: str) -> dict[str, int]:
    """The ledger's imbalance per currency now (0 when whole)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_IMBALANCE_SQL)
    finally:
        await conn.close()
    return {r["currency"]: r["imbalance"] for r in rows}


async def wait_until_stated(
    dsn: str, timeout_s: float, poll_s: float = 1.0
) -> tuple[Reconciled, float]:
    """Wait until every subject has a statement (at most `timeout_s`); what was read last,
    and the seconds waited."""
    started = time.monotonic()
    while True:
        found = await read_reconciled(dsn)
        waited = time.monotonic() - started
        if found.unstated == 0 or waited >= timeout_s:
            return found, waited
        await asyncio.sleep(poll_s)


def subject_rows(found: Reconciled) -> list[list[object]]:
    """Per kind of subject and over all: total, stated, lag p50/p99/max seconds."""
    rows: list[list[object]] = []
    for what in (*SUBJECTS, "all"):
        subjects = found.subjects if what == "all" else found.of(what)
        lag = LagSummary.of([s.lag_s for s in subjects if s.lag_s is not None])
        rows.append(
            [
                what,
                f"{len(subjects):,}",
                f"{lag.count:,}",
                *(f"{v:.2f}" if v == v else "-" for v in (lag.p50_s, lag.p99_s, lag.max_s)),
            ]
        )
    return rows


SUBJECT_HEADER = ["recorded by stockcore", "total", "stated", "lag p50 s", "lag p99 s", "lag max s"]


@dataclass(frozen=True)
class Settled:
    """The reconciler's work once it caught up (or the wait ran out), and the invariants
    checked then."""

    found: Reconciled
    waited_s: float
    timeout_s: float
    invariants: invariants.SqlCheck


def settle(dsn: str, timeout_s: float) -> Settled:
    """Wait (at most `timeout_s`) until every subject is stated, then check the invariants."""
    found, waited = asyncio.run(wait_until_stated(dsn, timeout_s))
    return Settled(found, waited, timeout_s, asyncio.run(invariants.check_via_sql(dsn)))


def report(run: Run, settled: Settled) -> None:
    """The day's reconciliation section: statements and their lag, open exceptions, the
    ledger's balance, with the targets and the checks."""
    found = settled.found
    run.say(
        "",
        "## Reconciliation (stockcore.reconciliation_statements, read after the load)",
        "",
        f"Waited {settled.waited_s:.1f} s after the load for every payment, charge to return"
        f" and refund to have a statement (at most {settled.timeout_s:g} s). Lag: `lag_s` of"
        " each subject's first statement, seconds from the fact (the payment, the charge, the"
        " provider's refund) to its statement.",
        "",
    )
    run.say(*table(SUBJECT_HEADER, subject_rows(found)))
    run.say("", "Open exceptions by reason:", "")
    run.say(
        *(
            table(["reason", "open"], sorted(found.open_exceptions.items()))
            if found.open_exceptions
            else ["none"]
        )
    )
    lag = found.lag
    run.say("")
    if lag.count:
        run.target(
            lag.p99_s <= LAG_P99_TARGET_S,
            f"statement lag p99 {lag.p99_s:.2f} s <= {LAG_P99_TARGET_S:g} s",
        )
        run.target(
            lag.max_s <= LAG_MAX_TARGET_S,
            f"statement lag max {lag.max_s:.2f} s <= {LAG_MAX_TARGET_S:g} s",
        )
    else:
        run.unmeasured("statement lag: nothing was stated")
    total = len(found.subjects)
    run.check(
        found.unstated == 0,
        f"every payment, charge to return and refund has its statement: "
        f"{total - found.unstated:,} of {total:,}",
    )
    shown = ", ".join(f"{c} {v:+,}" for c, v in found.imbalance.items()) or "no transfers"
    run.check(
        found.balanced,
        f"the ledger's transfers equal the facts they record in each currency ({shown})",
    )
    run.check(settled.invariants.ok, "after reconciliation: " + settled.invariants.describe())
