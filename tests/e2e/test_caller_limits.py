"""No caller can hurt another: each token's subject (each customer, for a customer's
token) holds at most its share of open streams and of reads in PostgreSQL, the excess
refused at once with RESOURCE_EXHAUSTED and a RetryInfo, and the batches that change
stock keep PostgreSQL connections that readers cannot take."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc
from stockcore.v1 import orders_pb2 as pb

from clients.orders import OrderClient
from devstack.credentials import DevCredentials
from devstack.servers import LocalStockcore
from server.app import App
from server.auth import scopes
from server.config import Settings
from tests import callers
from tests.servers import Servers, server_process
from tests.support import connected, create_request, details_of, put_stock, reserve_request
from tests.waiting import sql_is, until

ALICE = "alice"
BOB = "bob"
STREAMS_PER_CALLER = 3
READS_PER_CALLER = 4
READ_RATE = 10
READERS = 64
SLOW_READ_S = 3.0


def refusal_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, float]:
    """Code, ErrorInfo reason and RetryInfo delay (s) of a refused call."""
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    (retry,) = details_of(error, error_details_pb2.RetryInfo)
    return error.code(), info.reason, retry.retry_delay.ToTimedelta().total_seconds()


@dataclass
class Caller:
    """A channel carrying one token, and the stubs on it."""

    channel: grpc.aio.Channel
    inventory: inventory_pb2_grpc.InventoryServiceStub
    orders: orders_pb2_grpc.OrderServiceStub


Opener = Callable[..., Caller]


@pytest.fixture
async def as_caller(credentials: DevCredentials) -> AsyncIterator[Opener]:
    """Opens TLS channels to a server, every call on one carrying a token for `subject`
    (with `scope`, every service scope if none, bound to `customer` if named); closed
    after the test."""
    opened: list[grpc.aio.Channel] = []

    def open_(
        server: LocalStockcore, subject: str, *scope: str, customer: str | None = None
    ) -> Caller:
        token = callers.token(
            credentials, subject, scope or scopes.SERVICE_SCOPES, customer_id=customer
        )
        channel = callers.secure_channel(server.target, credentials, token)
        opened.append(channel)
        return Caller(
            channel,
            inventory_pb2_grpc.InventoryServiceStub(channel),
            orders_pb2_grpc.OrderServiceStub(channel),
        )

    try:
        yield open_
    finally:
        for channel in opened:
            await channel.close()


@pytest.fixture
async def stream_limited(
    clean: Servers, credentials: DevCredentials
) -> AsyncIterator[LocalStockcore]:
    """A server allowing each caller STREAMS_PER_CALLER open streams."""
    async with server_process(
        clean, credentials, STOCKCORE_STREAMS_PER_CALLER=str(STREAMS_PER_CALLER)
    ) as server:
        yield server


async def first_event(call: grpc.aio.UnaryStreamCall) -> pb.OrderEvent:  # type: ignore[type-arg]
    """A stream's first event: proof that the server admitted it."""
    event = await asyncio.wait_for(call.read(), 20)
    assert isinstance(event, pb.OrderEvent), event
    return event


