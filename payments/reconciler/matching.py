"""What the reconciler finds when it compares the provider's money with stockcore's, as
plain code (no database, no network): the verdict of one charge or one refund, and the
statement line to write, if any.

A **charge** (its id is the payment id stockcore knows it by) is compared on both sides:
stockcore's record of it (the order's payment, or money to return), priced at what its
order asked, and the captured charge in the settlement feed.

| stockcore | the feed | verdict |
|---|---|---|
| recorded | nothing, past the grace period | MISSING_AT_PROVIDER |
| nothing, past the grace period | captured | MISSING_HERE |
| anything | captured, while another charge paid its order | DUPLICATED |
| recorded | captured in another currency / of another amount | CURRENCY_DIFFERS / AMOUNT_DIFFERS |
| recorded | captured as asked, its fee not in the feed past the grace period | MISSING_AT_PROVIDER |
| recorded | captured, the charge or its fee read in the feed more than the settle deadline after | SETTLED_LATE |
| recorded | captured, as asked, its fee too, all in time | MATCHED |

A charge's **fee** is part of its settlement: the provider takes it from the charge in a
transaction of its own (`fee`, its source the charge), which may reach the feed apart from
the charge. A charge is settled when both are read; its fee late is the charge SETTLED_LATE,
first stated MISSING_AT_PROVIDER once the grace period passes without it, then corrected
when it arrives, as a late charge is. The fee's amount is the provider's terms, which
stockcore does not hold: the ledger posts what the feed says, and the daily close counts it.

Within the grace period nothing is stated yet: a webhook or a settlement is on its way. A
**refund** in the feed is compared with what stockcore owes back by it: the refund of
stockcore's the provider's refund id is bound to (a charge refunded in parts, its lines
refunded and then the rest, is so stated refund by refund), or, for one bound to none,
what its charge owes back whole (its money to return, or the refund owed by the order it
paid; stockcore.refunds_to_state finds it): none past the grace period is MISSING_HERE; one the provider failed (its `refund_failure` read in the feed) is
REFUND_FAILED, whatever it was stated before: the money is still owed, and a person
refunds it by hand or writes it off; then currency, amount and lateness as for a charge.

A verdict is written only when it differs from the subject's latest statement: a later
line names the one it corrects (MISSING_AT_PROVIDER, then MATCHED when a late settlement
arrives).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.domain.reconciliation import SubjectKind, Verdict

# Verdict, SubjectKind and Resolution, the SQL's codes of 018/021, are defined once, in
# server/domain/reconciliation.py, for the server and this program alike.


class Resolved(enum.IntEnum):
    """The answer of stockcore.resolve_reconciliation_exception."""

    RESOLVED = 0
    UNKNOWN = 1
    ALREADY_RESOLVED = 2
    REFUSED = 3
    """Not a person's resolution (ACCEPTED, REFUNDED, WRITTEN_OFF), or no who or why."""


@dataclass(frozen=True)
class Policy:
    """How long a fact may wait for the other side (grace_s), and how long after its
    creation a balance transaction may reach the feed before it is late."""

    grace_s: float
    settle_deadline_s: float


@dataclass(frozen=True)
class Money:
    """An amount in minor units of a currency."""

    amount: int
    currency: str


@dataclass(frozen=True)
class ChargeFacts:
    """Both sides of one charge. `recorded`: stockcore has a payment or money to return by
    this id (at `recorded_at`); `asked`: its order's price; `paid_by`: the charge that
    paid the order; `captured`: the charge in the feed, created at `captured_at` and read
    there at `settled_at`; its fee created at `fee_created_at` and read at `fee_settled_at`
    (None: not in the feed yet); `latest`: its latest statement and verdict (None: none)."""

    charge_id: str
    order_id: str | None
    recorded: bool
    recorded_at: datetime | None
    asked: Money | None
    paid_by: str | None
    captured: Money | None
    captured_at: datetime | None
    settled_at: datetime | None
    fee_created_at: datetime | None = None
    fee_settled_at: datetime | None = None
    recovered: bool = False
    latest: int | None = None
    latest_verdict: Verdict | None = None


