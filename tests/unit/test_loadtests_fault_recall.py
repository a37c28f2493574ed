"""Injected payment faults judged against what reconciliation found (loadtests/fault_recall.py),
and the statement lags of the day's reconciliation section (loadtests/reconciliation.py)."""

from __future__ import annotations

import math

from loadtests.fault_recall import CHARGE, REFUND, Found, Injected, Recall, judge
from loadtests.recon import schedule
from loadtests.reconciliation import LagSummary, Reconciled, Subject


def _row(result: Recall, row: str) -> tuple[int, int, int, int]:
    tally = next(t for t in result.tallies if t.row == row)
    return tally.injected, tally.right, tally.missed, tally.masked


def test_a_mismatch_found_as_its_exception_is_right() -> None:
    faults = [Injected("amount_mismatch", "ch_1"), Injected("currency_mismatch", "ch_2")]
    found = Found(open={(CHARGE, "ch_1"): "AMOUNT_DIFFERS", (CHARGE, "ch_2"): "CURRENCY_DIFFERS"})

    result = judge(faults, found)

    assert _row(result, "amount_mismatch") == (1, 1, 0, 0)
    assert _row(result, "currency_mismatch") == (1, 1, 0, 0)
    assert result.recall == 1.0
    assert result.false_exceptions == 0


def test_a_mismatch_without_its_exception_is_missed() -> None:
    result = judge([Injected("amount_mismatch", "ch_1")], Found(open={}))

    assert _row(result, "amount_mismatch") == (1, 0, 1, 0)
    assert result.recall == 0.0


def test_an_exception_of_another_reason_is_missed_and_false() -> None:
    found = Found(open={(CHARGE, "ch_1"): "MISSING_HERE"})

    result = judge([Injected("amount_mismatch", "ch_1")], found)

    assert _row(result, "amount_mismatch") == (1, 0, 1, 0)
    assert result.false_by_reason == {"MISSING_HERE": 1}


def test_two_faults_on_one_charge_count_the_lesser_as_masked() -> None:
    faults = [Injected("amount_mismatch", "ch_1"), Injected("currency_mismatch", "ch_1")]
    found = Found(open={(CHARGE, "ch_1"): "CURRENCY_DIFFERS"})

    result = judge(faults, found)

    assert _row(result, "currency_mismatch") == (1, 1, 0, 0)
    assert _row(result, "amount_mismatch") == (1, 0, 0, 1)
    assert result.recall == 1.0
    assert result.false_exceptions == 0


def test_a_late_settlement_is_judged_on_the_subject_of_its_transaction() -> None:
    faults = [
        Injected("settlement_late", "txn_c"),
        Injected("settlement_late", "txn_r"),
        Injected("settlement_late", "txn_f"),
    ]
    found = Found(
        open={(CHARGE, "ch_1"): "SETTLED_LATE", (REFUND, "re_1"): "SETTLED_LATE"},
        transactions={
            "txn_c": ("charge", "ch_1"),
            "txn_r": ("refund", "re_1"),
            "txn_f": ("fee", "ch_2"),
        },
    )

    result = judge(faults, found)

    assert _row(result, "settlement_late (charge)") == (1, 1, 0, 0)
    assert _row(result, "settlement_late (refund)") == (1, 1, 0, 0)
    # A fee is stated with its charge, which has no exception here: missed.
    assert _row(result, "settlement_late (fee)") == (1, 0, 1, 0)
    assert result.false_exceptions == 0


def test_a_late_fee_is_right_as_its_charge_settled_late() -> None:
    faults = [Injected("settlement_late", "txn_f"), Injected("settlement_late", "txn_c")]
    found = Found(
        open={(CHARGE, "ch_1"): "SETTLED_LATE"},
        transactions={"txn_f": ("fee", "ch_1"), "txn_c": ("charge", "ch_1")},
    )

    result = judge(faults, found)

    # Both the charge and its fee late: one exception explains both.
    assert _row(result, "settlement_late (fee)") == (1, 1, 0, 0)
    assert _row(result, "settlement_late (charge)") == (1, 1, 0, 0)
    assert result.false_exceptions == 0


def test_a_late_fee_beside_a_mismatch_is_masked() -> None:
    faults = [Injected("settlement_late", "txn_f"), Injected("amount_mismatch", "ch_1")]
    found = Found(
        open={(CHARGE, "ch_1"): "AMOUNT_DIFFERS"}, transactions={"txn_f": ("fee", "ch_1")}
    )

    result = judge(faults, found)

    assert _row(result, "amount_mismatch") == (1, 1, 0, 0)
    assert _row(result, "settlement_late (fee)") == (1, 0, 0, 1)


def test_a_lost_confirmation_is_right_once_recovered_from_the_feed() -> None:
    faults = [Injected("confirmation_lost", "ch_1"), Injected("confirmation_lost", "ch_2")]
    found = Found(open={}, recovered=frozenset({"ch_1"}), recorded=frozenset({"ch_1"}))

    result = judge(faults, found)

    assert _row(result, "confirmation_lost") == (2, 1, 1, 0)


