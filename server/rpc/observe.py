"""Every RPC passes through here: a call of a class with a standing queue, or past the
process's ceiling, is refused at once (server/rpc/shedding.py); the caller is admitted or
refused (server/rpc/access.py, before the request is decoded, so a refused call changes
nothing and learns nothing of its request); a stream is refused when its caller already
holds its share of open streams (server/shares.py); a request that cannot be decoded is
INVALID_ARGUMENT, domain errors become statuses with details, anything else becomes
INTERNAL and is logged, and latency is recorded by method and code.

The service's method handlers are built here once at start-up, from its descriptor,
rather than through a grpc.aio server interceptor, which grpc.aio consults with an extra
coroutine on every call. Requests arrive as bytes and are decoded only once the call is
admitted, so a refusal costs no decoding; decoding never raises: a malformed message is
the caller's fault, not an UNKNOWN error of the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor, message, message_factory

from server.auth import scopes
from server.domain.errors import (
    CallerLimit,
    DomainError,
    FieldViolation,
    InvalidArgument,
    Overloaded,
    ShuttingDown,
    Unavailable,
)
from server.metrics import RPC_DURATION, RPC_REFUSED
from server.queue_delay import QueueDelay
from server.rpc import bounds, idempotency
from server.rpc.access import Gatekeeper, Rule
from server.rpc.errors import plain_status, status_code_for, to_status
from server.rpc.metadata import account, request_id_of
from server.rpc.shedding import LoadShedder
from server.shares import Shares

log = logging.getLogger(__name__)

# Calls with these scopes only read: they queue apart from the writes.
READ_SCOPES = frozenset({scopes.INVENTORY_READ, scopes.ORDERS_READ, scopes.FINANCE_READ})


def _public(exc: DomainError, method: str, context: grpc.aio.ServicerContext) -> DomainError:  # type: ignore[type-arg]
    """The error as the caller may see it. An unreachable dependency's text names hosts,
    ports and driver errors: it is logged with the request id, and the caller gets a
    generic message with that id."""
    if type(exc) is not Unavailable:
        return exc
    request_id = request_id_of(context)
    log.warning(
        "dependency unavailable",
        extra={"method": method, "request_id": request_id, "error": str(exc)},
    )
    return Unavailable(
        f"temporarily unavailable (request id {request_id}); nothing was applied or the"
        " outcome is unknown: retry with the same idempotency id"
    )


def _internal_status(method: str, context: grpc.aio.ServicerContext) -> grpc.Status:  # type: ignore[type-arg]
    """Log the exception being handled under the call's request id; the INTERNAL status
    naming that id (never the exception's text)."""
    request_id = request_id_of(context)
    log.exception("unexpected error", extra={"method": method, "request_id": request_id})
    return plain_status(
        grpc.StatusCode.INTERNAL, f"internal error; it has been logged (request id {request_id})"
    )


async def _internal(method: str, context: grpc.aio.ServicerContext) -> NoReturn:  # type: ignore[type-arg]
    """Log the exception being handled, and answer INTERNAL naming the request id."""
    await _answer(context, _internal_status(method, context))


def _decoder(kind: type[message.Message]) -> Callable[[bytes, Any], Any]:
    name = kind.DESCRIPTOR.full_name
    parse = kind.FromString
    check = bounds.checker(kind.DESCRIPTOR)
    bind = idempotency.binder(kind.DESCRIPTOR)

    def decode(data: bytes, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[type-arg]
        try:
            request = parse(data)
        except Exception as exc:  # DecodeError, and whatever else bad bytes may raise
            violation = FieldViolation(
                "request", f"is not a valid {name}: {type(exc).__name__}: {exc}"
            )
            raise InvalidArgument([violation]) from None
        check(request)
        if bind is not None:
            bind(request, context.invocation_metadata())
        return request

    return decode


async def _answer(context: grpc.aio.ServicerContext, status: grpc.Status) -> NoReturn:  # type: ignore[type-arg]
    # Aborting answers with status alone (a trailers-only response). Setting the code and
    # returning None sends headers and an empty body first; a gateway that transcodes to
    # JSON (Envoy's grpc_json_transcoder) then prints `{}` instead of the google.rpc.Status
    # and its details.
    await context.abort_with_status(status)  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returns only by raising")


def _send(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:  # type: ignore[type-arg]
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


@functools.lru_cache(maxsize=4096)
def _refusal(delay_ms: int) -> grpc.Status:
    # Refusals come by the thousand when they come: their statuses are built once per
    # millisecond of delay.
    return to_status(Overloaded(delay_ms / 1000))


_SHUTTING_DOWN = to_status(ShuttingDown())


async def _refuse(context: grpc.aio.ServicerContext, shedder: LoadShedder) -> NoReturn:  # type: ignore[type-arg]
    if shedder.draining:
        await _answer(context, _SHUTTING_DOWN)
    await _answer(context, _refusal(_delay_ms(shedder)))


def _delay_ms(shedder: LoadShedder) -> int:
    return max(1, round(shedder.retry_after() * 1000))


def observe(
    method: str,
    inner: Callable[[Any, Any], Awaitable[Any]],
    shedder: LoadShedder,
    gatekeeper: Gatekeeper,
    rule: Rule,
    decode: Callable[[bytes, Any], Any],
    klass: QueueDelay,
) -> Callable[[bytes, Any], Awaitable[Any]]:
    """Wrap one unary-unary servicer method of class `klass`."""
    histograms = {code: RPC_DURATION.labels(method, code.name) for code in grpc.StatusCode}
    refused = RPC_REFUSED.labels(method)
    admit = gatekeeper.admit

    async def observed(request: bytes, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[type-arg]
        if not shedder.enter(klass):
            refused.inc()
            await _refuse(context, shedder)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            try:
                admit(rule, context)
                response = await inner(decode(request, context), context)
            except Overloaded:
                # Queued past its class's target while the queue stood: nothing was applied.
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                refused.inc()
                shedder.refused_late()
                answer = _refusal(_delay_ms(shedder))
            except CallerLimit as exc:
                # The caller already had its share of something the call needed: nothing done.
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                refused.inc()
                answer = to_status(exc)
            except DomainError as exc:
                code = status_code_for(exc)
                answer = to_status(_public(exc, method, context))
            except asyncio.CancelledError:
                histograms[grpc.StatusCode.CANCELLED].observe(time.perf_counter() - started)
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                histograms[code].observe(time.perf_counter() - started)
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                answer = _internal_status(method, context)
            else:
                histograms[code].observe(time.perf_counter() - started)
                return response
            # A failed call is counted before it is answered (aborting sends the status at
            # once), so a caller that has its answer finds the call in the metrics; it
            # keeps its place until then, so a draining server waits for the answer.
            histograms[code].observe(time.perf_counter() - started)
            await _answer(context, answer)
        finally:
            shedder.leave()

    return observed


def observe_stream(
    method: str,
    inner: Callable[[Any, Any], AsyncIterator[Any]],
    shedder: LoadShedder,
    gatekeeper: Gatekeeper,
    rule: Rule,
    decode: Callable[[bytes, Any], Any],
    streams: Shares,
) -> Callable[[bytes, Any], AsyncIterator[Any]]:
    """Wrap one unary-stream servicer method (an async generator) the same way, the
    stream held to its caller's share of `streams`; its duration is the stream's
    lifetime."""
    histograms = {code: RPC_DURATION.labels(method, code.name) for code in grpc.StatusCode}
    refused = RPC_REFUSED.labels(method)
    admit = gatekeeper.admit

    async def observed(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # type: ignore[type-arg]
        if not shedder.open_stream():
            refused.inc()
            _send(context, _SHUTTING_DOWN if shedder.draining else _refusal(_delay_ms(shedder)))
            return
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            admit(rule, context)
            with streams.holding(account()):
                async for item in inner(decode(request, context), context):
                    yield item
        except CallerLimit as exc:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            refused.inc()
            _send(context, to_status(exc))
        except DomainError as exc:
            code = status_code_for(exc)
            # A stream's status follows whatever it sent: it ends with the status set.
            _send(context, to_status(_public(exc, method, context)))
        except asyncio.CancelledError:
            if not shedder.draining or context.cancelled():
                code = grpc.StatusCode.CANCELLED
                raise
            # Ended by the server's shutdown (LoadShedder.drain): the caller resumes from
            # its last cursor on a live process.
            code = grpc.StatusCode.UNAVAILABLE
            _send(context, _SHUTTING_DOWN)
        except GeneratorExit:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            await _internal(method, context)
        finally:
            shedder.close_stream()
            histograms[code].observe(time.perf_counter() - started)

    return observed


def service_handler(
    servicer: object,
    service: descriptor.ServiceDescriptor,
    shedder: LoadShedder,
    gatekeeper: Gatekeeper,
    streams: Shares,
) -> grpc.GenericRpcHandler[Any, Any]:
    """The handlers of every method of `service`, each the servicer's method of that
    name, admitted by `shedder` (by the queue of its class: reads or writes) and then by
    `gatekeeper` by its rule (a server-streaming method then by its caller's share of
    `streams`, which every service's streams take together), observed, with requests
    decoded once admitted. A method without a rule fails here, at start-up: nothing is
    served that the access table does not name."""
    handlers = {}
    for method in service.methods:
        inner = getattr(servicer, method.name)
        rule = gatekeeper.rule(f"/{service.full_name}/{method.name}")
        decode = _decoder(message_factory.GetMessageClass(method.input_type))
        response = message_factory.GetMessageClass(method.output_type)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                observe_stream(method.name, inner, shedder, gatekeeper, rule, decode, streams),
                response_serializer=response.SerializeToString,
            )
        else:
            klass = shedder.reads if rule.scope in READ_SCOPES else shedder.writes
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                observe(method.name, inner, shedder, gatekeeper, rule, decode, klass),
                response_serializer=response.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
