"""WatchOrders over gRPC: events in cursor order, filters, live tailing, and a resume
after a disconnect that misses nothing and repeats nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import orders_pb2_grpc

from runtime.processes import free_port
from tests.servers import serving
from tests.support import create_request, put_stock

Stub = orders_pb2_grpc.OrderServiceStub


async def read(orders: Stub, count: int, timeout: float = 10.0, **request) -> list[pb.OrderEvent]:
    """The first `count` events of a new stream, then the stream is dropped."""
    call = orders.WatchOrders(pb.WatchOrdersRequest(**request))
    got: list[pb.OrderEvent] = []
    try:
        async with asyncio.timeout(timeout):
            async for event in call:
                got.append(event)
                if len(got) == count:
                    break
    finally:
        call.cancel()
    return got


async def nothing_before(orders: Stub, request: dict, marker: Awaitable[pb.Order]) -> None:
    """Prove that a stream with `request` holds nothing older than a marker: the marker
    change (one the stream must pass) is made, and the first event the stream sends is
    the marker's. A quiet window would prove nothing on a slow server. The stream opens
    after the marker is made; it replays from its cursor, so it sees the marker too."""
    made = await marker
    (first,) = await read(orders, 1, **request)
    assert first.event_id == f"{made.order_id}/{made.version}", first


async def created(orders: Stub, order_id: str, customer: str = "cust-1") -> pb.Order:
    """A new order (a marker's change)."""
    return (await orders.CreateOrder(create_request(order_id, customer=customer))).order


async def paid_order(orders: Stub, order_id: str) -> pb.Order:
    """A new order, paid (a marker's change)."""
    await created(orders, order_id)
    return (
        await orders.ConfirmPayment(
            pb.ConfirmPaymentRequest(
                order_id=order_id, payment_id=f"p-{order_id}", amount_minor=300, currency_code="EUR"
            )
        )
    ).order


async def make_history(orders: Stub, stub, customers: int = 3, each: int = 4) -> int:
    """Orders of several customers, some paid and some cancelled; returns the event count."""
    await put_stock(stub, "A", 10_000)
    events = 0
    for c in range(customers):
        for i in range(each):
            oid = f"c{c}-o{i}"
            await orders.CreateOrder(create_request(oid, customer=f"cust-{c}"))
            events += 1
            if i % 2 == 0:
                await orders.ConfirmPayment(
                    pb.ConfirmPaymentRequest(
                        order_id=oid, payment_id=f"p-{oid}", amount_minor=300, currency_code="EUR"
                    )
                )
                events += 1
            elif i % 3 == 0:
                await orders.CancelOrder(pb.CancelOrderRequest(order_id=oid, reason="r"))
                events += 1
    return events


async def test_a_watch_from_the_start_gets_every_event_with_gap_free_cursors(
    orders: Stub, stub
) -> None:
    total = await make_history(orders, stub)
    events = await read(orders, total)
    assert [e.cursor for e in events] == list(range(1, total + 1))
    assert len({e.event_id for e in events}) == total
    for e in events:
        assert e.event_id == f"{e.order_id}/{e.order_version}"
        assert e.order.version == e.order_version and e.change.to_status == e.order.status
    per_order: dict[str, list[int]] = {}
    for e in events:
        per_order.setdefault(e.order_id, []).append(e.order_version)
    assert all(versions == sorted(versions) for versions in per_order.values())
    await nothing_before(orders, {"after_cursor": total}, created(orders, "marker"))


async def test_a_resumed_watch_misses_nothing_and_repeats_nothing(orders: Stub, stub) -> None:
    total = await make_history(orders, stub)
    first = await read(orders, 5)
    # While nobody watches, more happens.
    for i in range(4):
        await orders.CreateOrder(create_request(f"late-{i}"))
    resumed = await read(orders, total + 4 - 5, after_cursor=first[-1].cursor)
    assert [e.cursor for e in first + resumed] == list(range(1, total + 5))
    assert {e.event_id for e in first}.isdisjoint({e.event_id for e in resumed})
    await nothing_before(orders, {"after_cursor": resumed[-1].cursor}, created(orders, "marker"))


async def test_a_watch_tails_events_as_they_happen(orders: Stub, stub) -> None:
    await put_stock(stub, "A", 100)
    await orders.CreateOrder(create_request("before"))
    call = orders.WatchOrders(pb.WatchOrdersRequest(customer_id="cust-1"))
    try:
        stream = call.__aiter__()
        async with asyncio.timeout(10):
            old = await stream.__anext__()
            assert old.order_id == "before"
            for i in range(3):
                await orders.CreateOrder(create_request(f"live-{i}"))
                live = await stream.__anext__()
                assert (live.order_id, live.type) == (f"live-{i}", pb.EVENT_TYPE_ORDER_CREATED)
                assert live.cursor == old.cursor + 1
                old = live
    finally:
        call.cancel()


async def test_watch_filters_by_customer_order_and_type(orders: Stub, stub) -> None:
    total = await make_history(orders, stub)
    everything = await read(orders, total)
    mine = [e for e in everything if e.order.customer_id == "cust-1"]
    assert [e.cursor for e in await read(orders, len(mine), customer_id="cust-1")] == [
        e.cursor for e in mine
    ]
    one = [e for e in everything if e.order_id == "c2-o0"]
    assert [e.cursor for e in await read(orders, len(one), order_id="c2-o0")] == [
        e.cursor for e in one
    ]
    paid = [e for e in everything if e.type == pb.EVENT_TYPE_ORDER_PAID]
    got = await read(orders, len(paid), types=[pb.EVENT_TYPE_ORDER_PAID])
    assert [e.cursor for e in got] == [e.cursor for e in paid]
    await nothing_before(
        orders,
        {"types": [pb.EVENT_TYPE_ORDER_PAID], "after_cursor": got[-1].cursor},
        paid_order(orders, "marker"),
    )
    both = await read(orders, 1, customer_id="cust-0", types=[pb.EVENT_TYPE_ORDER_CANCELLED])
    assert [(e.order.customer_id, e.type) for e in both] == [
        ("cust-0", pb.EVENT_TYPE_ORDER_CANCELLED)
    ]


async def test_an_unknown_filter_target_streams_nothing_rather_than_failing(
    orders: Stub, stub
) -> None:
    await make_history(orders, stub, customers=1, each=1)
    # Nothing is streamed for them until an order of theirs exists.
    await nothing_before(orders, {"order_id": "nope"}, created(orders, "nope"))
    await nothing_before(
        orders, {"customer_id": "nobody"}, created(orders, "of-nobody", customer="nobody")
    )


async def test_many_watchers_see_the_same_sequence(orders: Stub, stub) -> None:
    await put_stock(stub, "A", 1000)

    async def create_some() -> None:
        for i in range(20):
            await orders.CreateOrder(create_request(f"o-{i}"))

    readers = [asyncio.create_task(read(orders, 20)) for _ in range(5)]
    await asyncio.sleep(0.2)
    await create_some()
    seen = await asyncio.gather(*readers)
    assert all([e.event_id for e in s] == [e.event_id for e in seen[0]] for s in seen)
    assert [e.cursor for e in seen[0]] == list(range(1, 21))


async def test_a_closed_server_ends_open_watches(settings, open_channel) -> None:
    port = free_port()
    async with open_channel(port) as channel:
        # The server is stopped (grace 0.2 s) when its block ends, the watch still open.
        async with serving(settings.with_overrides(grpc_port=port), grace=0.2):
            call = orders_pb2_grpc.OrderServiceStub(channel).WatchOrders(pb.WatchOrdersRequest())
            reader = asyncio.ensure_future(call.read())
            await asyncio.sleep(0.2)
        try:
            async with asyncio.timeout(5):
                await reader
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


async def test_hundreds_of_pages_each_get_their_shoppers_events_and_only_those(
    orders: Stub, stub
) -> None:
    # Checkout pages follow one shopper each: they are woken by that shopper's events
    # only, so a lost wake-up would leave a page without its shopper's new order.
    await put_stock(stub, "A", 10_000)
    shoppers = 100
    for c in range(shoppers):
        await orders.CreateOrder(create_request(f"h-{c}", customer=f"shop-{c}"))
    pages = [
        asyncio.create_task(read(orders, 2, timeout=60, customer_id=f"shop-{c % shoppers}"))
        for c in range(2 * shoppers)
    ]
    await asyncio.sleep(0.5)  # the pages are open, caught up, waiting
    for c in range(shoppers):
        await orders.CreateOrder(create_request(f"n-{c}", customer=f"shop-{c}"))
    for c, page in enumerate(await asyncio.gather(*pages)):
        assert [e.order_id for e in page] == [f"h-{c % shoppers}", f"n-{c % shoppers}"]


async def test_pages_catching_up_read_postgresql_a_few_at_a_time(
    app, orders: Stub, stub, monkeypatch
) -> None:
    # A crowd of pages opened at once from the start of a history reads PostgreSQL
    # through a small gate, leaving the writers the rest of the pool.
    from server.orders.watch import CATCH_UP_READERS

    await put_stock(stub, "A", 10_000)
    for i in range(60):
        await orders.CreateOrder(create_request(f"o-{i}", customer=f"cust-{i % 30}"))
    feed = app.orders.feed
    await read(orders, 1)  # the feed is following the tail
    feed._tail.clear()  # every page below starts behind the tail
    feed._cursors.clear()
    store = feed._store
    real = store.events
    reading = most = 0

    async def counted(*args, **kwargs):
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        try:
            return await real(*args, **kwargs)
        finally:
            reading -= 1

    monkeypatch.setattr(store, "events", counted)
    pages = await asyncio.gather(
        *(read(orders, 2, timeout=60, customer_id=f"cust-{i % 30}") for i in range(150))
    )
    assert all(len(p) == 2 for p in pages)
    assert 1 <= most <= CATCH_UP_READERS, most
