"""stockcore.v1.InventoryService: validates, converts and delegates to the inventory core."""

from __future__ import annotations

from typing import Any

import grpc
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from server.config import Settings
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.inventory import (
    adjust_command,
    distinct_skus,
    require_id,
    reserve_command,
    set_line,
)
from server.inventory.core import Consistency, InventoryCore
from server.rpc import convert
from server.rpc.access import current_principal
from server.rpc.metadata import account, caller, deadline_of


class InventoryServicer(pb_grpc.InventoryServiceServicer):
    """Adapts gRPC calls to InventoryCore; domain errors are mapped by the interceptor. A
    customer's token (a checkout page's) reserves for its customer and changes and releases
    only its customer's reservations: the core decides that under the reservation's lock."""

    def __init__(self, core: InventoryCore, settings: Settings) -> None:
        self._core = core
        self._settings = settings

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReserveResponse:
        """Hold every line or none."""
        command = reserve_command(
            request.reservation_id,
            [(line.sku, line.quantity) for line in request.lines],
            convert.ttl_seconds(request),
            caller(),
            default_ttl_s=self._settings.default_ttl_s,
            min_ttl_s=self._settings.min_ttl_s,
            max_ttl_s=self._settings.max_ttl_s,
            customer_id=current_principal().customer_id,
        )
        held = await self._core.reserve(command, deadline_of(context))
        return pb.ReserveResponse(reservation=convert.reservation(held))

    async def SetReservationLine(
        self,
        request: pb.SetReservationLineRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.SetReservationLineResponse:
        """Set one line of a held reservation."""
        change = set_line(
            request.reservation_id,
            request.change_id,
            request.sku,
            request.quantity,
            convert.ttl_seconds(request),
            caller(),
            default_ttl_s=self._settings.default_ttl_s,
            min_ttl_s=self._settings.min_ttl_s,
            max_ttl_s=self._settings.max_ttl_s,
            customer_id=current_principal().customer_id,
        )
        changed = await self._core.set_line(change, deadline_of(context))
        return pb.SetReservationLineResponse(reservation=convert.reservation(changed))

    async def Commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CommitResponse:
        """Turn a hold into a deduction."""
        rid = require_id(request.reservation_id, "reservation_id")
        done = await self._core.commit(rid, caller(), deadline_of(context))
        return pb.CommitResponse(reservation=convert.reservation(done))

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReleaseResponse:
        """Give a hold back."""
        rid = require_id(request.reservation_id, "reservation_id")
        done = await self._core.release(
            rid, caller(), deadline_of(context), current_principal().customer_id
        )
        return pb.ReleaseResponse(reservation=convert.reservation(done))

    async def GetReservation(
        self,
        request: pb.GetReservationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetReservationResponse:
        """Read one reservation."""
        rid = require_id(request.reservation_id, "reservation_id")
        found = await self._core.get_reservation(rid, account())
        return pb.GetReservationResponse(reservation=convert.reservation(found))

    async def GetStock(
        self, request: pb.GetStockRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetStockResponse:
        """Read many SKUs' levels."""
        strong = request.consistency == pb.CONSISTENCY_STRONG
        if request.consistency not in (
            pb.CONSISTENCY_UNSPECIFIED,
            pb.CONSISTENCY_MIRROR,
            pb.CONSISTENCY_STRONG,
        ):
            raise InvalidArgument(
                [FieldViolation("consistency", f"unknown consistency {request.consistency}")]
            )
        levels = await self._core.get_stock(
            distinct_skus(request.skus),
            Consistency.STRONG if strong else Consistency.MIRROR,
            account(),
        )
        return pb.GetStockResponse(levels=[convert.stock_level(level) for level in levels])

    async def AdjustStock(
        self,
        request: pb.AdjustStockRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.AdjustStockResponse:
        """Restock, shrinkage, count corrections."""
        which = request.WhichOneof("change")
        command = adjust_command(
            request.sku,
            request.delta if which == "delta" else None,
            request.on_hand if which == "on_hand" else None,
            request.reason,
            request.idempotency_key,
            caller(),
        )
        level, applied = await self._core.adjust(command)
        return pb.AdjustStockResponse(level=convert.stock_level(level), applied_delta=applied)
