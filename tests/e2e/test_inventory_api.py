"""InventoryService over a real gRPC channel: every RPC's behaviour and its errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from stockcore.v1 import inventory_pb2 as pb

from server.app import ADMISSION_GATE, INVENTORY_SERVICE
from server.config import Settings
from server.metrics import REGISTRY
from tests import callers
from tests.servers import serving
from tests.support import connected, details_of, put_stock, reserve_request, rpc_error, stock_levels
from tests.waiting import until


def order_request(oid: str, **lines: int):
    from stockcore.v1 import orders_pb2

    return orders_pb2.CreateOrderRequest(
        order_id=oid,
        customer_id="c-1",
        currency_code="EUR",
        lines=[
            orders_pb2.OrderLine(sku=s, quantity=q, unit_price_minor=100) for s, q in lines.items()
        ],
    )


@pytest.fixture
def orders_stub(channel):
    from stockcore.v1 import orders_pb2_grpc

    return orders_pb2_grpc.OrderServiceStub(channel)


async def test_reserve_holds_then_commit_deducts_on_hand(stub):
    await put_stock(stub, "A", 10)
    held = (await stub.Reserve(reserve_request("r1", A=3))).reservation
    assert held.status == pb.RESERVATION_STATUS_HELD
    assert await stock_levels(stub, "A") == {"A": (10, 3, 7)}
    done = (await stub.Commit(pb.CommitRequest(reservation_id="r1"))).reservation
    assert done.status == pb.RESERVATION_STATUS_COMMITTED and done.HasField("finish_time")
    assert await stock_levels(stub, "A") == {"A": (7, 0, 7)}


async def test_release_returns_the_hold_to_available(stub):
    await put_stock(stub, "A", 10)
    await stub.Reserve(reserve_request("r1", A=4))
    done = (await stub.Release(pb.ReleaseRequest(reservation_id="r1"))).reservation
    assert done.status == pb.RESERVATION_STATUS_RELEASED
    assert await stock_levels(stub, "A") == {"A": (10, 0, 10)}


async def test_duplicate_skus_count_as_their_sum_and_expiry_follows_ttl(stub):
    await put_stock(stub, "A", 10)
    request = pb.ReserveRequest(
        reservation_id="r1", lines=[pb.Line(sku="A", quantity=2), pb.Line(sku="A", quantity=3)]
    )
    request.ttl.CopyFrom(duration_pb2.Duration(seconds=60))
    held = (await stub.Reserve(request)).reservation
    assert [(line.sku, line.quantity) for line in held.lines] == [("A", 5)]
    assert held.expire_time.seconds - held.create_time.seconds in (59, 60)


async def test_default_ttl_is_five_minutes(stub):
    await put_stock(stub, "A", 1)
    held = (await stub.Reserve(reserve_request("r1", A=1))).reservation
    assert held.expire_time.ToDatetime() - held.create_time.ToDatetime() == __import__(
        "datetime"
    ).timedelta(seconds=300)


async def test_reserve_is_all_or_nothing_and_names_every_short_sku(stub):
    await put_stock(stub, "A", 5)
    await put_stock(stub, "B", 1)
    await put_stock(stub, "C", 9)
    error = await rpc_error(stub.Reserve(reserve_request("r1", A=6, B=2, C=1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    (failure,) = details_of(error, error_details_pb2.PreconditionFailure)
    shorts = {v.subject: v.description for v in failure.violations}
    assert shorts == {"A": "available 5, requested 6", "B": "available 1, requested 2"}
    (figures,) = details_of(error, pb.StockShortages)
    assert {s.sku: (s.available, s.requested) for s in figures.shortages} == {
        "A": (5, 6),
        "B": (1, 2),
    }
    assert await stock_levels(stub, "A", "B", "C") == {
        "A": (5, 0, 5),
        "B": (1, 0, 1),
        "C": (9, 0, 9),
    }
    assert (
        await rpc_error(stub.GetReservation(pb.GetReservationRequest(reservation_id="r1")))
    ).code() == (grpc.StatusCode.NOT_FOUND)


async def test_retry_with_same_id_and_content_returns_the_first_outcome(stub):
    await put_stock(stub, "A", 2)
    first = (await stub.Reserve(reserve_request("r1", A=2))).reservation
    again = (await stub.Reserve(reserve_request("r1", A=2))).reservation
    assert again == first
    assert await stock_levels(stub, "A") == {"A": (2, 2, 0)}


async def test_same_id_with_different_content_is_already_exists(stub):
    await put_stock(stub, "A", 5)
    await stub.Reserve(reserve_request("r1", A=2))
    error = await rpc_error(stub.Reserve(reserve_request("r1", A=3)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_commit_and_release_are_idempotent(stub):
    await put_stock(stub, "A", 5)
    await stub.Reserve(reserve_request("r1", A=1))
    await stub.Reserve(reserve_request("r2", A=1))
    first = await stub.Commit(pb.CommitRequest(reservation_id="r1"))
    assert await stub.Commit(pb.CommitRequest(reservation_id="r1")) == first
    released = await stub.Release(pb.ReleaseRequest(reservation_id="r2"))
    assert await stub.Release(pb.ReleaseRequest(reservation_id="r2")) == released
    assert await stock_levels(stub, "A") == {"A": (4, 0, 4)}


async def test_commit_after_release_and_release_after_commit_are_failed_precondition(stub):
    await put_stock(stub, "A", 5)
    await stub.Reserve(reserve_request("r1", A=1))
    await stub.Reserve(reserve_request("r2", A=1))
    await stub.Release(pb.ReleaseRequest(reservation_id="r1"))
    await stub.Commit(pb.CommitRequest(reservation_id="r2"))
    error = await rpc_error(stub.Commit(pb.CommitRequest(reservation_id="r1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "RELEASED" in error.details()
    error = await rpc_error(stub.Release(pb.ReleaseRequest(reservation_id="r2")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "COMMITTED" in error.details()


async def test_hold_expires_within_two_seconds_and_commit_after_expiry_is_rejected(stub):
    await put_stock(stub, "A", 5)
    held = (await stub.Reserve(reserve_request("r1", ttl=1, A=2))).reservation
    for _ in range(40):
        got = (await stub.GetReservation(pb.GetReservationRequest(reservation_id="r1"))).reservation
        if got.status == pb.RESERVATION_STATUS_EXPIRED:
            break
        await asyncio.sleep(0.1)
    assert got.status == pb.RESERVATION_STATUS_EXPIRED
    lag = got.finish_time.ToDatetime() - held.expire_time.ToDatetime()
    assert lag.total_seconds() < 2.0
    assert await stock_levels(stub, "A") == {"A": (5, 0, 5)}
    error = await rpc_error(stub.Commit(pb.CommitRequest(reservation_id="r1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "EXPIRED" in error.details()


async def test_holds_expire_across_a_server_restart(settings: Settings, open_channel):
    async with serving(settings, grace=0) as first, open_channel(first.port) as channel:
        stub = pb.DESCRIPTOR and __import__(
            "stockcore.v1.inventory_pb2_grpc", fromlist=["x"]
        ).InventoryServiceStub(channel)
        await put_stock(stub, "A", 5)
        await stub.Reserve(reserve_request("r1", ttl=1, A=5))
    await asyncio.sleep(1.5)  # the hold lapses while no server runs: time must pass
    async with serving(settings, grace=0) as second:

        async def expired() -> bool:
            return (await second.core.get_reservation("r1")).status.name == "EXPIRED"

        await until(expired, "the lapsed hold is swept by the new server", timeout=5)
        assert (await second.core.get_stock(["A"]))[0].available == 5


async def test_get_stock_reads_many_skus_in_request_order(stub):
    for sku, n in (("A", 1), ("B", 2), ("C", 3)):
        await put_stock(stub, sku, n)
    reply = await stub.GetStock(pb.GetStockRequest(skus=["C", "A", "C", "B"]))
    assert [(lv.sku, lv.available) for lv in reply.levels] == [("C", 3), ("A", 1), ("B", 2)]


async def test_get_stock_reads_the_mirror_which_shows_every_acknowledged_change(stub, settings):
    await put_stock(stub, "A", 10)
    await stub.Reserve(reserve_request("r1", A=3))
    assert await stock_levels(stub, "A") == {"A": (10, 3, 7)}
    await stub.Commit(pb.CommitRequest(reservation_id="r1"))
    assert await stock_levels(stub, "A") == {"A": (7, 0, 7)}
    # Change the mirror behind the server's back: the default read shows it, STRONG
    # reads PostgreSQL.
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.hset("sc:s:A", mapping={"oh": 99, "rs": 1})
    finally:
        await client.aclose()
    assert await stock_levels(stub, "A") == {"A": (99, 1, 98)}
    strong = await stub.GetStock(pb.GetStockRequest(skus=["A"], consistency=pb.CONSISTENCY_STRONG))
    assert [(lv.on_hand, lv.reserved) for lv in strong.levels] == [(7, 0)]


async def test_get_stock_refuses_an_unknown_consistency(stub):
    await put_stock(stub, "A", 1)
    error = await rpc_error(stub.GetStock(pb.GetStockRequest(skus=["A"], consistency=7)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "consistency" in error.details()


async def test_unknown_skus_and_reservations_are_not_found(stub):
    await put_stock(stub, "A", 1)
    error = await rpc_error(stub.GetStock(pb.GetStockRequest(skus=["A", "NOPE"])))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "NOPE" in error.details()
    error = await rpc_error(stub.Reserve(reserve_request("r1", A=1, NOPE=1)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "NOPE" in error.details()
    for call in (
        stub.Commit(pb.CommitRequest(reservation_id="x")),
        stub.Release(pb.ReleaseRequest(reservation_id="x")),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_adjust_creates_sets_and_refuses_to_go_below_reserved(stub):
    reply = await stub.AdjustStock(
        pb.AdjustStockRequest(sku="NEW", delta=5, reason="restock", idempotency_key="k1")
    )
    assert (reply.level.on_hand, reply.applied_delta) == (5, 5)
    reply = await stub.AdjustStock(
        pb.AdjustStockRequest(sku="NEW", on_hand=8, reason="count", idempotency_key="k2")
    )
    assert (reply.level.on_hand, reply.applied_delta) == (8, 3)
    await stub.Reserve(reserve_request("r1", NEW=6))
    error = await rpc_error(
        stub.AdjustStock(
            pb.AdjustStockRequest(sku="NEW", delta=-3, reason="shrinkage", idempotency_key="k3")
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await stock_levels(stub, "NEW") == {"NEW": (8, 6, 2)}
    again = await stub.AdjustStock(
        pb.AdjustStockRequest(sku="NEW", on_hand=8, reason="count", idempotency_key="k2")
    )
    assert (again.level.on_hand, again.applied_delta) == (8, 3)
    error = await rpc_error(
        stub.AdjustStock(
            pb.AdjustStockRequest(sku="NEW", delta=1, reason="count", idempotency_key="k2")
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


BAD_REQUESTS = [
    (
        "Reserve",
        pb.ReserveRequest(reservation_id="r", lines=[pb.Line(sku="A", quantity=0)]),
        "lines[0].quantity",
    ),
    (
        "Reserve",
        pb.ReserveRequest(reservation_id="r", lines=[pb.Line(sku="A", quantity=-1)]),
        "lines[0].quantity",
    ),
    (
        "Reserve",
        pb.ReserveRequest(reservation_id="r", lines=[pb.Line(sku="A", quantity=10**12)]),
        "lines[0].quantity",
    ),
    ("Reserve", pb.ReserveRequest(reservation_id="r", lines=[]), "lines"),
    (
        "Reserve",
        pb.ReserveRequest(
            reservation_id="r", lines=[pb.Line(sku=f"S{i}", quantity=1) for i in range(101)]
        ),
        "lines",
    ),
    (
        "Reserve",
        pb.ReserveRequest(reservation_id="r", lines=[pb.Line(sku="bad sku", quantity=1)]),
        "lines[0].sku",
    ),
    (
        "Reserve",
        pb.ReserveRequest(reservation_id="", lines=[pb.Line(sku="A", quantity=1)]),
        "reservation_id",
    ),
    (
        "Reserve",
        pb.ReserveRequest(
            reservation_id="r",
            lines=[pb.Line(sku="A", quantity=1)],
            ttl=duration_pb2.Duration(seconds=0),
        ),
        "ttl",
    ),
    (
        "Reserve",
        pb.ReserveRequest(
            reservation_id="r",
            lines=[pb.Line(sku="A", quantity=1)],
            ttl=duration_pb2.Duration(seconds=90_000),
        ),
        "ttl",
    ),
    ("Commit", pb.CommitRequest(reservation_id=""), "reservation_id"),
    ("Commit", pb.CommitRequest(reservation_id="has space"), "reservation_id"),
    ("Release", pb.ReleaseRequest(reservation_id="x" * 129), "reservation_id"),
    ("GetReservation", pb.GetReservationRequest(reservation_id=""), "reservation_id"),
    ("GetStock", pb.GetStockRequest(skus=[]), "skus"),
    ("GetStock", pb.GetStockRequest(skus=["ok", "-bad"]), "skus[1]"),
    ("GetStock", pb.GetStockRequest(skus=[f"S{i}" for i in range(1001)]), "skus"),
    ("AdjustStock", pb.AdjustStockRequest(sku="A", reason="r", idempotency_key="k"), "change"),
    (
        "AdjustStock",
        pb.AdjustStockRequest(sku="A", delta=1, reason="count\x00", idempotency_key="k"),
        "reason",
    ),
    (
        "AdjustStock",
        pb.AdjustStockRequest(sku="A", delta=0, reason="r", idempotency_key="k"),
        "delta",
    ),
    (
        "AdjustStock",
        pb.AdjustStockRequest(sku="A", on_hand=-1, reason="r", idempotency_key="k"),
        "on_hand",
    ),
    (
        "AdjustStock",
        pb.AdjustStockRequest(sku="A", delta=1, reason="", idempotency_key="k"),
        "reason",
    ),
    (
        "AdjustStock",
        pb.AdjustStockRequest(sku="A", delta=1, reason="r", idempotency_key=""),
        "idempotency_key",
    ),
    ("AdjustStock", pb.AdjustStockRequest(sku="", delta=1, reason="r", idempotency_key="k"), "sku"),
]


@pytest.mark.parametrize(("method", "request_", "field"), BAD_REQUESTS)
async def test_bad_input_is_invalid_argument_naming_the_field(stub, method, request_, field):
    error = await rpc_error(getattr(stub, method)(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations], bad


async def test_health_is_served_over_tls_without_a_token(app, credentials):
    async with callers.secure_channel(f"127.0.0.1:{app.port}", credentials, None) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", INVENTORY_SERVICE, ADMISSION_GATE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


async def _listed_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(ask()):
        return {s.name for s in reply.list_services_response.service}
    return set()


async def test_reflection_is_off_unless_set(app, channel):
    error = await rpc_error(_listed_services(channel))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_is_served_without_a_token_when_set(settings, credentials):
    async with serving(settings.with_overrides(reflection=True)) as app:
        async with callers.secure_channel(f"127.0.0.1:{app.port}", credentials, None) as channel:
            names = await _listed_services(channel)
        assert {INVENTORY_SERVICE, "grpc.health.v1.Health"} <= names


async def test_latency_is_recorded_by_method_and_code(stub):
    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "stockcore_rpc_duration_seconds_count", {"method": "GetStock", "code": code}
        )
        return value or 0.0

    before_ok, before_bad = count("OK"), count("INVALID_ARGUMENT")
    await put_stock(stub, "A", 1)
    await stub.GetStock(pb.GetStockRequest(skus=["A"]))
    error = await rpc_error(stub.GetStock(pb.GetStockRequest(skus=[])))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    # Counted by the time the caller has its answer, the failed call as the served one.
    assert (count("OK"), count("INVALID_ARGUMENT")) == (before_ok + 1, before_bad + 1)


async def test_without_redis_the_service_serves_from_postgres_and_says_so(
    settings: Settings, open_channel
):
    offline = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    async with serving(offline, grace=0) as app:
        async with open_channel(app.port) as channel:
            stub = __import__(
                "stockcore.v1.inventory_pb2_grpc", fromlist=["x"]
            ).InventoryServiceStub(channel)
            await put_stock(stub, "A", 2)
            await stub.Reserve(reserve_request("r1", A=2))
            error = await rpc_error(stub.Reserve(reserve_request("r2", A=1)))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            await stub.Commit(pb.CommitRequest(reservation_id="r1"))
            assert await stock_levels(stub, "A") == {"A": (0, 0, 0)}
            health = health_pb2_grpc.HealthStub(channel)
            gate = await health.Check(health_pb2.HealthCheckRequest(service=ADMISSION_GATE))
            assert gate.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert REGISTRY.get_sample_value("stockcore_redis_fallback") == 1.0


async def test_sold_out_requests_are_turned_away_by_the_gate(stub):
    def gate_rejections() -> float:
        return (
            REGISTRY.get_sample_value("stockcore_holds_total", {"result": "rejected_by_gate"})
            or 0.0
        )

    await put_stock(stub, "A", 1)
    await stub.Reserve(reserve_request("r1", A=1))
    before = gate_rejections()
    for i in range(5):
        error = await rpc_error(stub.Reserve(reserve_request(f"x{i}", A=1)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gate_rejections() == before + 5


@pytest.mark.parametrize(
    "method", ["/stockcore.v1.InventoryService/Reserve", "/stockcore.v1.OrderService/WatchOrders"]
)
async def test_an_undecodable_request_is_invalid_argument(channel, method):
    # A field 1 (string) whose length runs past the end of the message.
    garbage = b"\x0a\xff\x01abc"
    if method.endswith("WatchOrders"):
        call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        error = await rpc_error(call(garbage).read())
    else:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        error = await rpc_error(call(garbage))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "request"
    assert "is not a valid stockcore.v1." in bad.field_violations[0].description


async def test_a_reserve_past_its_deadline_may_still_commit_and_a_retry_returns_it(
    stub, settings: Settings
):
    await put_stock(stub, "A", 10)
    assert settings.pg_dsn is not None
    async with connected(settings.pg_dsn) as blocker:
        # The batch's stock update waits for this lock while the caller's deadline passes.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM stockcore.stock WHERE sku = 'A' FOR UPDATE")
        error = await rpc_error(stub.Reserve(reserve_request("r-late", A=2), timeout=0.5))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await tx.commit()

    # The outcome was unknown to the caller; the same request again tells it.
    again = await stub.Reserve(reserve_request("r-late", A=2))
    assert again.reservation.status == pb.RESERVATION_STATUS_HELD
    assert await stock_levels(stub, "A") == {"A": (10, 2, 8)}


async def test_a_retry_returns_its_hold_even_when_the_gate_forgot_the_id_and_stock_is_gone(
    stub, orders_stub, settings: Settings
):
    await put_stock(stub, "A", 5)
    first = (await stub.Reserve(reserve_request("r-1", A=2))).reservation
    created = (await orders_stub.CreateOrder(order_request("o-1", A=1))).order
    await stub.Reserve(reserve_request("r-2", A=2))  # A is now sold out
    # The gate loses the ids it knew (a hold made while it was bypassed, a process that
    # died before telling it, an id older than it keeps): only PostgreSQL knows them.
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.delete("sc:r:r-1", "sc:r:o-1")
    finally:
        await client.aclose()

    again = (await stub.Reserve(reserve_request("r-1", A=2))).reservation
    assert (again.reservation_id, again.status, again.create_time) == (
        "r-1",
        pb.RESERVATION_STATUS_HELD,
        first.create_time,
    )
    order_again = (await orders_stub.CreateOrder(order_request("o-1", A=1))).order
    assert (order_again.order_id, order_again.version) == ("o-1", created.version)
    # A new request for the sold-out SKU is still refused by the gate.
    error = await rpc_error(stub.Reserve(reserve_request("r-3", A=1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_unexpected_error_is_internal_naming_the_request_id_and_counted(
    app, stub, monkeypatch, caplog
):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret detail of a bug")

    def count() -> float:
        value = REGISTRY.get_sample_value(
            "stockcore_rpc_duration_seconds_count", {"method": "GetStock", "code": "INTERNAL"}
        )
        return value or 0.0

    before = count()
    monkeypatch.setattr(app.core, "get_stock", broken)
    error = await rpc_error(
        stub.GetStock(pb.GetStockRequest(skus=["A"]), metadata=(("x-request-id", "req-bug-1"),))
    )
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "req-bug-1" in (error.details() or "")
    assert "secret" not in (error.details() or "")
    assert count() == before + 1
    assert any("secret detail of a bug" in r.exc_text for r in caplog.records if r.exc_text)
