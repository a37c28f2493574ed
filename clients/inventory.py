"""Typed async client of stockcore.v1.InventoryService, with deadlines and safe retries."""

# `timeout` parameters here become the gRPC deadline the server sees and enforces too, which
# wrapping the call in asyncio.timeout() would not convey.

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import NamedTuple, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from clients.credentials import Credentials, TokenFile
from clients.errors import StatusCode, StockcoreError, from_rpc_error, make_error
from clients.throttle import AdaptiveThrottle

_T = TypeVar("_T")
_Request = TypeVar("_Request")

#: Channel options used unless the caller passes its own.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Ping while calls are in flight, so a peer that vanished without closing the connection
    # fails them as UNAVAILABLE (retryable) within ~40 s even under long deadlines.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Servers reject pings on idle connections by default (GOAWAY "too_many_pings").
    ("grpc.keepalive_permit_without_calls", 0),
    # A restarted server should be reconnected to within one call's retry budget (5 s by
    # default); gRPC's own backoff starts at 1 s and grows to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and after how long a failed call is sent again."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    # Mutations carry their idempotency id, so resending one the server may have applied is
    # safe; but a write that ran out of time is left to the caller, who knows its own budget.
    # RESOURCE_EXHAUSTED is a refusal before any work: it is sent again after the delay
    # the server asked for (when it fits in the deadline), never sooner.
    write_codes: frozenset[StatusCode] = frozenset(
        {StatusCode.UNAVAILABLE, StatusCode.RESOURCE_EXHAUSTED}
    )
    read_codes: frozenset[StatusCode] = frozenset(
        {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.RESOURCE_EXHAUSTED}
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if not (math.isfinite(self.max_backoff) and self.multiplier >= 1):
            raise ValueError("max_backoff must be finite and multiplier at least 1")

    def retries(self, code: StatusCode, *, read: bool) -> bool:
        """Whether a failure with this code is worth sending again."""
        return code in (self.read_codes if read else self.write_codes)

    def backoff_ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        try:
            grown = self.initial_backoff * self.multiplier ** (attempt - 1)
        except OverflowError:
            grown = math.inf
        return min(self.max_backoff, grown)

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A wait drawn uniformly below the ceiling, so many clients do not retry in step."""
        return self.backoff_ceiling(attempt) * rand()

    def retry_delay(
        self,
        code: StatusCode,
        *,
        attempt: int,
        read: bool,
        remaining: float,
        rand: Callable[[], float] = random.random,
        server_delay: float | None = None,
    ) -> float | None:
        """The wait before the next attempt, or None when the failure should be raised;
        never shorter than a delay the server asked for."""
        if attempt >= self.max_attempts or not self.retries(code, read=read):
            return None
        delay = self.backoff(attempt, rand)
        if server_delay is not None:
            delay = max(delay, server_delay)
        # Sleeping through the rest of the deadline would only turn this error into a timeout.
        if delay >= remaining:
            return None
        return delay


DEFAULT_RETRY_POLICY = RetryPolicy()


def _throttled(pushback: float | None) -> StockcoreError:
    return make_error(
        StatusCode.RESOURCE_EXHAUSTED,
        "not sent: the server is refusing calls for being at capacity, and this client"
        " sends only a little more than it accepts (adaptive throttling); nothing was done",
        retry_delay=pushback,
    )


async def call_with_retry(
    send: Callable[[float], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    read: bool,
    timeout: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    throttle: AdaptiveThrottle | None = None,
) -> _T:
    """Await `send(seconds_left)` until it succeeds, fails for good, or `timeout` is spent;
    with a `throttle`, an attempt it refuses fails as RESOURCE_EXHAUSTED without being
    sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = 1
    while True:
        if throttle is not None and not throttle.admit():
            error = _throttled(throttle.pushback)
            cause: BaseException | None = None
        else:
            try:
                result = await send(deadline - loop.time())
            except grpc.aio.AioRpcError as exc:
                error, cause = from_rpc_error(exc), exc
                if throttle is not None:
                    overloaded = error.code is StatusCode.RESOURCE_EXHAUSTED
                    throttle.answered(not overloaded, error.retry_delay)
            else:
                if throttle is not None:
                    throttle.answered(True)
                return result
        delay = policy.retry_delay(
            error.code,
            attempt=attempt,
            read=read,
            remaining=deadline - loop.time(),
            server_delay=error.retry_delay,
        )
        if delay is None:
            raise error from cause
        await sleep(delay)
        attempt += 1


class ReservationStatus(enum.Enum):
    """Where a reservation stands in its life."""

    # Also stands for a status added to the API after this client was built.
    UNKNOWN = 0
    HELD = 1
    COMMITTED = 2
    RELEASED = 3
    EXPIRED = 4

    @classmethod
    def _missing_(cls, value: object) -> ReservationStatus:
        return cls.UNKNOWN


class Line(NamedTuple):
    """A quantity of one SKU."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class Reservation:
    """A hold on stock and what became of it; times are timezone-aware UTC."""

    reservation_id: str
    status: ReservationStatus
    lines: tuple[Line, ...]
    create_time: datetime
    expire_time: datetime
    finish_time: datetime | None = None

    @property
    def quantities(self) -> dict[str, int]:
        """Held quantity by SKU."""
        return dict(self.lines)


@dataclass(frozen=True)
class StockLevel:
    """One SKU's stock: available is on_hand minus reserved."""

    sku: str
    on_hand: int
    reserved: int
    available: int


@dataclass(frozen=True)
class StockAdjustment:
    """The outcome of an adjustment: the level right after it and the change it made."""

    level: StockLevel
    applied_delta: int


class ChannelClient:
    """What every stockcore client shares: one reused channel (TLS unless the credentials
    say plaintext), the bearer token sent on every call, a default deadline and the retry
    policy. Without credentials, Credentials.from_env() (the development CA by default).
    Create it inside a running event loop."""

    def __init__(
        self,
        target: str,
        *,
        credentials: Credentials | None = None,
        default_timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        check_timeout(default_timeout)
        self._default_timeout = default_timeout
        self._retry = retry
        self._credentials = Credentials.from_env() if credentials is None else credentials
        self._token_metadata = self._credentials.metadata
        self._token_file = TokenFile(self._credentials.token_file)
        # One per channel, shared by every call through it (clients/throttle.py).
        self._throttle = AdaptiveThrottle()
        self._channel = self._credentials.aio_channel(target, channel_options)

    def use_token(self, token: str) -> None:
        """Send `token` on the calls made from now on (a refreshed one, say)."""
        self._credentials = self._credentials.with_token(token)
        self._token_metadata = self._credentials.metadata

    def _auth(self) -> tuple[tuple[str, str], ...]:
        """The token's call metadata, after taking up a token file's new token."""
        fresh = self._token_file.changed()
        if fresh is not None:
            self.use_token(fresh)
        return self._token_metadata

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        credentials: Credentials | None = None,
        default_timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> Self:
        """Open a client and wait up to `default_timeout` for its channel; Unavailable if not."""
        client = cls(
            target,
            credentials=credentials,
            default_timeout=default_timeout,
            retry=retry,
            channel_options=channel_options,
        )
        try:
            async with asyncio.timeout(default_timeout):
                await client._channel.channel_ready()
        except TimeoutError:
            await client.close()
            raise make_error(
                StatusCode.UNAVAILABLE,
                f"could not connect to {target} within {default_timeout:g} s",
            ) from None
        except BaseException:
            await client.close()
            raise
        return client

    async def close(self) -> None:
        """Close the channel, cancelling calls (and streams) still in flight."""
        await self._channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class InventoryClient(ChannelClient):
    """Async client of the inventory service over one reused channel; create it inside a loop."""

    def __init__(
        self,
        target: str,
        *,
        credentials: Credentials | None = None,
        default_timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        super().__init__(
            target,
            credentials=credentials,
            default_timeout=default_timeout,
            retry=retry,
            channel_options=channel_options,
        )
        self._stub = pb_grpc.InventoryServiceStub(self._channel)

    async def reserve(
        self,
        reservation_id: str,
        lines: Mapping[str, int] | Sequence[tuple[str, int]],
        ttl: float | None = None,
        *,
        timeout: float | None = None,
    ) -> Reservation:
        """Hold every line for `ttl` seconds (server default when None), or none of them."""
        pairs = lines.items() if isinstance(lines, Mapping) else lines
        request = pb.ReserveRequest(
            reservation_id=reservation_id,
            lines=[pb.Line(sku=sku, quantity=quantity) for sku, quantity in pairs],
            ttl=None if ttl is None else to_duration(ttl),
        )
        response = await self._call(self._stub.Reserve, request, read=False, timeout=timeout)
        return _reservation(response.reservation)

    async def set_reservation_line(
        self,
        reservation_id: str,
        sku: str,
        quantity: int,
        change_id: str,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
    ) -> Reservation:
        """Set one line of a held reservation to `quantity` units (0 removes it) and hold the
        reservation `ttl` seconds from now (server default when None). `change_id` names
        the change: a retry with it is answered without applying the change again."""
        request = pb.SetReservationLineRequest(
            reservation_id=reservation_id,
            sku=sku,
            quantity=quantity,
            change_id=change_id,
            ttl=None if ttl is None else to_duration(ttl),
        )
        response = await self._call(
            self._stub.SetReservationLine, request, read=False, timeout=timeout
        )
        return _reservation(response.reservation)

    async def commit(self, reservation_id: str, *, timeout: float | None = None) -> Reservation:
        """Turn a held reservation into a deduction from on-hand."""
        request = pb.CommitRequest(reservation_id=reservation_id)
        response = await self._call(self._stub.Commit, request, read=False, timeout=timeout)
        return _reservation(response.reservation)

    async def release(self, reservation_id: str, *, timeout: float | None = None) -> Reservation:
        """Give a held reservation's stock back; a finished one is returned as it is."""
        request = pb.ReleaseRequest(reservation_id=reservation_id)
        response = await self._call(self._stub.Release, request, read=False, timeout=timeout)
        return _reservation(response.reservation)

    async def get_reservation(
        self, reservation_id: str, *, timeout: float | None = None
    ) -> Reservation:
        """Read one reservation with its lines and times."""
        request = pb.GetReservationRequest(reservation_id=reservation_id)
        response = await self._call(self._stub.GetReservation, request, read=True, timeout=timeout)
        return _reservation(response.reservation)

    async def get_stock(
        self, skus: Iterable[str], *, timeout: float | None = None
    ) -> list[StockLevel]:
        """Read the stock of each distinct SKU, in request order."""
        if isinstance(skus, str):
            # A bare string is an iterable of one-letter SKUs, which is never what was meant.
            raise TypeError("get_stock takes a collection of SKUs, not a single string")
        request = pb.GetStockRequest(skus=list(skus))
        response = await self._call(self._stub.GetStock, request, read=True, timeout=timeout)
        return [_stock_level(level) for level in response.levels]

    async def adjust_stock(
        self,
        sku: str,
        *,
        delta: int | None = None,
        on_hand: int | None = None,
        reason: str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> StockAdjustment:
        """Change on_hand by `delta` or set it to `on_hand` (exactly one); creates unknown SKUs."""
        request = pb.AdjustStockRequest(sku=sku, reason=reason, idempotency_key=idempotency_key)
        if delta is not None and on_hand is None:
            request.delta = delta
        elif on_hand is not None and delta is None:
            request.on_hand = on_hand
        else:
            raise ValueError("pass exactly one of delta and on_hand")
        response = await self._call(self._stub.AdjustStock, request, read=False, timeout=timeout)
        return StockAdjustment(_stock_level(response.level), response.applied_delta)

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _T],
        request: _Request,
        *,
        read: bool,
        timeout: float | None,
    ) -> _T:
        budget = self._default_timeout if timeout is None else timeout
        check_timeout(budget)

        metadata = self._auth()

        async def send(seconds_left: float) -> _T:
            # Every attempt resends this same request, idempotency id included.
            return await method(request, timeout=seconds_left, metadata=metadata)

        return await call_with_retry(
            send, policy=self._retry, read=read, timeout=budget, throttle=self._throttle
        )


def check_timeout(seconds: float) -> None:
    """Raise ValueError unless `seconds` is a usable deadline."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError("timeout must be a positive number of seconds")


def to_duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration of a finite number of seconds."""
    if not math.isfinite(seconds):
        raise ValueError("ttl must be a finite number of seconds")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def to_datetime(timestamp: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime of a protobuf Timestamp."""
    return timestamp.ToDatetime(tzinfo=UTC)


def _reservation(message: pb.Reservation) -> Reservation:
    return Reservation(
        reservation_id=message.reservation_id,
        status=ReservationStatus(message.status),
        lines=tuple(Line(line.sku, line.quantity) for line in message.lines),
        create_time=to_datetime(message.create_time),
        expire_time=to_datetime(message.expire_time),
        finish_time=to_datetime(message.finish_time) if message.HasField("finish_time") else None,
    )


def _stock_level(message: pb.StockLevel) -> StockLevel:
    return StockLevel(
        sku=message.sku,
        on_hand=message.on_hand,
        reserved=message.reserved,
        available=message.available,
    )
