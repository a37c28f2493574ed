"""What the payment provider injected beside what the reconciler found, as plain code: each
injected fault judged against its right outcome, and every exception nothing injected
explains counted as a false one (`make load-recon`, loadtests/recon.py).

Each fault kind the provider injects (simulators/payment_faults.py) has one right outcome:

| kind | right outcome |
|---|---|
| amount_mismatch | detected: the charge's open exception is AMOUNT_DIFFERS |
| currency_mismatch | detected: the charge's open exception is CURRENCY_DIFFERS |
| settlement_late of a charge / a refund | detected: that charge's / refund's open exception is SETTLED_LATE |
| settlement_late of a fee | detected: its charge's open exception is SETTLED_LATE (a fee is settled with its charge) |
| settlement_late of a refund_failure | detected: its refund's open exception is SETTLED_LATE, which its refund_failed always masks |
| settlement_late of a payout | detected: SETTLED_LATE of the payout; nothing states payouts today, so MISSED |
| refund_failed | detected: the refund's open exception is REFUND_FAILED (the money is still owed) |
| confirmation_lost | recovered: the charge stated with `recovered` (the reconciler paid its order from the feed) |
| webhook_dropped, webhook_duplicated, webhook_delayed, webhook_reordered | absorbed: the event's charge recorded once (its order's payment or money to return; nothing for a declined charge's `charge.failed`) or its refund settled, and no exception on it |
| declined | absorbed: nothing recorded for the charge, no exception |
| refund_late | absorbed: the refund settled, no exception |

A subject (a charge or a refund) has one open exception at most, its latest statement's:
when two detected faults fall on one subject, the reconciler's precedence (REFUND_FAILED,
then CURRENCY_DIFFERS, then AMOUNT_DIFFERS, then SETTLED_LATE:
payments/reconciler/matching.py) says which one its verdict names, and the other is
counted as masked, neither found nor missed. An open
exception on a subject that no detected fault expects that reason of is a false one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CHARGE = 1
REFUND = 2
"""Subject kinds of stockcore.reconciliation_statements."""

DETECTED = "detected"
RECOVERED = "recovered"
ABSORBED = "absorbed"

# Which verdict names a subject's discrepancy when several are true (matching.py's order).
_PRECEDENCE = ("REFUND_FAILED", "CURRENCY_DIFFERS", "AMOUNT_DIFFERS", "SETTLED_LATE")

WEBHOOK_KINDS = ("webhook_dropped", "webhook_duplicated", "webhook_delayed", "webhook_reordered")


@dataclass(frozen=True)
class Expectation:
    """A row of the module's table: how a fault kind must end (`outcome`; with DETECTED,
    the exception `reason`), and what would fix it when the reconciler cannot today."""

    row: str
    outcome: str
    reason: str | None = None
    cannot: str = ""
    """Why the reconciler cannot detect it today, and what would fix it (empty: it can)."""


EXPECTATIONS: dict[str, Expectation] = {
    e.row: e
    for e in (
        Expectation("amount_mismatch", DETECTED, "AMOUNT_DIFFERS"),
        Expectation("currency_mismatch", DETECTED, "CURRENCY_DIFFERS"),
        Expectation("settlement_late (charge)", DETECTED, "SETTLED_LATE"),
        Expectation("settlement_late (refund)", DETECTED, "SETTLED_LATE"),
        Expectation("settlement_late (fee)", DETECTED, "SETTLED_LATE"),
        Expectation("settlement_late (refund_failure)", DETECTED, "SETTLED_LATE"),
        Expectation("settlement_late (payout)", DETECTED, "SETTLED_LATE", "payouts are not stated"),
        Expectation("refund_failed", DETECTED, "REFUND_FAILED"),
        Expectation("confirmation_lost", RECOVERED),
        *(Expectation(kind, ABSORBED) for kind in WEBHOOK_KINDS),
        Expectation("declined", ABSORBED),
        Expectation("refund_late", ABSORBED),
    )
}
"""Every row of the table, in the order printed."""


@dataclass(frozen=True)
class Injected:
    """One fault of GET /_faults/injected: its kind and the object it touched (an event's
    charge or refund, a charge, a refund, a balance transaction)."""

    kind: str
    object_id: str
    order_id: str = ""


@dataclass(frozen=True)
class Found:
    """What stockcore holds once reconciliation settled. `open`: each subject's open
    exception reason, by (subject kind, subject id); `recovered`: charges stated as
    recovered from the feed; `recorded`: charges recorded (an order's payment or money to
    return); `settled_refunds`: the provider's refund ids stockcore saw settle;
    `transactions`: each balance transaction read, by id, as (type, source id);
    `stated`: every subject with a statement."""

    open: Mapping[tuple[int, str], str]
    recovered: frozenset[str] = frozenset()
    recorded: frozenset[str] = frozenset()
    settled_refunds: frozenset[str] = frozenset()
    transactions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    stated: frozenset[tuple[int, str]] = frozenset()


@dataclass(frozen=True)
class Judged:
    """One injected fault, its table row, the subject it is about (None: nothing stockcore
    states), and whether it ended right, masked, or wrong."""

    fault: Injected
    row: str
    subject: tuple[int, str] | None
    verdict: str
    """"right", "masked" or "missed"."""


@dataclass
class Tally:
    """A row of the result table."""

    row: str
    injected: int = 0
    right: int = 0
    masked: int = 0
    missed: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recall:
    """The result: a tally per row, false exceptions by reason, and their subjects."""

    tallies: list[Tally]
    false_by_reason: dict[str, int]
    false_subjects: list[tuple[int, str, str]]

    @property
    def detectable(self) -> list[Tally]:
        """Rows whose faults must be found (detected or recovered)."""
        return [t for t in self.tallies if EXPECTATIONS[t.row].outcome != ABSORBED]

    @property
    def recall(self) -> float:
        """Share of the faults that must be found, found (masked ones left out); NaN if none."""
        judged = sum(t.right + t.missed for t in self.detectable)
        return sum(t.right for t in self.detectable) / judged if judged else float("nan")

    @property
    def false_exceptions(self) -> int:
        """Open exceptions no injected fault explains."""
        return sum(self.false_by_reason.values())


def _subject_kind(object_id: str) -> int | None:
    if object_id.startswith("ch_"):
        return CHARGE
    if object_id.startswith("re_"):
        return REFUND
    return None


def row_and_subject(fault: Injected, found: Found) -> tuple[str, tuple[int, str] | None]:
    """The table row of `fault` and the subject (kind, id) it is about."""
    if fault.kind == "settlement_late":
        txn_type, source = found.transactions.get(fault.object_id, ("unread", ""))
        row = f"settlement_late ({txn_type})"
        # A fee's source is its charge, a refund_failure's its refund: the subjects stated.
        if txn_type in ("charge", "fee"):
            return row, (CHARGE, source)
        if txn_type in ("refund", "refund_failure"):
            return row, (REFUND, source)
        return row, None
    kind = _subject_kind(fault.object_id)
    return fault.kind, None if kind is None else (kind, fault.object_id)


def _expected_reasons(
    faults: Iterable[tuple[Injected, str, tuple[int, str] | None]],
) -> dict[tuple[int, str], set[str]]:
    expected: dict[tuple[int, str], set[str]] = {}
    for _, row, subject in faults:
        e = EXPECTATIONS.get(row)
        if subject is not None and e is not None and e.outcome == DETECTED and e.reason:
            expected.setdefault(subject, set()).add(e.reason)
    return expected


def _shown(reasons: set[str]) -> str | None:
    """The reason a subject's verdict names when all of `reasons` are true."""
    return next((r for r in _PRECEDENCE if r in reasons), None)


