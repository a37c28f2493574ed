"""Server interceptor: maps domain errors to statuses, times every call, logs bugs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.domain.errors import DomainError
from server.metrics import RPC_DURATION
from server.rpc.errors import status_code_for, to_status

log = logging.getLogger(__name__)


class ObservedErrors(grpc.aio.ServerInterceptor):
    """Turns DomainError into its status with details, anything else into INTERNAL,
    and records latency by method and status code."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap unary-unary handlers; leave streams to their own handling."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[type-arg]
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await inner(request, context)
            except DomainError as exc:
                code = status_code_for(exc)
                await context.abort_with_status(to_status(exc))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error", extra={"method": method})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")
            finally:
                RPC_DURATION.labels(method, code.name).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
