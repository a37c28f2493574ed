"""Carts in PostgreSQL: a plain reservation changed line by line (set_reservation_lines)
and made into an order (order_holds), each one call of a live SQL function that decides
under the reservation's lock; and the races with the expiry sweep and a second
conversion, decided there once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest

from server.domain.inventory import (
    Line,
    ReservationStatus,
    SetLine,
    set_line,
)
from server.domain.orders import Actor, CreateOrder, OrderStatus, create_order
from server.storage.orders_pg import OrderStore, TakeOverCode
from server.storage.postgres import LineCode, ReserveCode, StockStore
from tests.invariants import assert_invariants_hold
from tests.support import hold, stock_up

LIMITS = {"default_ttl_s": 300.0, "min_ttl_s": 0.1, "max_ttl_s": 86_400.0}
ACTOR = Actor("tests", "req-1")
EXPIRY = "stockcore-expiry"
PRICES = {"A": 100, "B": 250, "C": 40}


def change(
    rid: str, change_id: str, sku: str, quantity: int, customer: str | None = None, ttl_s=60.0
) -> SetLine:
    return set_line(rid, change_id, sku, quantity, ttl_s, "tests", customer_id=customer, **LIMITS)


def checkout(
    rid: str,
    lines: dict[str, int],
    customer: str = "alice",
    window: float = 120.0,
    bound: str | None = None,
) -> CreateOrder:
    priced = [(sku, qty, PRICES[sku]) for sku, qty in lines.items()]
    return create_order(
        "", customer, priced, "EUR", window, ACTOR, reservation_id=rid, bound_customer=bound,
        **LIMITS,
    )  # fmt: skip


async def cart(store: StockStore, rid: str, customer: str | None = "alice", **lines: int) -> None:
    command = replace(hold(rid, *lines.items()), customer_id=customer)
    (held,), _ = await store.reserve_batch([command])
    assert held.code is ReserveCode.HELD, held


async def set_lines(store: StockStore, *changes: SetLine):
    results, _ = await store.set_lines(list(changes))
    return results


async def units(db: asyncpg.Connection, sku: str) -> tuple[int, int]:
    row = await db.fetchrow("SELECT on_hand, reserved FROM stockcore.stock WHERE sku = $1", sku)
    return row["on_hand"], row["reserved"]


@pytest.fixture
async def stocked(store: StockStore) -> StockStore:
    """The store with 10 units each of A, B and C."""
    await stock_up(store, {"A": 10, "B": 10, "C": 10})
    return store


async def test_lines_are_added_changed_and_removed_one_by_one_with_the_units_they_hold(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "cart-1", A=1)
    before = await db.fetchval(
        "SELECT expires_at FROM stockcore.reservations WHERE reservation_id = 'cart-1'"
    )

    added, grown, shrunk, gone = await set_lines(
        stocked,
        change("cart-1", "c-1", "B", 2),
        change("cart-1", "c-2", "A", 4),
        change("cart-1", "c-3", "B", 1),
        change("cart-1", "c-4", "A", 0),
    )

    assert [r.code for r in (added, grown, shrunk, gone)] == [LineCode.APPLIED] * 4
    assert added.reservation and added.reservation.lines == (Line("A", 1), Line("B", 2))
    assert grown.reservation and grown.reservation.lines == (Line("A", 4), Line("B", 2))
    assert gone.reservation and gone.reservation.lines == (Line("B", 1),)
    # Each change holds the cart for its ttl (60 s) from then: here, sooner than Reserve's hour.
    left = (gone.reservation.expires_at - await db.fetchval("SELECT now()")).total_seconds()
    assert gone.reservation.expires_at < before and 50 < left <= 60
    assert await units(db, "A") == (10, 0)
    assert await units(db, "B") == (10, 1)
    moves = await db.fetch(
        "SELECT kind, sku, reserved_delta FROM stockcore.movements"
        " WHERE reservation_id = 'cart-1' ORDER BY movement_id"
    )
    assert [tuple(m) for m in moves] == [
        ("reserve", "A", 1),
        ("reserve", "B", 2),
        ("reserve", "A", 3),
        ("release", "B", -1),
        ("release", "A", -4),
    ]
    await assert_invariants_hold(db)


async def test_a_change_beyond_the_stock_is_refused_whole_with_what_the_cart_could_hold(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "cart-1", A=3)
    await cart(stocked, "other", customer="bob", A=5)

    (short,) = await set_lines(stocked, change("cart-1", "c-1", "A", 9))
    (unknown,) = await set_lines(stocked, change("cart-1", "c-2", "NOPE", 1))
    # The refused change left no row: sent again, it is decided again.
    (fits,) = await set_lines(stocked, change("cart-1", "c-1", "A", 5))

    assert (short.code, short.available) == (LineCode.REJECTED, 5)  # its 3 and 2 left
    assert (unknown.code, unknown.available) == (LineCode.REJECTED, None)
    assert fits.code is LineCode.APPLIED
    assert await units(db, "A") == (10, 10)
    await assert_invariants_hold(db)


async def test_a_change_id_applies_once_and_names_one_change(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "cart-1", A=1)
    (first,) = await set_lines(stocked, change("cart-1", "c-1", "A", 3))
    (later,) = await set_lines(stocked, change("cart-1", "c-2", "A", 2))
    # A late retry of the first change does not take the cart back to 3.
    retry, other, twice, twice_other = await set_lines(
        stocked,
        change("cart-1", "c-1", "A", 3),
        change("cart-1", "c-1", "B", 3),
        change("cart-1", "c-3", "C", 1),
        change("cart-1", "c-3", "C", 2),
    )

    assert (first.code, later.code) == (LineCode.APPLIED, LineCode.APPLIED)
    assert retry.code is LineCode.REPEAT
    assert retry.reservation and retry.reservation.lines == (Line("A", 2),)
    assert other.code is LineCode.CONFLICT
    assert (twice.code, twice_other.code) == (LineCode.APPLIED, LineCode.CONFLICT)
    assert await units(db, "A") == (10, 2)
    assert await units(db, "C") == (10, 1)
    await assert_invariants_hold(db)


async def test_only_a_held_plain_reservation_of_the_callers_customer_changes(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "alices", A=1)
    await cart(stocked, "services", customer=None, A=1)
    await cart(stocked, "released", A=1)
    await stocked.finish_batch(["released"], _release(), ["tests"])
    orders = OrderStore(stocked)
    (made,) = await orders.take_over([checkout("ordered", {"A": 1})])
    assert made.code is TakeOverCode.UNKNOWN
    await cart(stocked, "ordered", A=1)
    (made,) = await orders.take_over([checkout("ordered", {"A": 1})])
    assert made.code is TakeOverCode.CREATED

    results = await set_lines(
        stocked,
        change("alices", "c-1", "A", 2, customer="bob"),
        change("services", "c-2", "A", 2, customer="alice"),
        change("released", "c-3", "A", 2),
        change("ordered", "c-4", "A", 2, customer="alice"),
        change("missing", "c-5", "A", 2),
        change("services", "c-6", "A", 2),
    )

    assert [r.code for r in results] == [
        LineCode.OTHER_CUSTOMER,
        LineCode.OTHER_CUSTOMER,
        LineCode.NOT_HELD,
        LineCode.ORDER_OWNED,
        LineCode.UNKNOWN,
        LineCode.APPLIED,  # a service changes any plain reservation
    ]
    assert results[0].reservation is None and results[3].reservation is None
    await assert_invariants_hold(db)


def _release():
    from server.domain.inventory import Finish

    return Finish.RELEASE


async def test_a_cart_becomes_its_order_in_one_step_without_touching_stock(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "cart-1", A=1)
    await set_lines(stocked, change("cart-1", "c-1", "B", 2), change("cart-1", "c-2", "A", 3))
    versions = await db.fetch("SELECT sku, version FROM stockcore.stock ORDER BY sku")
    orders = OrderStore(stocked)

    (made,) = await orders.take_over([checkout("cart-1", {"A": 3, "B": 2}, window=90)])

    assert made.code is TakeOverCode.CREATED and made.order is not None
    order = made.order
    assert (order.order_id, order.customer_id, order.status) == (
        "cart-1",
        "alice",
        OrderStatus.PENDING_PAYMENT,
    )
    assert [(x.sku, x.quantity, x.unit_price_minor) for x in order.lines] == [
        ("A", 3, 100),
        ("B", 2, 250),
    ]
    assert order.total_minor == 800
    hold_row = await db.fetchrow(
        "SELECT status, expires_at FROM stockcore.reservations WHERE reservation_id = 'cart-1'"
    )
    assert hold_row["status"] == ReservationStatus.HELD
    assert hold_row["expires_at"] == order.payment_deadline
    # The units stayed held: no stock row was written.
    assert await db.fetch("SELECT sku, version FROM stockcore.stock ORDER BY sku") == versions
    assert await units(db, "A") == (10, 3)
    events = await db.fetch("SELECT type FROM stockcore.order_events WHERE order_id = 'cart-1'")
    assert [e["type"] for e in events] == [1]
    await assert_invariants_hold(db)


async def test_an_order_must_list_the_carts_lines_and_be_its_customers(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "alices", A=2)
    await cart(stocked, "services", customer=None, A=1)
    orders = OrderStore(stocked)

    results = await orders.take_over(
        [
            checkout("alices", {"A": 1}),
            checkout("alices", {"A": 2}, customer="bob"),
            checkout("alices", {"A": 2}, bound="bob", customer="bob"),
            checkout("services", {"A": 1}, bound="alice"),
            checkout("nothing", {"A": 1}),
        ]
    )

    assert [r.code for r in results] == [
        TakeOverCode.LINES_DIFFER,
        TakeOverCode.OTHER_CUSTOMER,
        TakeOverCode.OTHER_CUSTOMER,
        TakeOverCode.OTHER_CUSTOMER,
        TakeOverCode.UNKNOWN,
    ]
    assert results[0].hold and results[0].hold.lines == (Line("A", 2),)
    assert await db.fetchval("SELECT count(*) FROM stockcore.orders") == 0
    # A service's reservation becomes a service's order for any customer.
    (made,) = await orders.take_over([checkout("services", {"A": 1}, customer="carol")])
    assert made.code is TakeOverCode.CREATED
    await assert_invariants_hold(db)


async def test_a_retried_conversion_answers_with_the_order_and_another_is_refused(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "cart-1", A=1)
    await cart(stocked, "cart-2", A=1)
    orders = OrderStore(stocked)
    (first,) = await orders.take_over([checkout("cart-1", {"A": 1})])

    # Two at once, in one batch and in two statements racing for the reservation's lock.
    same, other = await orders.take_over(
        [checkout("cart-1", {"A": 1}), checkout("cart-1", {"A": 1}, window=30)]
    )
    racing = await asyncio.gather(
        orders.take_over([checkout("cart-2", {"A": 1})]),
        orders.take_over([checkout("cart-2", {"A": 1})]),
        orders.take_over([checkout("cart-2", {"A": 1}, window=30)]),
    )

    assert first.code is TakeOverCode.CREATED
    assert same.code is TakeOverCode.REPEAT and same.order == first.order
    assert other.code is TakeOverCode.CONFLICT
    codes = sorted(r.code for (r,) in racing)
    assert codes.count(TakeOverCode.CREATED) == 1
    assert set(codes) <= {TakeOverCode.CREATED, TakeOverCode.REPEAT, TakeOverCode.CONFLICT}
    assert await db.fetchval("SELECT count(*) FROM stockcore.orders") == 2
    assert await db.fetchval("SELECT count(*) FROM stockcore.order_events") == 2
    await assert_invariants_hold(db)


async def test_an_expired_cart_leaves_no_order_and_its_units_go_back(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    await cart(stocked, "cart-1", A=2)
    await set_lines(stocked, change("cart-1", "c-1", "B", 1, ttl_s=0.2))
    await asyncio.sleep(0.3)

    (late_change,) = await set_lines(stocked, change("cart-1", "c-2", "B", 2))
    (late,) = await OrderStore(stocked).take_over([checkout("cart-1", {"A": 2, "B": 1})])
    sweep = await stocked.expire_due(100, EXPIRY, "sweep")
    (after,) = await OrderStore(stocked).take_over([checkout("cart-1", {"A": 2, "B": 1})])

    assert late_change.code is LineCode.NOT_HELD
    assert late.code is TakeOverCode.NOT_HELD and late.hold is not None
    assert (sweep.holds_expired, sweep.orders_expired) == (1, 0)
    assert after.code is TakeOverCode.NOT_HELD and after.hold is not None
    assert after.hold.status is ReservationStatus.EXPIRED
    assert await units(db, "A") == (10, 0) and await units(db, "B") == (10, 0)
    assert await db.fetchval("SELECT count(*) FROM stockcore.orders") == 0
    await assert_invariants_hold(db)


async def test_a_conversion_holding_the_cart_is_not_expired_under_it(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    """The sweep finds the cart due while a conversion holds its lock: it skips it, and
    the cart is the order's hold when the conversion commits (until the payment deadline)."""
    await cart(stocked, "cart-1", A=2)
    await set_lines(stocked, change("cart-1", "c-1", "A", 1, ttl_s=1.0))
    command = checkout("cart-1", {"A": 1})
    from server.storage.orders_pg import order_request

    tx = db.transaction()
    await tx.start()
    try:
        row = await db.fetchrow(
            "SELECT * FROM stockcore.order_holds($1, $2)",
            [order_request(command, stocked.shard_count)],
            [None],
        )
        assert row["results"][0]["code"] == TakeOverCode.CREATED
        # Past the cart's old expiry, the sweep sees it due, and cannot have it.
        await asyncio.sleep(1.1)
        sweep = await stocked.expire_due(100, EXPIRY, "sweep")
        assert (sweep.due, sweep.holds_expired) == (1, 0)
    finally:
        await tx.commit()
    sweep = await stocked.expire_due(100, EXPIRY, "sweep")

    assert sweep.due == 0
    status = await db.fetchval("SELECT status FROM stockcore.orders WHERE order_id = 'cart-1'")
    assert status == OrderStatus.PENDING_PAYMENT
    await assert_invariants_hold(db)