def _absorbed(
    subject: tuple[int, str] | None, found: Found, explained: bool, declined: frozenset[str]
) -> bool:
    if subject is None:
        return False
    if subject in found.open and not explained:
        return False
    kind, object_id = subject
    if object_id in declined:
        # A declined charge (its charge.failed event too) pays nothing and is stated never.
        return object_id not in found.recorded and subject not in found.stated
    if kind == CHARGE:
        return object_id in found.recorded
    return object_id in found.settled_refunds


def judge(faults: Sequence[Injected], found: Found) -> Recall:
    """Each fault against its right outcome, and the false exceptions (the module's notes)."""
    placed = [(f, *row_and_subject(f, found)) for f in faults]
    expected = _expected_reasons(placed)
    declined = frozenset(f.object_id for f in faults if f.kind == "declined")
    tallies = {row: Tally(row) for row in EXPECTATIONS}
    for fault, row, subject in placed:
        tally = tallies.setdefault(row, Tally(row))
        tally.injected += 1
        e = EXPECTATIONS.get(row)
        reasons = expected.get(subject, set()) if subject is not None else set()
        opened = found.open.get(subject) if subject is not None else None
        if e is None:
            verdict = "missed"
        elif e.outcome == DETECTED:
            shown = _shown(reasons)
            if subject is not None and opened == e.reason:
                verdict = "right"
            elif not e.cannot and shown is not None and shown != e.reason:
                verdict = "masked"
            else:
                verdict = "missed"
        elif e.outcome == RECOVERED:
            ok = subject is not None and subject[1] in found.recovered
            ok = ok and (opened is None or opened in reasons)
            verdict = "right" if ok else "missed"
        else:
            explained = opened is not None and opened in reasons
            verdict = "right" if _absorbed(subject, found, explained, declined) else "missed"
        if verdict == "right":
            tally.right += 1
        elif verdict == "masked":
            tally.masked += 1
        else:
            tally.missed += 1
            if len(tally.examples) < 3:
                tally.examples.append(fault.object_id)
    false_subjects = [
        (kind, subject_id, reason)
        for (kind, subject_id), reason in sorted(found.open.items())
        if reason not in expected.get((kind, subject_id), set())
    ]
    return Recall(
        [t for t in tallies.values() if t.injected or t.row in EXPECTATIONS],
        dict(Counter(reason for _, _, reason in false_subjects)),
        false_subjects,
    )


RESULT_HEADER = ["fault kind", "right outcome", "injected", "right", "missed", "masked"]


def outcome_text(row: str) -> str:
    """The right outcome of a row, in words."""
    e = EXPECTATIONS.get(row)
    if e is None:
        return "unknown kind"
    if e.outcome == DETECTED:
        return f"exception {e.reason}"
    if e.outcome == RECOVERED:
        return "recovered from the feed"
    return "absorbed: no exception"


def result_rows(result: Recall) -> list[list[object]]:
    """The table of `result`: one row per fault kind (MISSED when any was)."""
    return [
        [
            t.row,
            outcome_text(t.row),
            f"{t.injected:,}",
            f"{t.right:,}",
            f"**{t.missed:,} MISSED**" if t.missed else "0",
            f"{t.masked:,}",
        ]
        for t in result.tallies
    ]
