"""Every RPC passes through here: domain errors become statuses with details, anything
else becomes INTERNAL and is logged, and latency is recorded by method and code.

The servicer's methods are wrapped once at start-up rather than through a grpc.aio
server interceptor, which grpc.aio consults with an extra coroutine on every call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

from server.domain.errors import DomainError
from server.metrics import RPC_DURATION
from server.rpc.errors import status_code_for, to_status

log = logging.getLogger(__name__)


def observe(
    method: str, inner: Callable[[Any, Any], Awaitable[Any]]
) -> Callable[[Any, Any], Awaitable[Any]]:
    """Wrap one unary-unary servicer method."""
    histograms = {code: RPC_DURATION.labels(method, code.name) for code in grpc.StatusCode}

    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[type-arg]
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await inner(request, context)
        except DomainError as exc:
            # Expected failures are answered by status, without raising through grpc:
            # a non-OK code makes grpc.aio discard the (absent) response.
            code = status_code_for(exc)
            status = to_status(exc)
            context.set_code(status.code)
            context.set_details(status.details)
            context.set_trailing_metadata(status.trailing_metadata)
            return None
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
            histograms[code].observe(time.perf_counter() - started)

    return observed


def observe_stream(
    method: str, inner: Callable[[Any, Any], AsyncIterator[Any]]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """Wrap one unary-stream servicer method (an async generator) the same way; its
    duration is the stream's lifetime."""
    histograms = {code: RPC_DURATION.labels(method, code.name) for code in grpc.StatusCode}

    async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # type: ignore[type-arg]
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async for item in inner(request, context):
                yield item
        except DomainError as exc:
            code = status_code_for(exc)
            status = to_status(exc)
            context.set_code(status.code)
            context.set_details(status.details)
            context.set_trailing_metadata(status.trailing_metadata)
        except (asyncio.CancelledError, GeneratorExit):
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
            histograms[code].observe(time.perf_counter() - started)

    return observed


def observe_servicer(servicer: object, methods: Iterable[str]) -> None:
    """Replace each named method of `servicer` by its observed wrapper."""
    for name in methods:
        method = getattr(servicer, name)
        wrap = observe_stream if inspect.isasyncgenfunction(method) else observe
        setattr(servicer, name, wrap(name, method))