async def test_converting_while_the_cart_expires_ends_one_way_or_the_other(
    stocked: StockStore, db: asyncpg.Connection
) -> None:
    """A conversion and the sweep race for a cart at its expiry, round after round until
    both outcomes were seen: either the order holds the cart's units until its deadline,
    or the cart expired, its units went back and no order exists; never a mix."""
    orders = OrderStore(stocked)
    seen: set[str] = set()
    round_ = 0
    while seen != {"ordered", "expired"}:
        round_ += 1
        assert round_ <= 200, f"only {seen} after 200 rounds"
        rid = f"cart-{round_}"
        await cart(stocked, rid, A=1)
        await set_lines(stocked, change(rid, f"{rid}/1", "A", 1, ttl_s=0.1))
        # Aim at the expiry, a little before or after it.
        await asyncio.sleep(0.09 + (round_ % 5) * 0.005)
        made, _ = await asyncio.gather(
            orders.take_over([checkout(rid, {"A": 1}, window=60)]),
            stocked.expire_due(100, EXPIRY, f"sweep-{round_}"),
        )
        (outcome,) = made
        await stocked.expire_due(100, EXPIRY, f"after-{round_}")
        status = await db.fetchval(
            "SELECT status FROM stockcore.reservations WHERE reservation_id = $1", rid
        )
        order = await db.fetchval("SELECT status FROM stockcore.orders WHERE order_id = $1", rid)
        if outcome.code is TakeOverCode.CREATED:
            assert (status, order) == (ReservationStatus.HELD, OrderStatus.PENDING_PAYMENT)
            seen.add("ordered")
        else:
            assert outcome.code is TakeOverCode.NOT_HELD, outcome
            assert (status, order) == (ReservationStatus.EXPIRED, None)
            seen.add("expired")
        await assert_invariants_hold(db)
    assert await units(db, "A") == (10, await db.fetchval("SELECT count(*) FROM stockcore.orders"))
