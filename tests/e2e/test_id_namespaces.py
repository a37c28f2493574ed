"""Reservation ids and order ids are one namespace (an order's hold carries the order's
id); each side refuses the other's ids with an error that says whose the id is."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc

from tests.support import create_request, details_of, put_stock, reserve_request, rpc_error


async def test_get_reservation_refuses_an_orders_hold(
    stub: inventory_pb2_grpc.InventoryServiceStub, orders: orders_pb2_grpc.OrderServiceStub
) -> None:
    await put_stock(stub, "A", 10)
    await orders.CreateOrder(create_request("o-1"))
    await stub.Reserve(reserve_request("r-1", A=1))

    error = await rpc_error(stub.GetReservation(ipb.GetReservationRequest(reservation_id="o-1")))
    plain = await stub.GetReservation(ipb.GetReservationRequest(reservation_id="r-1"))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hold of order 'o-1'" in (error.details() or "")
    assert "GetOrder" in (error.details() or "")
    assert plain.reservation.reservation_id == "r-1"


async def test_create_order_names_the_reservation_that_holds_its_id(
    stub: inventory_pb2_grpc.InventoryServiceStub, orders: orders_pb2_grpc.OrderServiceStub
) -> None:
    await put_stock(stub, "A", 10)
    await stub.Reserve(reserve_request("taken", A=1))
    await orders.CreateOrder(create_request("o-2"))

    squatted = await rpc_error(orders.CreateOrder(create_request("taken")))
    other = await rpc_error(orders.CreateOrder(create_request("o-2", ("A", 3, 150))))

    assert squatted.code() == other.code() == grpc.StatusCode.ALREADY_EXISTS
    (info,) = details_of(squatted, error_details_pb2.ResourceInfo)
    assert (info.resource_name, info.owner) == ("taken", "reservation taken")
    assert "already belongs to reservation taken" in (squatted.details() or "")
    assert details_of(other, error_details_pb2.ResourceInfo) == []
