"""stockcore.invariant_violations(): silent on a database the store wrote, and each of its
checks speaks up when the data it guards is broken (in a transaction rolled back after)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from server.domain.inventory import AdjustCommand, Finish, Line, ReserveCommand
from server.domain.orders import Actor, cancel_order, confirm_payment, create_order, refund_line
from server.storage.orders_pg import OrderStore
from server.storage.postgres import StockStore
from tests.invariants import assert_invariants_hold, violations

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
ACTOR = Actor("tests", "req-1")
EXPIRY = "stockcore-expiry"
HOUR_MS = 3_600_000
# A hold of the inventory API alone, one committed, and orders pending, paid (one line
# refunded), and cancelled after payment (its units returned by adjustment, its payment
# owed back).
HELD, COMMITTED = "h-held", "h-committed"
PENDING, PAID, REFUNDED = "o-pending", "o-paid", "o-refunded"


@pytest.fixture
async def world(store: StockStore, db: asyncpg.Connection) -> asyncpg.Connection:
    """A small database written by the store alone: stock, holds, orders, sequenced events."""
    for sku in "AB":
        await store.adjust(AdjustCommand(sku, None, 100, "initial", f"init-{sku}", "tests"))
    await store.reserve_batch(
        [
            ReserveCommand(HELD, (Line("A", 1),), HOUR_MS, "tests"),
            ReserveCommand(COMMITTED, (Line("B", 2),), HOUR_MS, "tests"),
        ]
    )
    await store.finish_batch([COMMITTED], Finish.COMMIT, ["tests"])
    orders = OrderStore(store)
    limits = {"default_ttl_s": 300.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}
    await orders.create(
        [
            create_order(oid, "c-1", [("A", 2, 150), ("B", 1, 100)], "EUR", None, ACTOR, **limits)
            for oid in (PENDING, PAID, REFUNDED)
        ]
    )
    await orders.pay(
        [confirm_payment(oid, f"pay-{oid}", 400, "EUR", ACTOR) for oid in (PAID, REFUNDED)],
        EXPIRY,
    )
    await orders.cancel([cancel_order(REFUNDED, "refund", ACTOR)], EXPIRY)
    await orders.refund_lines([refund_line(PAID, "B", 1, "arrived broken", "lr-1", ACTOR)])
    await db.fetch("SELECT * FROM stockcore.relay_step(100, 0)")
    # The provider's events as the webhook receiver records them: the charge that paid
    # PAID, and one for PENDING of another amount, which paid nothing and is to return.
    for event_id, charge_id, order_id, amount, outcome, reason in (
        ("evt-paid", f"pay-{PAID}", PAID, 400, 1, None),
        ("evt-differs", "ch-differs", PENDING, 401, 2, 2),
    ):
        await db.execute(
            "SELECT stockcore.record_payment_event($1, 'charge.succeeded', $2, $3, $4, 'EUR',"
            " now(), $5, $6, '{}')",
            event_id,
            charge_id,
            order_id,
            amount,
            outcome,
            reason,
        )
    # The settlement feed as the reconciler records it (PAID's charge, its fee, a payout,
    # a refund of the charge to return and its failure), and its statements: PAID's
    # charge matched, REFUNDED's payment first missing at the provider and then matched
    # (its exception closed as corrected), the charge to return's amount differing.
    await db.fetchrow(
        "SELECT * FROM stockcore.record_settlement_page('provider', 0, 5,"
        " $1, '{1,2,3,4,5}', '{charge,fee,payout,refund,refund_failure}', $2, $3, $4,"
        " '{400,-42,-358,-401,401}', '{EUR,EUR,EUR,EUR,EUR}', $5, $5)",
        ["txn-1", "txn-2", "txn-3", "txn-4", "txn-5"],
        [f"pay-{PAID}", f"pay-{PAID}", "po-1", "re-1", "re-1"],
        [f"pay-{PAID}", f"pay-{PAID}", None, "ch-differs", "ch-differs"],
        [PAID, PAID, None, PENDING, PENDING],
        [datetime.now(UTC) - timedelta(days=2)] * 2 + [datetime.now(UTC) - timedelta(days=1)] * 3,
    )
    # The two days closed, the first opening at 0, the second at the first's closing.
    await db.fetch("SELECT * FROM stockcore.close_due_days(now(), 'tests')")
    statement = (
        "SELECT stockcore.record_statements('provider', $1, $2, $3, $4, '{400}', '{EUR}',"
        " $5, $6, '{f}', ARRAY[now()], $7)"
    )
    for subject, order_id, verdict, theirs, latest in (
        (f"pay-{PAID}", PAID, 1, 400, None),
        (f"pay-{REFUNDED}", REFUNDED, 2, None, None),
        ("ch-differs", PENDING, 4, 401, None),
    ):
        await db.execute(
            statement, [1], [subject], [order_id], [verdict], [theirs],
            [None if theirs is None else "EUR"], [latest],
        )  # fmt: skip
    missing = await db.fetchval(
        "SELECT statement_id FROM stockcore.reconciliation_statements WHERE verdict = 2"
    )
    await db.execute(
        statement, [1], [f"pay-{REFUNDED}"], [REFUNDED], [1], [400], ["EUR"], [missing]
    )
    return db


async def test_a_database_written_by_the_store_has_no_violations(world: asyncpg.Connection) -> None:
    statuses = await world.fetch("SELECT order_id, status FROM stockcore.orders ORDER BY 1")
    assert [(r["order_id"], r["status"]) for r in statuses] == [
        (PAID, 2),
        (PENDING, 1),
        (REFUNDED, 6),
    ]
    assert await world.fetchval("SELECT count(cursor) FROM stockcore.order_events") == 6
    assert await world.fetchval("SELECT count(*) FROM stockcore.payments_to_return") == 1
    posted = await world.fetch(
        "SELECT kind, debit_account, credit_account, amount_minor FROM stockcore.ledger_transfers"
        " WHERE kind >= 4 ORDER BY kind"
    )
    # The refund of a charge to return, and its failure, move to_return's money (8).
    # ... and a line refunded owes its price back (9), as a cancel owes all it was paid (2).
    assert [tuple(r) for r in posted] == [
        (4, 5, 1, 400), (5, 8, 5, 401), (6, 6, 5, 42), (7, 7, 5, 358), (8, 5, 8, 401),
        (9, 3, 4, 100),
    ]  # fmt: skip
    assert (
        await world.fetchval(
            "SELECT count(*) FROM stockcore.reconciliation_exceptions WHERE resolution = 4"
        )
        == 1
    )
    await assert_invariants_hold(world)


# Each check, and statements that break what it guards. Triggers that keep history and
# events append-only, and the stock CHECKs, are set aside for the breaking transaction.
BREAKAGES: dict[str, list[str]] = {
    "on_hand_is_adjusted_less_committed": [
        "INSERT INTO stockcore.adjustments (idempotency_key, fingerprint, sku, applied_delta,"
        " on_hand_after, reserved_after, caller) VALUES ('ghost', '\\x00', 'A', 5, 0, 0, 't')"
    ],
    "reserved_is_held": [
        f"UPDATE stockcore.reservations SET status = 3, finished_at = now()"
        f" WHERE reservation_id = '{HELD}'"
    ],
    "stock_not_oversold": [
        "ALTER TABLE stockcore.stock DROP CONSTRAINT stock_never_oversold",
        "UPDATE stockcore.stock SET on_hand = reserved - 1 WHERE sku = 'A'",
    ],
    "ledger_matches_stock": [
        "INSERT INTO stockcore.movements (sku, kind, on_hand_delta, reserved_delta, caller)"
        " VALUES ('B', 'adjust', 1, 0, 't')"
    ],
    "hold_matches_its_ledger": [
        # One unit moved from one hold's ledger to another's: the SKU's totals still agree.
        "INSERT INTO stockcore.movements (sku, kind, on_hand_delta, reserved_delta,"
        f" reservation_id, caller) VALUES ('A', 'reserve', 0, 1, '{HELD}', 't'),"
        f" ('A', 'release', 0, -1, '{PENDING}', 't')"
    ],
    "hold_not_overdue": [
        f"UPDATE stockcore.reservations SET expires_at = now() - interval '3 seconds'"
        f" WHERE reservation_id = '{HELD}'"
    ],
    "order_has_hold": [f"DELETE FROM stockcore.reservations WHERE reservation_id = '{PENDING}'"],
    "order_matches_hold": [
        f"UPDATE stockcore.reservations SET quantities = '{{3,1}}' WHERE reservation_id = '{PAID}'"
    ],
    "order_status_matches_hold": [
        f"UPDATE stockcore.reservations SET status = 3 WHERE reservation_id = '{PAID}'"
    ],
    "order_not_overdue": [
        f"UPDATE stockcore.orders SET payment_deadline = now() - interval '3 seconds'"
        f" WHERE order_id = '{PENDING}'"
    ],
    "order_history_complete": [
        f"DELETE FROM stockcore.order_history WHERE order_id = '{PAID}' AND version = 2"
    ],
    "order_events_complete": [
        f"UPDATE stockcore.order_events SET type = 3 WHERE order_id = '{PAID}'"
        " AND order_version = 2"
    ],
    "event_has_order": [
        f"UPDATE stockcore.order_events SET order_id = 'ghost' WHERE order_id = '{PENDING}'"
    ],
    "paid_order_has_payment": [
        f"UPDATE stockcore.payments SET amount_minor = 399 WHERE order_id = '{PAID}'"
    ],
    "payment_has_paid_order": [
        f"UPDATE stockcore.orders SET payment_id = 'other' WHERE order_id = '{PAID}'"
    ],
    "refund_owed": [
        f"UPDATE stockcore.orders SET refund_owed_minor = 0 WHERE order_id = '{REFUNDED}'"
    ],
    # PAID's line B refunded (022_line_refunds.sql).
    "line_refunded_units": [
        f"UPDATE stockcore.orders SET refunded_quantities = '{{0,0}}' WHERE order_id = '{PAID}'"
    ],
    "line_refund_of_its_line": ["UPDATE stockcore.refunds SET sku = 'A' WHERE reason = 3"],
    "refunds_within_paid": [
        "UPDATE stockcore.refunds SET amount_minor = amount_minor + 1 WHERE reason = 1"
    ],
    "cancelled_units_returned": [
        f"DELETE FROM stockcore.adjustments WHERE order_id = '{REFUNDED}' AND sku = 'B'"
    ],
    "order_adjustment_of_cancelled_line": [
        f"UPDATE stockcore.adjustments SET order_id = '{PAID}'"
        f" WHERE order_id = '{REFUNDED}' AND sku = 'B'"
    ],
    "payment_event_paid_its_order": [
        "UPDATE stockcore.payment_events SET object_id = 'ch-ghost' WHERE event_id = 'evt-paid'"
    ],
    "payment_event_to_return_recorded": ["DELETE FROM stockcore.payments_to_return"],
    "payment_to_return_paid_nothing": [
        f"UPDATE stockcore.payments_to_return SET charge_id = 'pay-{PAID}'"
    ],
    "ledger_order_paid": [
        f"DELETE FROM stockcore.ledger_transfers WHERE kind = 1 AND order_id = '{PAID}'"
    ],
    "ledger_refund_owed": [
        "UPDATE stockcore.ledger_transfers SET amount_minor = 1"
        f" WHERE kind = 2 AND order_id = '{REFUNDED}'"
    ],
    "ledger_line_refund_owed": ["DELETE FROM stockcore.ledger_transfers WHERE kind = 9"],
    "ledger_charge_to_return": [
        "UPDATE stockcore.ledger_transfers SET currency = 'USD' WHERE kind = 3"
    ],
    "ledger_transfer_accounts": [
        "UPDATE stockcore.ledger_transfers SET credit_account = 4"
        f" WHERE kind = 1 AND order_id = '{PAID}'"
    ],
    "feed_transfer_has_its_transaction": [
        "UPDATE stockcore.ledger_transfers SET amount_minor = 41 WHERE kind = 6"
    ],
    "feed_transaction_posted": ["DELETE FROM stockcore.ledger_transfers WHERE kind = 7"],
    "settlement_cursor_at_last_read": ["UPDATE stockcore.settlement_cursor SET cursor = 6"],
    "statement_corrects_its_subject": [
        "UPDATE stockcore.reconciliation_statements SET subject_id = 'other'"
        " WHERE corrects IS NOT NULL"
    ],
    # The reconciler's first statement of a subject, written again.
    "statement_corrects_the_one_before": [
        "INSERT INTO stockcore.reconciliation_statements"
        " (subject_kind, subject_id, order_id, verdict, fact_at)"
        " SELECT subject_kind, subject_id, order_id, verdict, fact_at"
        " FROM stockcore.reconciliation_statements WHERE corrects IS NULL"
    ],
    "discrepancy_has_exception": [
        "DELETE FROM stockcore.reconciliation_exceptions WHERE resolution IS NULL"
    ],
    "corrected_exception_resolved": [
        "UPDATE stockcore.reconciliation_exceptions SET resolution = NULL, resolved_by = NULL,"
        " resolved_why = NULL, resolved_at = NULL WHERE resolution = 4"
    ],
    # REFUNDED's cancel and the charge to return each owe a refund (019_refunds.sql).
    "refund_of_refund_owed": ["DELETE FROM stockcore.refunds WHERE reason = 1"],
    "refund_of_payment_to_return": [
        "UPDATE stockcore.refunds SET amount_minor = 1 WHERE reason = 2"
    ],
    "refund_has_provider_id": ["UPDATE stockcore.refunds SET state = 3 WHERE reason = 1"],
    "refund_events_complete": [
        "UPDATE stockcore.refunds SET state = 2, provider_refund_id = 're_x' WHERE reason = 1"
    ],
    "daily_close_continuity": [
        "UPDATE stockcore.daily_closes SET opening_minor = opening_minor + 1,"
        " closing_minor = closing_minor + 1"
        " WHERE day = (SELECT max(day) FROM stockcore.daily_closes)"
    ],
    "daily_close_counts_its_items": [
        "UPDATE stockcore.daily_closes SET fees_minor = fees_minor + 1,"
        " closing_minor = closing_minor - 1"
        " WHERE day = (SELECT max(day) FROM stockcore.daily_closes)"
    ],
    "event_cursors_gap_free": [
        "UPDATE stockcore.order_events SET cursor = cursor + 1"
        " WHERE cursor = (SELECT max(cursor) FROM stockcore.order_events)"
    ],
}


def test_every_check_of_the_function_has_a_breakage() -> None:
    sql = (ROOT / "server/storage/sql/live/invariants.sql").read_text()
    named = {line.split("'")[1] for line in sql.splitlines() if line.startswith("SELECT '")}
    assert named == set(BREAKAGES)


async def broken(
    world: asyncpg.Connection,
    check: str,
    read: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    """What `read` finds with the check's breakage applied, in a transaction rolled back
    after (triggers off, as a repair by hand would run)."""
    transaction = world.transaction()
    await transaction.start()
    try:
        await world.execute("SET LOCAL session_replication_role = replica")
        for statement in BREAKAGES[check]:
            await world.execute(statement)
        return await read(world)
    finally:
        await transaction.rollback()


@pytest.mark.parametrize("check", sorted(BREAKAGES))
async def test_each_check_reports_the_data_it_guards_when_broken(
    world: asyncpg.Connection, check: str
) -> None:
    found = await broken(world, check, violations)

    assert check in {name for name, _, _ in found}, found
    await assert_invariants_hold(world)


async def imbalance(db: asyncpg.Connection) -> dict[str, int]:
    """stockcore.ledger_imbalance(), by currency."""
    rows = await db.fetch("SELECT currency, imbalance_minor FROM stockcore.ledger_imbalance()")
    return {r["currency"]: r["imbalance_minor"] for r in rows}


async def test_the_ledger_the_store_wrote_has_no_imbalance(world: asyncpg.Connection) -> None:
    assert await imbalance(world) == {"EUR": 0}


# The ledger checks' breakages, and what each leaves the ledger off by against its facts.
IMBALANCES: dict[str, dict[str, int]] = {
    "ledger_order_paid": {"EUR": 400},
    "ledger_refund_owed": {"EUR": 399},
    "ledger_line_refund_owed": {"EUR": 100},  # lr-1: one B at 100
    "ledger_charge_to_return": {"EUR": 401, "USD": 401},
    "feed_transfer_has_its_transaction": {"EUR": 1},
    "feed_transaction_posted": {"EUR": 358},
}


@pytest.mark.parametrize("check", sorted(IMBALANCES))
async def test_the_ledger_imbalance_is_what_a_broken_ledger_is_off_by(
    world: asyncpg.Connection, check: str
) -> None:
    found = await broken(world, check, imbalance)

    assert found == IMBALANCES[check]
