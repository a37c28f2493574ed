"""payments.reconciler.matching: the verdict on a charge or a refund, and when a line is
written."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from payments.reconciler.matching import (
    ChargeFacts,
    Money,
    Policy,
    RefundFacts,
    charge_statement,
    charge_verdict,
    refund_statement,
    refund_verdict,
)
from server.domain.reconciliation import Verdict

POLICY = Policy(grace_s=60, settle_deadline_s=10)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
PRICE = Money(5999, "EUR")
MATCHED = ChargeFacts(
    charge_id="ch_1",
    order_id="o-1",
    recorded=True,
    recorded_at=T0,
    asked=PRICE,
    paid_by="ch_1",
    captured=PRICE,
    captured_at=T0,
    settled_at=T0 + timedelta(seconds=1),
    fee_created_at=T0,
    fee_settled_at=T0 + timedelta(seconds=1),
)
REFUND = RefundFacts(
    refund_id="re_1",
    charge_id="ch_1",
    order_id="o-1",
    owed=PRICE,
    owed_at=T0,
    refunded=PRICE,
    refunded_at=T0 + timedelta(seconds=1),
    settled_at=T0 + timedelta(seconds=1),
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_charge_on_both_sides_as_asked_and_in_time_is_matched() -> None:
    assert charge_verdict(MATCHED, at(1), POLICY) is Verdict.MATCHED


def test_a_payment_the_feed_lacks_is_missing_at_provider_only_after_the_grace() -> None:
    ours_only = replace(MATCHED, captured=None, captured_at=None, settled_at=None)
    assert charge_verdict(ours_only, at(59), POLICY) is None
    assert charge_verdict(ours_only, at(61), POLICY) is Verdict.MISSING_AT_PROVIDER


def test_a_captured_charge_stockcore_lacks_is_missing_here_only_after_the_grace() -> None:
    theirs_only = replace(MATCHED, recorded=False, recorded_at=None, asked=None, paid_by=None)
    assert charge_verdict(theirs_only, at(59), POLICY) is None
    assert charge_verdict(theirs_only, at(61), POLICY) is Verdict.MISSING_HERE


def test_a_charge_captured_for_another_amount_differs() -> None:
    more = replace(MATCHED, captured=Money(6000, "EUR"), paid_by=None)
    assert charge_verdict(more, at(1), POLICY) is Verdict.AMOUNT_DIFFERS


def test_a_charge_captured_in_another_currency_differs_in_currency_first() -> None:
    other = replace(MATCHED, captured=Money(6000, "USD"), paid_by=None)
    assert charge_verdict(other, at(1), POLICY) is Verdict.CURRENCY_DIFFERS


def test_a_second_charge_of_an_order_another_paid_is_duplicated_recorded_or_not() -> None:
    second = replace(MATCHED, charge_id="ch_2", paid_by="ch_1")
    assert charge_verdict(second, at(1), POLICY) is Verdict.DUPLICATED
    unrecorded = replace(second, recorded=False, recorded_at=None)
    assert charge_verdict(unrecorded, at(1), POLICY) is Verdict.DUPLICATED


def test_a_charge_read_in_the_feed_past_the_deadline_settled_late() -> None:
    late = replace(MATCHED, settled_at=at(11))
    assert charge_verdict(late, at(11), POLICY) is Verdict.SETTLED_LATE


def test_a_verdict_the_latest_statement_says_already_writes_nothing() -> None:
    assert (
        charge_statement(replace(MATCHED, latest=7, latest_verdict=Verdict.MATCHED), at(1), POLICY)
        is None
    )


def test_a_late_settlement_corrects_missing_at_provider_with_a_line_naming_it() -> None:
    corrected = replace(MATCHED, latest=7, latest_verdict=Verdict.MISSING_AT_PROVIDER)
    line = charge_statement(corrected, at(70), POLICY)
    assert line is not None
    assert (line.verdict, line.corrects, line.fact_at) == (Verdict.MATCHED, 7, T0)


def test_a_refund_is_compared_with_what_is_owed_back() -> None:
    refund = REFUND
    assert refund_verdict(refund, at(2), POLICY) is Verdict.MATCHED
    assert refund_verdict(replace(refund, refunded=Money(1, "EUR")), at(2), POLICY) is (
        Verdict.AMOUNT_DIFFERS
    )
    unowed = replace(refund, owed=None, owed_at=None)
    assert refund_verdict(unowed, at(2), POLICY) is None
    assert refund_verdict(unowed, at(62), POLICY) is Verdict.MISSING_HERE


def test_a_charge_whose_fee_is_not_in_the_feed_waits_then_is_missing_at_provider() -> None:
    no_fee = replace(MATCHED, fee_created_at=None, fee_settled_at=None)
    assert charge_verdict(no_fee, at(59), POLICY) is None
    assert charge_verdict(no_fee, at(61), POLICY) is Verdict.MISSING_AT_PROVIDER


def test_a_charge_whose_fee_was_read_past_the_deadline_settled_late() -> None:
    late_fee = replace(MATCHED, fee_settled_at=at(11))
    assert charge_verdict(late_fee, at(11), POLICY) is Verdict.SETTLED_LATE
    in_time = replace(MATCHED, fee_settled_at=at(10))
    assert charge_verdict(in_time, at(10), POLICY) is Verdict.MATCHED


def test_a_late_fee_corrects_missing_at_provider_as_settled_late() -> None:
    waited = replace(MATCHED, fee_created_at=None, fee_settled_at=None)
    missing = charge_statement(waited, at(61), POLICY)
    assert missing is not None
    assert (missing.verdict, missing.ours, missing.theirs) == (
        Verdict.MISSING_AT_PROVIDER,
        PRICE,
        PRICE,
    )
    arrived = replace(
        MATCHED, fee_settled_at=at(90), latest=7, latest_verdict=Verdict.MISSING_AT_PROVIDER
    )
    line = charge_statement(arrived, at(90), POLICY)
    assert line is not None
    assert (line.verdict, line.corrects) == (Verdict.SETTLED_LATE, 7)


def test_a_mismatch_outranks_a_missing_or_late_fee() -> None:
    more = replace(MATCHED, captured=Money(6000, "EUR"), fee_created_at=None, fee_settled_at=None)
    assert charge_verdict(more, at(61), POLICY) is Verdict.AMOUNT_DIFFERS
    unrecorded = replace(
        MATCHED, recorded=False, recorded_at=None, asked=None, paid_by=None, fee_settled_at=None
    )
    assert charge_verdict(unrecorded, at(61), POLICY) is Verdict.MISSING_HERE


def test_a_refund_the_provider_failed_is_refund_failed_from_its_failure() -> None:
    failed = replace(REFUND, failed_at=at(2))
    assert refund_verdict(failed, at(3), POLICY) is Verdict.REFUND_FAILED
    # Whatever else is true of it: the money is still owed.
    late = replace(failed, settled_at=at(40), refunded=Money(1, "EUR"))
    assert refund_verdict(late, at(41), POLICY) is Verdict.REFUND_FAILED
    line = refund_statement(failed, at(3), POLICY)
    assert line is not None
    assert (line.verdict, line.subject_id, line.ours, line.fact_at, line.corrects) == (
        Verdict.REFUND_FAILED,
        "re_1",
        PRICE,
        at(2),
        None,
    )


def test_a_failure_after_a_match_corrects_it_once() -> None:
    matched = replace(REFUND, latest=3, latest_verdict=Verdict.MATCHED)
    assert refund_statement(matched, at(3), POLICY) is None
    line = refund_statement(replace(matched, failed_at=at(2)), at(3), POLICY)
    assert line is not None
    assert (line.verdict, line.corrects) == (Verdict.REFUND_FAILED, 3)
    stated = replace(REFUND, failed_at=at(2), latest=4, latest_verdict=Verdict.REFUND_FAILED)
    assert refund_statement(stated, at(9), POLICY) is None


def test_a_failed_refund_nothing_owed_stays_missing_here() -> None:
    unowed = replace(REFUND, owed=None, owed_at=None, failed_at=at(2))
    assert refund_verdict(unowed, at(62), POLICY) is Verdict.MISSING_HERE
