"""stockcore.v1.OrderService: validates, converts and delegates to the order core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import orders_pb2_grpc as pb_grpc

from server.config import Settings
from server.domain.errors import NotFound
from server.domain.inventory import require_id
from server.domain.order_queries import list_orders, watch_filter
from server.domain.orders import (
    cancel_order,
    carrier_report,
    confirm_payment,
    create_order,
    not_customers,
    ship_order,
)
from server.orders.service import OrderCore
from server.rpc import orders_convert as convert
from server.rpc.access import current_principal, own_customer
from server.rpc.metadata import actor_of, deadline_of

Context = grpc.aio.ServicerContext[Any, Any]


class OrderServicer(pb_grpc.OrderServiceServicer):
    """Adapts gRPC calls to OrderCore; domain errors are mapped by the observe wrapper.

    A customer's token (server/rpc/access.py admits it to GetOrder, ListOrders,
    CancelOrder and WatchOrders only) is narrowed here to its customer's orders, decided
    by the server whatever the request names, and sees them without payment ids."""

    def __init__(self, core: OrderCore, settings: Settings) -> None:
        self._core = core
        self._settings = settings

    async def CreateOrder(
        self, request: pb.CreateOrderRequest, context: Context
    ) -> pb.CreateOrderResponse:
        """Hold stock and create the order."""
        window = request.payment_window if request.HasField("payment_window") else None
        command = create_order(
            request.order_id,
            request.customer_id,
            [(line.sku, line.quantity, line.unit_price_minor) for line in request.lines],
            request.currency_code,
            None if window is None else window.seconds + window.nanos / 1e9,
            actor_of(context),
            default_ttl_s=self._settings.default_ttl_s,
            min_ttl_s=self._settings.min_ttl_s,
            max_ttl_s=self._settings.max_ttl_s,
        )
        order = await self._core.create_order(command, deadline_of(context))
        return pb.CreateOrderResponse(order=convert.order(order))

    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.GetOrderResponse:
        """Read an order with its history."""
        order_id = require_id(request.order_id, "order_id")
        customer = current_principal().customer_id
        if customer is None:
            order, history = await self._core.get_order(order_id)
            return pb.GetOrderResponse(
                order=convert.order(order), history=[convert.status_change(c) for c in history]
            )
        try:
            order, history = await self._core.get_order(order_id)
        except NotFound:
            raise not_customers(customer, order_id) from None
        if order.customer_id != customer:
            raise not_customers(customer, order_id)
        return pb.GetOrderResponse(
            order=convert.hide_payment_order(convert.order(order)),
            history=[convert.hide_payment_change(convert.status_change(c)) for c in history],
        )

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: Context
    ) -> pb.ListOrdersResponse:
        """Page through a customer's orders."""
        principal = current_principal()
        query = list_orders(
            own_customer(request.customer_id, principal),
            request.status,
            convert.moment(request.created_after) if request.HasField("created_after") else None,
            convert.moment(request.created_before) if request.HasField("created_before") else None,
            request.page_size,
            request.page_token,
        )
        orders, token = await self._core.list_orders(query)
        messages = [convert.order(o) for o in orders]
        if principal.customer_id is not None:
            messages = [convert.hide_payment_order(m) for m in messages]
        return pb.ListOrdersResponse(orders=messages, next_page_token=token)

    async def ConfirmPayment(
        self, request: pb.ConfirmPaymentRequest, context: Context
    ) -> pb.ConfirmPaymentResponse:
        """Commit the hold and mark the order paid."""
        payment = confirm_payment(
            request.order_id,
            request.payment_id,
            request.amount_minor,
            request.currency_code,
            actor_of(context),
        )
        order = await self._core.confirm_payment(payment, deadline_of(context))
        return pb.ConfirmPaymentResponse(order=convert.order(order))

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: Context
    ) -> pb.CancelOrderResponse:
        """Cancel an order that has not shipped (a customer: their own, unpaid)."""
        customer = current_principal().customer_id
        command = cancel_order(request.order_id, request.reason, actor_of(context), customer)
        order = await self._core.cancel_order(command, deadline_of(context))
        message = convert.order(order)
        return pb.CancelOrderResponse(
            order=message if customer is None else convert.hide_payment_order(message)
        )

    async def ShipOrder(
        self, request: pb.ShipOrderRequest, context: Context
    ) -> pb.ShipOrderResponse:
        """Record the carrier's pick-up."""
        command = ship_order(
            request.order_id,
            request.carrier,
            request.tracking_no,
            request.carrier_ack_id,
            actor_of(context),
            carriers=self._settings.carriers,
        )
        order = await self._core.ship_order(command, deadline_of(context))
        return pb.ShipOrderResponse(order=convert.order(order))

    async def RecordInTransit(
        self, request: pb.RecordInTransitRequest, context: Context
    ) -> pb.RecordInTransitResponse:
        """Record the carrier's in-transit scan."""
        report = carrier_report(
            request.order_id,
            convert.moment(request.event_time) if request.HasField("event_time") else None,
            actor_of(context),
            now=datetime.now(UTC),
        )
        order = await self._core.record_in_transit(report, deadline_of(context))
        return pb.RecordInTransitResponse(order=convert.order(order))

    async def RecordDelivery(
        self, request: pb.RecordDeliveryRequest, context: Context
    ) -> pb.RecordDeliveryResponse:
        """Record the carrier's delivery."""
        report = carrier_report(
            request.order_id,
            convert.moment(request.event_time) if request.HasField("event_time") else None,
            actor_of(context),
            now=datetime.now(UTC),
        )
        order = await self._core.record_delivery(report, deadline_of(context))
        return pb.RecordDeliveryResponse(order=convert.order(order))

    async def WatchOrders(
        self, request: pb.WatchOrdersRequest, context: Context
    ) -> AsyncIterator[pb.OrderEvent]:
        """Stream events after a cursor, then live ones (a customer: their orders' only)."""
        principal = current_principal()
        wanted = watch_filter(
            own_customer(request.customer_id, principal),
            request.order_id,
            list(request.types),
            request.after_cursor,
        )
        if principal.customer_id is None:
            async for _, event in self._core.watch(wanted):
                yield event
            return
        async for _, event in self._core.watch(wanted):
            yield convert.hide_payment_event(event)
