"""stockcore.v1.ReconciliationService: validates, converts and delegates to the
reconciliation reader. Who may call is access.py's (finance scopes, never a customer)."""

from __future__ import annotations

from typing import Any

import grpc
from stockcore.v1 import reconciliation_pb2 as pb
from stockcore.v1 import reconciliation_pb2_grpc as pb_grpc

from server.domain.reconciliation import (
    daily_close_of,
    list_exceptions,
    resolve_exception,
    statement_of,
)
from server.rpc import reconciliation_convert as convert
from server.rpc.access import current_principal
from server.storage.reconciliation_pg import ReconciliationReader

Context = grpc.aio.ServicerContext[Any, Any]


class ReconciliationServicer(pb_grpc.ReconciliationServiceServicer):
    """Adapts gRPC calls to ReconciliationReader; domain errors are mapped by the observe
    wrapper."""

    def __init__(self, reader: ReconciliationReader) -> None:
        self._reader = reader

    async def GetStatement(
        self, request: pb.GetStatementRequest, context: Context
    ) -> pb.GetStatementResponse:
        """The statement lines about a payment, a refund or an order."""
        statement = await self._reader.statement(statement_of(request.id))
        return pb.GetStatementResponse(
            lines=[convert.statement_line(line) for line in statement.lines],
            truncated=statement.truncated,
        )

    async def ListExceptions(
        self, request: pb.ListExceptionsRequest, context: Context
    ) -> pb.ListExceptionsResponse:
        """One page of exceptions."""
        query = list_exceptions(
            request.include_resolved, request.reason, request.page_size, request.page_token
        )
        page, token = await self._reader.exceptions(query)
        return pb.ListExceptionsResponse(
            exceptions=[convert.discrepancy(d) for d in page], next_page_token=token
        )

    async def ResolveException(
        self, request: pb.ResolveExceptionRequest, context: Context
    ) -> pb.ResolveExceptionResponse:
        """Resolve an open exception as the caller (its token subject) decided."""
        command = resolve_exception(
            request.exception_id, request.resolution, request.why, current_principal().subject
        )
        resolved = await self._reader.resolve(command)
        return pb.ResolveExceptionResponse(exception=convert.discrepancy(resolved))

    async def GetDailyClose(
        self, request: pb.GetDailyCloseRequest, context: Context
    ) -> pb.GetDailyCloseResponse:
        """A currency's close of a UTC day."""
        currency, day = daily_close_of(request.currency_code, request.day)
        close = await self._reader.daily_close(currency, day)
        return pb.GetDailyCloseResponse(close=convert.daily_close(close))