@dataclass(frozen=True)
class RefundFacts:
    """A refund in the feed (`refunded`, created at `refunded_at`, read at `settled_at`),
    what stockcore owes back for its charge (`owed`, since `owed_at`; None: nothing), and
    when the provider failed it (`failed_at`, its refund_failure's creation; None: not)."""

    refund_id: str
    charge_id: str
    order_id: str | None
    owed: Money | None
    owed_at: datetime | None
    refunded: Money
    refunded_at: datetime
    settled_at: datetime
    failed_at: datetime | None = None
    latest: int | None = None
    latest_verdict: Verdict | None = None


@dataclass(frozen=True)
class Statement:
    """A statement line to write: about `subject_id`, correcting `corrects` (None: the
    first), `fact_at` when the fact it states happened."""

    kind: SubjectKind
    subject_id: str
    order_id: str | None
    verdict: Verdict
    ours: Money | None
    theirs: Money | None
    fact_at: datetime
    corrects: int | None
    recovered: bool = False


def _late(created: datetime | None, settled: datetime | None, policy: Policy) -> bool:
    return (
        created is not None
        and settled is not None
        and settled - created > timedelta(seconds=policy.settle_deadline_s)
    )


def _waited(since: datetime | None, now: datetime, policy: Policy) -> bool:
    return since is not None and now - since > timedelta(seconds=policy.grace_s)


def _compared(ours: Money, theirs: Money) -> Verdict | None:
    if ours.currency != theirs.currency:
        return Verdict.CURRENCY_DIFFERS
    if ours.amount != theirs.amount:
        return Verdict.AMOUNT_DIFFERS
    return None


def charge_verdict(facts: ChargeFacts, now: datetime, policy: Policy) -> Verdict | None:
    """The verdict on a charge (the module's table); None while it is too early to say."""
    another_paid = facts.paid_by is not None and facts.paid_by != facts.charge_id
    if facts.captured is None:
        if facts.recorded and _waited(facts.recorded_at, now, policy):
            return Verdict.MISSING_AT_PROVIDER
        return None
    if another_paid:
        return Verdict.DUPLICATED
    if not facts.recorded:
        return Verdict.MISSING_HERE if _waited(facts.captured_at, now, policy) else None
    differs = None if facts.asked is None else _compared(facts.asked, facts.captured)
    if differs is not None:
        return differs
    if facts.fee_settled_at is None:
        # The fee is taken at capture: a charge is not settled until it is read too.
        return Verdict.MISSING_AT_PROVIDER if _waited(facts.captured_at, now, policy) else None
    if _late(facts.captured_at, facts.settled_at, policy) or _late(
        facts.fee_created_at, facts.fee_settled_at, policy
    ):
        return Verdict.SETTLED_LATE
    return Verdict.MATCHED


def refund_verdict(facts: RefundFacts, now: datetime, policy: Policy) -> Verdict | None:
    """The verdict on a refund (the module's notes); None while it is too early to say."""
    if facts.owed is None:
        return Verdict.MISSING_HERE if _waited(facts.refunded_at, now, policy) else None
    if facts.failed_at is not None:
        return Verdict.REFUND_FAILED
    differs = _compared(facts.owed, facts.refunded)
    if differs is not None:
        return differs
    if _late(facts.refunded_at, facts.settled_at, policy):
        return Verdict.SETTLED_LATE
    return Verdict.MATCHED


def charge_statement(facts: ChargeFacts, now: datetime, policy: Policy) -> Statement | None:
    """The line to write about a charge: None when it is too early to say, or when its
    latest statement says the same already."""
    verdict = charge_verdict(facts, now, policy)
    if verdict is None or verdict == facts.latest_verdict:
        return None
    fact_at = facts.recorded_at or facts.captured_at
    assert fact_at is not None
    return Statement(
        SubjectKind.CHARGE,
        facts.charge_id,
        facts.order_id,
        verdict,
        facts.asked if facts.recorded else None,
        facts.captured,
        fact_at,
        facts.latest,
        facts.recovered,
    )


def refund_statement(facts: RefundFacts, now: datetime, policy: Policy) -> Statement | None:
    """The line to write about a refund, as charge_statement says."""
    verdict = refund_verdict(facts, now, policy)
    if verdict is None or verdict == facts.latest_verdict:
        return None
    # A failure is a fact of its own, later than the refund: its lag runs from it.
    fact_at = facts.failed_at if verdict is Verdict.REFUND_FAILED else None
    return Statement(
        SubjectKind.REFUND,
        facts.refund_id,
        facts.order_id,
        verdict,
        facts.owed,
        facts.refunded,
        fact_at or facts.refunded_at,
        facts.latest,
    )
