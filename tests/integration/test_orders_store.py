"""OrderStore against a real PostgreSQL: writes inside a caller's transaction, reads,
keyset pages, and the rules the schema enforces on history and events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from stockcore.v1 import orders_pb2 as pb

from server.domain.order_queries import PagePosition, list_orders, watch_filter
from server.domain.orders import (
    Actor,
    OrderStatus,
    Step,
    cancel,
    cancel_order,
    confirm_payment,
    create_order,
    pay,
)
from server.rpc.orders_convert import event_payload
from server.storage.orders_pg import OrderStore
from server.storage.outbox_pg import OutboxSession
from server.storage.postgres import StockStore
from tests.conftest import Servers

ACTOR = Actor("tests", "req-1")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LIMITS = {"default_ttl_s": 300.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}


@pytest.fixture
def orders(store: StockStore) -> OrderStore:
    """An OrderStore over the test database."""
    return OrderStore(store, event_payload)


def created(order_id: str, customer: str = "c-1", at: datetime = T0) -> Step:
    command = create_order(order_id, customer, [("A", 2, 150)], "EUR", None, ACTOR, **LIMITS)
    return command.created(at, at + timedelta(minutes=5))


async def insert(orders: OrderStore, steps: Sequence[Step]) -> None:
    async def work(conn: asyncpg.Connection) -> None:
        await orders.insert_created(conn, steps)

    await orders.stock.transaction(work)


async def write(orders: OrderStore, steps: Sequence[Step]) -> None:
    async def work(conn: asyncpg.Connection) -> None:
        await orders.lock(conn, [s.order.order_id for s in steps])
        await orders.write_steps(conn, steps)

    await orders.stock.transaction(work)


async def test_a_created_order_is_stored_with_its_history_and_an_unsequenced_event(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    step = created("o-1")
    await insert(orders, [step])

    found = await orders.get_with_history("o-1")
    assert found is not None
    order, history = found
    assert order == step.order
    assert history == [step.change]
    row = await db.fetchrow("SELECT * FROM stockcore.order_events")
    assert (row["event_id"], row["cursor"], row["published_at"]) == ("o-1/1", None, None)
    event = pb.OrderEvent.FromString(row["payload"])
    assert (event.event_id, event.type, event.order.total_minor, event.cursor) == (
        "o-1/1",
        pb.EVENT_TYPE_ORDER_CREATED,
        300,
        0,
    )


async def test_transitions_update_the_row_and_append_history_and_events(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    step = created("o-1")
    await insert(orders, [step])
    paid = pay(
        step.order, confirm_payment("o-1", "p-1", 300, "EUR", ACTOR), T0 + timedelta(seconds=1)
    )
    assert paid is not None
    await write(orders, [paid])
    undone = cancel(paid.order, cancel_order("o-1", "refund", ACTOR), T0 + timedelta(seconds=2))
    assert undone is not None
    await write(orders, [undone])

    found = await orders.get_with_history("o-1")
    assert found is not None
    assert found[0] == undone.order
    assert [c.to_status for c in found[1]] == [
        OrderStatus.PENDING_PAYMENT,
        OrderStatus.PAID,
        OrderStatus.CANCELLED,
    ]
    assert await db.fetchval(
        "SELECT array_agg(event_id ORDER BY id) FROM stockcore.order_events"
    ) == [
        "o-1/1",
        "o-1/2",
        "o-1/3",
    ]


async def test_a_step_made_from_another_version_is_refused_whole(orders: OrderStore) -> None:
    step = created("o-1")
    await insert(orders, [step])
    paid = pay(step.order, confirm_payment("o-1", "p-1", 300, "EUR", ACTOR), T0)
    assert paid is not None
    await write(orders, [paid])
    stale = cancel(step.order, cancel_order("o-1", "late", ACTOR), T0)
    assert stale is not None

    with pytest.raises(RuntimeError, match="another version"):
        await write(orders, [stale])

    found = await orders.get_with_history("o-1")
    assert found is not None and found[0] == paid.order and len(found[1]) == 2


async def test_history_is_append_only(orders: OrderStore, db: asyncpg.Connection) -> None:
    await insert(orders, [created("o-1")])
    for statement in (
        "UPDATE stockcore.order_history SET reason = 'rewritten'",
        "DELETE FROM stockcore.order_history",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)


async def test_events_change_only_by_getting_a_cursor_once_and_being_published(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await insert(orders, [created("o-1")])
    await db.execute("UPDATE stockcore.order_events SET cursor = 1")
    await db.execute("UPDATE stockcore.order_events SET published_at = now()")
    for statement in (
        "UPDATE stockcore.order_events SET cursor = 2",
        "UPDATE stockcore.order_events SET payload = ''::bytea",
        "DELETE FROM stockcore.order_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)


async def test_the_schema_refuses_a_shipped_order_without_a_parcel(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await insert(orders, [created("o-1")])
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "UPDATE stockcore.orders SET status = 3, path = '{1,2,3}', version = 3, payment_id = 'p'"
        )


async def test_pages_run_newest_first_with_ties_broken_by_id_and_never_shift(
    orders: OrderStore,
) -> None:
    # Three orders share each creation time, as orders of one batch do.
    steps = [created(f"o-{i:02}", at=T0 + timedelta(seconds=i // 3)) for i in range(12)]
    await insert(orders, steps)
    await insert(orders, [created("x-1", customer="c-2")])
    expected = sorted(steps, key=lambda s: (s.order.created_at, s.order.order_id), reverse=True)

    seen: list[str] = []
    query = list_orders("c-1", 0, None, None, 5, "")
    while True:
        page, last = await orders.page(query)
        seen += [o.order_id for o in page]
        # A newer order arriving between pages lands before every page handed out.
        await insert(orders, [created(f"new-{len(seen)}", at=T0 + timedelta(days=1))])
        if last is None:
            break
        query = list_orders("c-1", 0, None, None, 5, query.token(last))
    assert seen == [s.order.order_id for s in expected]


async def test_pages_filter_by_status_and_creation_range(orders: OrderStore) -> None:
    steps = [created(f"o-{i}", at=T0 + timedelta(hours=i)) for i in range(6)]
    await insert(orders, steps)
    undone = cancel(steps[2].order, cancel_order("o-2", "r", ACTOR), T0)
    assert undone is not None
    await write(orders, [undone])

    page, _ = await orders.page(list_orders("c-1", int(OrderStatus.CANCELLED), None, None, 50, ""))
    assert [o.order_id for o in page] == ["o-2"]
    window = list_orders("c-1", 0, T0 + timedelta(hours=1), T0 + timedelta(hours=4), 50, "")
    page, last = await orders.page(window)
    assert ([o.order_id for o in page], last) == (["o-3", "o-2", "o-1"], None)
    page, last = await orders.page(replace(window, page_size=2))
    assert last == PagePosition(T0 + timedelta(hours=2), "o-2")


async def test_events_after_a_cursor_follow_the_filter(orders: OrderStore, clean: Servers) -> None:
    dsn = clean.pg_dsn
    await insert(orders, [created("o-1"), created("o-2", customer="c-2"), created("o-3")])
    session = await OutboxSession.open(dsn, 5)
    try:
        assert await session.sequence(100) == 3
    finally:
        await session.close()
    everything = await orders.events(watch_filter("", "", [], 0), 0, 3, 10)
    assert [cursor for cursor, _ in everything] == [1, 2, 3]
    mine = await orders.events(watch_filter("c-1", "", [], 0), 0, 3, 10)
    assert [pb.OrderEvent.FromString(p).order_id for _, p in mine] == ["o-1", "o-3"]
    after = await orders.events(watch_filter("", "o-3", [1], 0), 1, 3, 10)
    assert [cursor for cursor, _ in after] == [3]
    assert await orders.events(watch_filter("", "", [2], 0), 0, 3, 10) == []
    assert await orders.last_cursor() == 3
