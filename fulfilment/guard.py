"""Every call to a partner goes through its guard: the circuit breaker first, then the
call, retried with exponential backoff and full jitter (tenacity) while the failure may be
passing and the breaker lets calls through, each try measured and counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from fulfilment.metrics import PARTNER_CALL_DURATION, PARTNER_CALLS, PARTNER_RETRIES
from fulfilment.partners import (
    MalformedReply,
    NotApplied,
    OutcomeUnknown,
    PartnerError,
    Rejected,
)
from runtime.breaker import CircuitBreaker

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart one call is tried."""

    attempts: int = 3
    initial_s: float = 0.2
    max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or not 0 < self.initial_s <= self.max_s:
            raise ValueError("need attempts >= 1 and 0 < initial_s <= max_s")


class CallFailed(Exception):
    """A guarded call gave up. `sent` requests reached the wire; `maybe_applied` is true
    when any of them may have been applied; `retry_at` (monotonic) is set when the breaker
    refused the call, and says when to come back."""

    def __init__(
        self,
        partner: str,
        operation: str,
        error: PartnerError,
        *,
        sent: int,
        maybe_applied: bool,
        retry_at: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.partner = partner
        self.operation = operation
        self.error = error
        self.sent = sent
        self.maybe_applied = maybe_applied
        self.retry_at = retry_at

    @property
    def refused_by_breaker(self) -> bool:
        """Nothing was sent: the breaker was open."""
        return self.sent == 0 and self.retry_at is not None


class BreakerOpen(NotApplied):
    """The partner's breaker refused the call; nothing was sent."""

    def __init__(self, partner: str, retry_at: float) -> None:
        super().__init__(partner, "circuit breaker open")
        self.retry_at = retry_at


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, MalformedReply):
        return "malformed"
    if isinstance(error, OutcomeUnknown):
        return "unknown"
    if isinstance(error, Rejected):
        return "rejected"
    return "not_applied"


def _retryable(error: BaseException) -> bool:
    return isinstance(error, (NotApplied, OutcomeUnknown)) and not isinstance(error, BreakerOpen)


class PartnerGuard:
    """One partner's breaker and retry policy."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.breaker = breaker
        self.partner = breaker.partner
        self._policy = policy
        self._clock = clock

    async def call(self, operation: str, send: Callable[[], Awaitable[T]]) -> T:
        """`await send()` under the breaker, retried; raises CallFailed when it gives up."""
        sent = 0
        maybe_applied = False

        def before_sleep(_: RetryCallState) -> None:
            PARTNER_RETRIES.labels(self.partner, operation).inc()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.attempts),
            wait=wait_random_exponential(multiplier=self._policy.initial_s, max=self._policy.max_s),
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    permit = self.breaker.allow()
                    if permit is None:
                        PARTNER_CALLS.labels(self.partner, operation, "breaker_open").inc()
                        raise BreakerOpen(self.partner, self.breaker.retry_at())
                    sent += 1
                    started = self._clock()
                    try:
                        result = await send()
                    except asyncio.CancelledError:
                        self.breaker.abandon(permit)
                        raise
                    except PartnerError as error:
                        self._observe(operation, started, error)
                        # A refusal for good is an answer: the partner is healthy.
                        self.breaker.record(
                            permit, self._clock() - started, isinstance(error, Rejected)
                        )
                        maybe_applied |= isinstance(error, OutcomeUnknown)
                        raise
                    except Exception as error:
                        # An adapter bug or an unforeseen transport error: it may have sent.
                        unknown = OutcomeUnknown(self.partner, f"{type(error).__name__}: {error}")
                        self._observe(operation, started, unknown)
                        self.breaker.record(permit, self._clock() - started, False)
                        maybe_applied = True
                        raise unknown from error
                    self._observe(operation, started, None)
                    self.breaker.record(permit, self._clock() - started, True)
                    return result
        except BreakerOpen as refused:
            raise CallFailed(
                self.partner,
                operation,
                refused,
                sent=sent,
                maybe_applied=maybe_applied,
                retry_at=refused.retry_at,
            ) from refused
        except PartnerError as error:
            raise CallFailed(
                self.partner, operation, error, sent=sent, maybe_applied=maybe_applied
            ) from error
        raise AssertionError("tenacity stopped without an outcome")

    def _observe(self, operation: str, started: float, error: BaseException | None) -> None:
        PARTNER_CALL_DURATION.labels(self.partner, operation).observe(self._clock() - started)
        PARTNER_CALLS.labels(self.partner, operation, _outcome(error)).inc()
