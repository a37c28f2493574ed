"""The provider balance's daily close over the real stack: settlement pages recorded as
the reconciler records them (with provider times on past days), the days closed as the
reconciler closes them, and each close read through ReconciliationService over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime

import asyncpg
import pytest

from clients.credentials import Credentials
from clients.errors import InvalidArgument, NotFound
from clients.reconciliation import DailyClose, LateItem, ReconciliationClient
from payments.reconciler.feed import BalanceTransaction, FeedPage
from payments.reconciler.store import ReconciliationStore
from server.app import App
from tests.support import connected

DAY_1, DAY_2, DAY_3 = date(2020, 3, 1), date(2020, 3, 2), date(2020, 3, 3)


def at(day: date, hour: int = 12) -> datetime:
    """A provider time on a UTC day."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[ReconciliationStore]:
    """The reconciler's store on the test database."""
    opened = await ReconciliationStore.connect(dsn, pool_size=2, timeout=10.0)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def finance(
    app: App, credentials_for: Callable[..., Credentials]
) -> AsyncIterator[ReconciliationClient]:
    """A finance reader's client."""
    credentials = credentials_for("finance-desk", scopes=("finance:read",))
    async with ReconciliationClient(f"127.0.0.1:{app.port}", credentials=credentials) as client:
        yield client


async def feed(store: ReconciliationStore, *moves: tuple[str, str, int, datetime]) -> None:
    """Record (txn id, type, signed amount, provider time) as the next page of the feed."""
    after = await store.cursor()
    txns = [
        BalanceTransaction(
            txn_id,
            after + n + 1,
            kind,
            # A charge and its fee name the charge, a refund its own id, a payout its own.
            f"ch_{txn_id}" if kind in ("charge", "fee") else f"src_{txn_id}",
            f"order-{txn_id}" if kind != "payout" else None,
            amount,
            "EUR",
            created,
            created,
        )
        for n, (txn_id, kind, amount, created) in enumerate(moves)
    ]
    charges = {t.source_id: "ch_x" for t in txns if t.type in ("refund", "refund_failure")}
    done = await store.record_page(after, FeedPage(txns, after + len(txns), False), charges)
    assert done.moved


def figures(close: DailyClose) -> tuple[int, int, int, int, int, int, int]:
    return (
        close.opening_minor,
        close.charges_minor,
        close.refunds_minor,
        close.fees_minor,
        close.payouts_minor,
        close.refund_failures_minor,
        close.closing_minor,
    )


async def test_days_close_once_in_order_each_opening_at_the_last_closing(
    store: ReconciliationStore, finance: ReconciliationClient
) -> None:
    await feed(
        store,
        ("c1", "charge", 1000, at(DAY_1)),
        ("f1", "fee", -59, at(DAY_1)),
        ("c2", "charge", 500, at(DAY_2, 1)),
        ("r2", "refund", -200, at(DAY_2, 2)),
        ("p2", "payout", -800, at(DAY_2, 23)),
    )
    open_first = await finance.get_daily_close("EUR", DAY_1)
    assert not open_first.closed and figures(open_first) == (0, 1000, 0, 59, 0, 0, 941)

    closed = await store.close_due_days(at(DAY_3, 0))

    assert closed == [("EUR", DAY_1), ("EUR", DAY_2)]
    first, second = [await finance.get_daily_close("EUR", d) for d in (DAY_1, DAY_2)]
    assert first.closed and first.closed_by == "reconciler" and first.close_time is not None
    assert figures(first) == (0, 1000, 0, 59, 0, 0, 941)
    assert figures(second) == (941, 500, 200, 0, 800, 0, 441)
    assert second.late_items == ()
    # Nothing more is due, and a closed day is closed once.
    assert await store.close_due_days(at(DAY_3, 0)) == []
    assert await finance.get_daily_close("EUR", DAY_1) == first


async def test_a_late_item_lands_in_the_next_open_day_naming_its_own(
    store: ReconciliationStore, finance: ReconciliationClient, dsn: str
) -> None:
    await feed(store, ("c1", "charge", 1000, at(DAY_1)))
    assert await store.close_due_days(at(DAY_2, 0)) == [("EUR", DAY_1)]
    first = await finance.get_daily_close("EUR", DAY_1)

    # A charge of the closed day read only now, and a failed refund of the next day.
    await feed(
        store, ("late", "charge", 300, at(DAY_1, 22)), ("rf", "refund_failure", 200, at(DAY_2))
    )

    pending = await finance.get_daily_close("EUR", DAY_2)
    assert not pending.closed and figures(pending) == (1000, 300, 0, 0, 0, 200, 1500)
    [late] = pending.late_items
    assert (late.txn_id, late.type, late.amount_minor, late.belongs_to) == (
        "late",
        "charge",
        300,
        DAY_1,
    )
    assert await store.close_due_days(at(DAY_3, 0)) == [("EUR", DAY_2)]
    second = await finance.get_daily_close("EUR", DAY_2)
    assert second.closed and figures(second) == figures(pending)
    assert second.late_items == (LateItem(late.transfer_id, "late", "charge", 300, DAY_1),)
    # The day it belongs to is as it was closed; the next open day starts at 1500.
    assert await finance.get_daily_close("EUR", DAY_1) == first
    assert (await finance.get_daily_close("EUR", DAY_3)).opening_minor == 1500
    async with connected(dsn) as conn:
        assert await conn.fetch("SELECT * FROM stockcore.invariant_violations()") == []


async def test_a_closed_day_refuses_every_change(store: ReconciliationStore, dsn: str) -> None:
    await feed(store, ("c1", "charge", 1000, at(DAY_1)))
    await store.close_due_days(at(DAY_2, 0))
    async with connected(dsn) as conn:
        for statement in (
            "UPDATE stockcore.daily_closes SET closing_minor = 0, opening_minor = -1000",
            "DELETE FROM stockcore.daily_close_items",
            "DELETE FROM stockcore.daily_closes",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        # Another close of the day, or one out of order, changes nothing either.
        assert await conn.fetchval("SELECT stockcore.close_day('EUR', $1, 'x')", DAY_1) == 1
        assert await conn.fetchval("SELECT stockcore.close_day('EUR', $1, 'x')", DAY_3) == 2
        assert await conn.fetchval("SELECT stockcore.close_day('USD', $1, 'x')", DAY_1) == 4


async def test_a_currency_never_moved_or_a_bad_day_is_refused(
    finance: ReconciliationClient,
) -> None:
    with pytest.raises(NotFound):
        await finance.get_daily_close("USD", DAY_1)
    with pytest.raises(InvalidArgument) as bad:
        await finance.get_daily_close("usd", date(1999, 1, 1))
    assert [v.field for v in bad.value.field_violations] == ["currency_code", "day"]