def test_webhook_faults_are_absorbed_when_the_charge_is_recorded_without_exception() -> None:
    faults = [Injected("webhook_duplicated", "ch_1"), Injected("webhook_dropped", "ch_2")]
    found = Found(open={(CHARGE, "ch_2"): "MISSING_HERE"}, recorded=frozenset({"ch_1"}))

    result = judge(faults, found)

    assert _row(result, "webhook_duplicated") == (1, 1, 0, 0)
    assert _row(result, "webhook_dropped") == (1, 0, 1, 0)
    assert result.false_by_reason == {"MISSING_HERE": 1}


def test_a_webhook_fault_on_a_mismatched_charge_is_absorbed_beside_its_exception() -> None:
    faults = [Injected("amount_mismatch", "ch_1"), Injected("webhook_delayed", "ch_1")]
    found = Found(open={(CHARGE, "ch_1"): "AMOUNT_DIFFERS"}, recorded=frozenset({"ch_1"}))

    result = judge(faults, found)

    assert _row(result, "webhook_delayed") == (1, 1, 0, 0)
    assert result.false_exceptions == 0


def test_a_declined_charge_and_its_failed_event_are_absorbed_when_nothing_is_recorded() -> None:
    faults = [Injected("declined", "ch_1"), Injected("webhook_reordered", "ch_1")]

    result = judge(faults, Found(open={}))

    assert _row(result, "declined") == (1, 1, 0, 0)
    assert _row(result, "webhook_reordered") == (1, 1, 0, 0)


def test_refund_faults_a_late_one_absorbed_a_failed_one_found_as_refund_failed() -> None:
    faults = [
        Injected("refund_late", "re_1"),
        Injected("refund_failed", "re_2"),
        Injected("refund_failed", "re_3"),
    ]
    found = Found(
        open={(REFUND, "re_2"): "REFUND_FAILED"},
        settled_refunds=frozenset({"re_1", "re_2", "re_3"}),
    )

    result = judge(faults, found)

    assert _row(result, "refund_late") == (1, 1, 0, 0)
    assert _row(result, "refund_failed") == (2, 1, 1, 0)
    assert result.false_exceptions == 0


def test_a_late_refund_failure_is_masked_by_its_refund_failed() -> None:
    faults = [Injected("refund_failed", "re_1"), Injected("settlement_late", "txn_x")]
    found = Found(
        open={(REFUND, "re_1"): "REFUND_FAILED"},
        transactions={"txn_x": ("refund_failure", "re_1")},
    )

    result = judge(faults, found)

    assert _row(result, "refund_failed") == (1, 1, 0, 0)
    assert _row(result, "settlement_late (refund_failure)") == (1, 0, 0, 1)
    assert result.recall == 1.0


def test_an_exception_nothing_explains_is_false() -> None:
    found = Found(open={(CHARGE, "ch_9"): "MISSING_AT_PROVIDER", (REFUND, "re_9"): "MISSING_HERE"})

    result = judge([], found)

    assert result.false_by_reason == {"MISSING_AT_PROVIDER": 1, "MISSING_HERE": 1}
    assert math.isnan(result.recall)


def test_knobs_of_the_same_things_are_set_apart_within_a_period() -> None:
    due = schedule(0.01)

    charges = dict((knob, at) for at, knob in due["charges"])
    assert charges["amount_mismatch_rate"] == 0
    assert charges["currency_mismatch_rate"] == 33
    assert charges["confirmation_lost_rate"] == 67
    assert [at for at, _ in due["charges"]] == sorted(at for at, _ in due["charges"])
    assert dict((k, at) for at, k in due["refunds"]) == {
        "refund_fail_rate": 0,
        "refund_late_rate": 50,
    }


def test_lag_summary_interpolates_percentiles_in_any_order() -> None:
    lag = LagSummary.of([3.0, 1.0, 2.0, 4.0, 5.0])

    assert (lag.count, lag.p50_s, lag.max_s) == (5, 3.0, 5.0)
    assert math.isclose(lag.p99_s, 4.96)


def test_lag_summary_of_nothing_is_nan() -> None:
    lag = LagSummary.of([])

    assert lag.count == 0
    assert math.isnan(lag.p50_s) and math.isnan(lag.p99_s) and math.isnan(lag.max_s)


def test_reconciled_counts_the_unstated_and_the_balance() -> None:
    found = Reconciled(
        [Subject("payment", "ch_1", 0.5), Subject("refund", "rf_1", None)],
        {"MISSING_HERE": 1},
        {"EUR": 0, "USD": 0},
    )

    assert found.unstated == 1
    assert found.lag.count == 1 and found.lag.max_s == 0.5
    assert found.balanced
    assert not Reconciled([], {}, {"EUR": 7}).balanced
