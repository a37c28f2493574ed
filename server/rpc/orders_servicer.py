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
    refund_line,
    ship_order,
)
from server.orders.pricing import Pricing
from server.orders.service import OrderCore
from server.rpc import orders_convert as convert
from server.rpc.access import OrderView, current_principal
from server.rpc.metadata import account, actor_of, deadline_of

Context = grpc.aio.ServicerContext[Any, Any]


class OrderServicer(pb_grpc.OrderServiceServicer):
    """Adapts gRPC calls to OrderCore; domain errors are mapped by the observe wrapper.
    What a customer's token sees of the orders is OrderView's (server/rpc/access.py)."""

    def __init__(self, core: OrderCore, settings: Settings, pricing: Pricing) -> None:
        self._core = core
        self._settings = settings
        self._pricing = pricing

    async def CreateOrder(
        self, request: pb.CreateOrderRequest, context: Context
    ) -> pb.CreateOrderResponse:
        """Hold stock, or take over a held reservation, and create the order (a customer's
        token: for its own customer)."""
        view = OrderView.of_caller()
        window = request.payment_window if request.HasField("payment_window") else None
        command = create_order(
            request.order_id,
            view.customer(request.customer_id),
            [(line.sku, line.quantity, line.unit_price_minor) for line in request.lines],
            request.currency_code,
            None if window is None else window.seconds + window.nanos / 1e9,
            actor_of(context),
            default_ttl_s=self._settings.default_ttl_s,
            min_ttl_s=self._settings.min_ttl_s,
            max_ttl_s=self._settings.max_ttl_s,
            reservation_id=request.reservation_id,
            bound_customer=view.customer_id,
        )
        caller = current_principal()
        self._pricing.check(command, caller.subject, caller.customer_id is not None)
        order = await self._core.create_order(command, deadline_of(context))
        return pb.CreateOrderResponse(order=view.order(convert.order(order)))

    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.GetOrderResponse:
        """Read an order with its history."""
        order_id = require_id(request.order_id, "order_id")
        view = OrderView.of_caller()
        try:
            order, history = await self._core.get_order(order_id, account())
        except NotFound:
            view.check(order_id, None)
            raise
        view.check(order_id, order)
        return pb.GetOrderResponse(
            order=view.order(convert.order(order)),
            history=[view.change(convert.status_change(c)) for c in history],
        )

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: Context
    ) -> pb.ListOrdersResponse:
        """Page through a customer's orders."""
        view = OrderView.of_caller()
        query = list_orders(
            view.customer(request.customer_id),
            request.status,
            convert.moment(request.created_after) if request.HasField("created_after") else None,
            convert.moment(request.created_before) if request.HasField("created_before") else None,
            request.page_size,
            request.page_token,
        )
        orders, token = await self._core.list_orders(query, account())
        return pb.ListOrdersResponse(
            orders=[view.order(convert.order(o)) for o in orders], next_page_token=token
        )

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
        """Cancel an order that has not shipped (a customer: their own, unpaid, decided
        with the cancel)."""
        view = OrderView.of_caller()
        command = cancel_order(
            request.order_id, request.reason, actor_of(context), view.customer_id
        )
        order = await self._core.cancel_order(command, deadline_of(context))
        return pb.CancelOrderResponse(order=view.order(convert.order(order)))

    async def RefundLine(
        self, request: pb.RefundLineRequest, context: Context
    ) -> pb.RefundLineResponse:
        """Owe back some units of one line of a paid order (a service's word: customers'
        tokens are refused before this runs)."""
        command = refund_line(
            request.order_id,
            request.sku,
            request.quantity,
            request.reason,
            request.line_refund_id,
            actor_of(context),
        )
        order, refund = await self._core.refund_line(command, deadline_of(context))
        return pb.RefundLineResponse(order=convert.order(order), refund=convert.refund_note(refund))

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
        view = OrderView.of_caller()
        wanted = watch_filter(
            view.customer(request.customer_id),
            request.order_id,
            list(request.types),
            request.after_cursor,
        )
        async for _, event in self._core.watch(wanted):
            yield view.event(event)