async def test_a_customer_past_its_share_of_streams_is_refused_while_another_still_opens_one(
    stream_limited: LocalStockcore, as_caller: Opener
) -> None:
    service = as_caller(stream_limited, callers.SUBJECT)
    await put_stock(service.inventory, "A", 100)
    for order_id, customer in (("o-alice", ALICE), ("o-bob", BOB)):
        await service.orders.CreateOrder(create_request(order_id, customer=customer))
    # A checkout gateway's tokens: one subject, one customer each.
    alice = as_caller(stream_limited, "shop-web", scopes.CUSTOMER, customer=ALICE)
    bob = as_caller(stream_limited, "shop-web", scopes.CUSTOMER, customer=BOB)

    def watch(caller: Caller) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
        return caller.orders.WatchOrders(pb.WatchOrdersRequest(), timeout=60)

    held = [watch(alice) for _ in range(STREAMS_PER_CALLER)]
    try:
        for call in held:
            assert (await first_event(call)).order_id == "o-alice"
        over = watch(alice)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await over.read()
        code, reason, delay = refusal_of(refused.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_LIMIT")
        assert 0 < delay <= 10

        # Another customer of the same gateway, and a service, are not held to alice's share.
        others = [watch(bob), watch(service)]
        held += others
        assert (await first_event(others[0])).order_id == "o-bob"
        assert (await first_event(others[1])).order_id in {"o-alice", "o-bob"}

        # A stream that ends gives its place back.
        held[0].cancel()

        async def alice_admitted() -> bool:
            call = watch(alice)
            try:
                await first_event(call)
            except grpc.aio.AioRpcError as exc:
                assert refusal_of(exc)[1] == "CALLER_LIMIT"
                return False
            held.append(call)
            return True

        await until(alice_admitted, "alice's stream admitted once one of hers ended")
    finally:
        for call in held:
            call.cancel()


async def test_a_client_watch_refused_at_its_share_comes_back_once_a_place_frees(
    stream_limited: LocalStockcore, as_caller: Opener, credentials: DevCredentials
) -> None:
    service = as_caller(stream_limited, callers.SUBJECT)
    await put_stock(service.inventory, "A", 100)
    await service.orders.CreateOrder(create_request("o-alice", customer=ALICE))
    alice = as_caller(stream_limited, "shop-web", scopes.CUSTOMER, customer=ALICE)
    held = [
        alice.orders.WatchOrders(pb.WatchOrdersRequest(), timeout=60)
        for _ in range(STREAMS_PER_CALLER)
    ]
    bearer = callers.token(credentials, "shop-web", [scopes.CUSTOMER], customer_id=ALICE)
    try:
        for call in held:
            await first_event(call)
        async with OrderClient(
            stream_limited.target, credentials=callers.client_credentials(credentials, bearer)
        ) as client:
            events = client.watch()
            first = asyncio.ensure_future(anext(events))
            # Refused at alice's share, the client waits as told rather than failing.
            await asyncio.sleep(1.5)
            assert not first.done() or first.exception() is None
            held[0].cancel()
            event = await asyncio.wait_for(first, 30)
            assert event.order_id == "o-alice"
            await events.aclose()
    finally:
        for call in held:
            call.cancel()


@pytest.fixture
async def slow_stock_reads(dsn: str) -> AsyncIterator[None]:
    """PostgreSQL's levels function takes SLOW_READ_S for the SKU `SLOW`: an expensive
    read, holding its connection as a large or unlucky one would. Put back afterwards."""
    async with connected(dsn) as conn:
        await conn.execute(
            f"""
            ALTER FUNCTION stockcore.stock_levels(smallint[], text[])
                RENAME TO stock_levels_unslowed;
            CREATE FUNCTION stockcore.stock_levels(p_shards smallint[], p_skus text[])
            RETURNS SETOF stockcore.stock_level LANGUAGE plpgsql AS $$
            BEGIN
                IF 'SLOW' = ANY (p_skus) THEN
                    PERFORM pg_sleep({SLOW_READ_S});
                END IF;
                RETURN QUERY SELECT * FROM stockcore.stock_levels_unslowed(p_shards, p_skus);
            END $$;
            """
        )
    try:
        yield
    finally:
        async with connected(dsn) as conn:
            await conn.execute(
                """
                DROP FUNCTION stockcore.stock_levels(smallint[], text[]);
                ALTER FUNCTION stockcore.stock_levels_unslowed(smallint[], text[])
                    RENAME TO stock_levels;
                """
            )


@pytest.fixture
async def read_limited(
    clean: Servers, credentials: DevCredentials, slow_stock_reads: None
) -> AsyncIterator[LocalStockcore]:
    """A server allowing each caller READS_PER_CALLER reads in PostgreSQL, on a read
    pool of two connections beside the default eight of the batches."""
    async with server_process(
        clean,
        credentials,
        STOCKCORE_DATABASE_READS_PER_CALLER=str(READS_PER_CALLER),
        STOCKCORE_PG_READ_POOL_SIZE="2",
        STOCKCORE_PG_POOL_SIZE="8",
    ) as server:
        yield server


@dataclass
class Answer:
    """How a call ended, and when (time.monotonic())."""

    code: grpc.StatusCode
    at: float
    error: grpc.aio.AioRpcError | None = None


async def answer(call) -> Answer:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return Answer(exc.code(), time.monotonic(), exc)
    return Answer(grpc.StatusCode.OK, time.monotonic())


async def test_strong_reads_past_a_subjects_share_are_refused_and_writers_keep_their_connections(
    read_limited: LocalStockcore, as_caller: Opener, dsn: str
) -> None:
    service = as_caller(read_limited, callers.SUBJECT)
    await put_stock(service.inventory, "SLOW", 10)
    await put_stock(service.inventory, "A", 100)
    scraper = as_caller(read_limited, "scraper", scopes.INVENTORY_READ)
    checkout = as_caller(read_limited, "checkout", scopes.INVENTORY_HOLD, scopes.ORDERS_CREATE)
    strong = ipb.GetStockRequest(skus=["SLOW"], consistency=ipb.CONSISTENCY_STRONG)

    reads = [
        asyncio.ensure_future(answer(scraper.inventory.GetStock(strong, timeout=120)))
        for _ in range(READERS)
    ]
    try:
        # The premise: the scraper's reads hold PostgreSQL connections.
        await until(
            lambda: sql_is(
                dsn, "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event = 'PgSleep'", True
            ),
            "a strong read sleeping in PostgreSQL",
        )
        held, ordered = await asyncio.gather(
            answer(checkout.inventory.Reserve(reserve_request("r-1", A=1), timeout=5)),
            answer(checkout.orders.CreateOrder(create_request("o-1"), timeout=5)),
        )
    finally:
        done = await asyncio.gather(*reads)

    # Another caller's hold and order went through while the reads were in PostgreSQL.
    assert (held.code, ordered.code) == (grpc.StatusCode.OK, grpc.StatusCode.OK), (held, ordered)
    served = [a for a in done if a.code is grpc.StatusCode.OK]
    assert max(held.at, ordered.at) < min(a.at for a in served)
    # The scraper got its share; the rest was refused at once, with a time to come back.
    refused = [a for a in done if a.error is not None]
    assert len(served) == READS_PER_CALLER
    assert len(refused) == READERS - READS_PER_CALLER
    for a in refused:
        assert a.error is not None
        code, reason, delay = refusal_of(a.error)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_LIMIT")
        assert 0 < delay <= 10


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The in-process server's: READS_PER_CALLER reads in PostgreSQL per caller at once,
    READ_RATE rows read a second while others are served."""
    return dataclasses.replace(
        settings,
        database_reads_per_caller=READS_PER_CALLER,
        database_read_rows_per_caller=float(READ_RATE),
    ).validate()


async def _sequential_reads(
    app: App, credentials: DevCredentials, *, other_reads_every: float | None
) -> list[Answer]:
    """6 x READ_RATE STRONG reads of one SKU from "scraper", one at a time (never past the
    share at once); meanwhile "other" reads one every `other_reads_every` seconds (None:
    not at all), and is always served."""
    target = f"127.0.0.1:{app.port}"
    strong = ipb.GetStockRequest(skus=["A"], consistency=ipb.CONSISTENCY_STRONG)
    token = callers.token(credentials, "scraper", [scopes.INVENTORY_READ])
    other_token = callers.token(credentials, "other", [scopes.INVENTORY_READ])
    async with (
        callers.secure_channel(target, credentials, token) as scraper,
        callers.secure_channel(target, credentials, other_token) as other,
    ):
        reads = inventory_pb2_grpc.InventoryServiceStub(scraper)
        other_reads = inventory_pb2_grpc.InventoryServiceStub(other)
        stop = asyncio.Event()

        async def other_caller() -> None:
            while other_reads_every is not None and not stop.is_set():
                await other_reads.GetStock(strong, timeout=10)
                await asyncio.sleep(other_reads_every)

        beside = asyncio.create_task(other_caller())
        await asyncio.sleep(0.05)
        try:
            done = [await answer(reads.GetStock(strong, timeout=10)) for _ in range(6 * READ_RATE)]
        finally:
            stop.set()
            await beside
        await other_reads.GetStock(strong, timeout=10)
    return done


async def test_a_caller_past_its_rate_of_rows_is_refused_while_another_reads(
    app: App, credentials: DevCredentials, stub: inventory_pb2_grpc.InventoryServiceStub
) -> None:
    await put_stock(stub, "A", 10)
    done = await _sequential_reads(app, credentials, other_reads_every=0.2)

    served = [a for a in done if a.code is grpc.StatusCode.OK]
    refused = [a.error for a in done if a.error is not None]
    # The burst at once, then one more for each 1/READ_RATE s the calls took.
    took = done[-1].at - done[0].at
    assert READ_RATE <= len(served) <= READ_RATE + 1 + took * READ_RATE, (len(served), took)
    assert refused
    for error in refused:
        code, reason, delay = refusal_of(error)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_LIMIT")
        assert 0 < delay <= 2.0
        (info,) = details_of(error, error_details_pb2.ErrorInfo)
        assert info.metadata["per"] == "a second"
        assert info.metadata["resource"] == "database_rows"


async def test_a_caller_reading_alone_is_served_past_its_rate(
    app: App, credentials: DevCredentials, stub: inventory_pb2_grpc.InventoryServiceStub
) -> None:
    await put_stock(stub, "A", 10)
    # Let the stocking's write batches age past the window: then nothing else is served.
    await asyncio.sleep(1.2)
    done = await _sequential_reads(app, credentials, other_reads_every=None)

    assert [a.code for a in done] == [grpc.StatusCode.OK] * len(done)
    # Served faster than the rate would allow: the rate was not holding it back.
    took = done[-1].at - done[0].at
    assert len(done) > READ_RATE + 1 + took * READ_RATE, (len(done), took)


async def test_every_read_of_postgresql_takes_a_place_of_the_callers_share(
    app: App, credentials: DevCredentials, stub: inventory_pb2_grpc.InventoryServiceStub, orders
) -> None:
    await put_stock(stub, "A", 10)
    await stub.Reserve(reserve_request("r-1", A=1))
    await orders.CreateOrder(create_request("o-1", customer=ALICE))
    target = f"127.0.0.1:{app.port}"
    reads = [scopes.INVENTORY_READ, scopes.ORDERS_READ]
    scraper = callers.secure_channel(
        target, credentials, callers.token(credentials, "scraper", reads)
    )
    other = callers.secure_channel(target, credentials, callers.token(credentials, "other", reads))

    def calls(channel: grpc.aio.Channel) -> dict[str, Awaitable[object]]:
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        order_service = orders_pb2_grpc.OrderServiceStub(channel)
        return {
            "GetStock STRONG": inventory.GetStock(
                ipb.GetStockRequest(skus=["A"], consistency=ipb.CONSISTENCY_STRONG)
            ),
            "GetReservation": inventory.GetReservation(
                ipb.GetReservationRequest(reservation_id="r-1")
            ),
            "GetOrder": order_service.GetOrder(pb.GetOrderRequest(order_id="o-1")),
            "ListOrders": order_service.ListOrders(pb.ListOrdersRequest(customer_id=ALICE)),
        }

    async with scraper, other:
        # The premise: the scraper's reads in PostgreSQL fill its share.
        for _ in range(READS_PER_CALLER):
            app.core.readers.take("scraper")
        try:
            for name, call in calls(scraper).items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refusal_of(refused.value)[:2] == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "CALLER_LIMIT",
                ), name
            # The mirror is read without a place; another caller reads everything.
            mirror = await inventory_pb2_grpc.InventoryServiceStub(scraper).GetStock(
                ipb.GetStockRequest(skus=["A"])
            )
            assert mirror.levels[0].reserved == 3  # r-1 and o-1's two
            for call in calls(other).values():
                await call
        finally:
            for _ in range(READS_PER_CALLER):
                app.core.readers.give_back("scraper")
        for call in calls(scraper).values():
            await call
