"""What the receiver does with one delivery, as plain code (payments/endpoint.py only adapts
HTTP to it):

1. **Genuine and fresh, or refused (401).** The signature is checked over the body as
   received (payments/signature.py); a delivery that is not the provider's, or not fresh,
   changes nothing.
2. **Readable, or refused (400).** A body that is no event changes nothing.
3. **Decided through the contract.** A captured charge is reported with ConfirmPayment,
   the charge id as payment id (the same code path as any caller's; idempotent on it, so
   deciding again after a crash gives the same answer). Paid: PAID. Refused because the
   order cannot be paid (cancelled, expired, paid by another payment: ILLEGAL_TRANSITION)
   or because the amount or currency is not the order's (PAYMENT_MISMATCH): the money
   paid nothing and is recorded to return (TO_RETURN), never dropped. An unknown order or
   an invalid id is refused (400) and recorded nowhere; a charge id that already paid
   another order is refused (409). A refund's outcome (refund.succeeded, refund.failed)
   settles the refund of stockcore's it reports, found by the provider's refund id
   (REFUND_SETTLED: the refund REFUNDED or FAILED, the order's REFUNDED or REFUND_FAILED
   event, a charge to return marked returned, in the transaction that records the event;
   sql/live/refunds.sql). One that arrives before the refund sender recorded the
   provider's id (its send under way, or cut short by a crash: the sender sends again
   with the same idempotency key) is answered 503, recorded nowhere, and delivered again.
   A refund stockcore did not make is NOTED, as is every other type of event.
4. **Recorded once per event id, then acknowledged.** What the event did is written in one
   transaction (payments/store.py); only then is the provider answered 2xx, so an
   acknowledged event survives a crash. Another delivery of an event already recorded is
   counted, changes nothing else and is answered with what the first recorded: deciding
   it again is harmless (ConfirmPayment is idempotent on the charge id), and costs one
   call for the rare duplicate instead of a database round trip for every delivery.
   Anything that leaves the outcome unknown (the order server or the database
   unreachable, a refusal the receiver does not know) is answered 503: nothing is
   recorded and the provider delivers the event again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from clients.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StockcoreError,
)
from clients.orders import OrderClient
from payments.events import MalformedEvent, Outcome, ProviderEvent, ReturnReason, parse_event
from payments.signature import SignatureError, verify
from payments.store import PaymentEventStore

log = logging.getLogger(__name__)

# The ErrorInfo reasons of ConfirmPayment's refusals that mean this charge paid nothing.
_NOT_PAYABLE = "ILLEGAL_TRANSITION"
_MISMATCH = "PAYMENT_MISMATCH"


@dataclass(frozen=True)
class Reply:
    """The HTTP answer to one delivery."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """An event the receiver refuses to record: the status and why."""

    status: int
    error: str


@dataclass(frozen=True)
class Decision:
    """What an event did; `reason` for money to return."""

    outcome: Outcome
    reason: ReturnReason | None = None


@dataclass
class WebhookReceiver:
    """Receives the provider's deliveries: verifies them with `secrets` within
    `tolerance_s`, decides captured charges with `orders`, records in `store`."""

    secrets: Sequence[bytes]
    tolerance_s: float
    store: PaymentEventStore
    orders: OrderClient
    clock: Callable[[], float] = field(default=time.time)

    async def receive(self, signature_header: str | None, body: bytes) -> Reply:
        """Answer one delivery (see the module's notes)."""
        try:
            verify(
                signature_header,
                body,
                self.secrets,
                now=self.clock(),
                tolerance_s=self.tolerance_s,
            )
        except SignatureError as refused:
            log.warning("webhook refused", extra={"why": refused.reason})
            return Reply(401, {"error": refused.reason})
        try:
            event = parse_event(body)
        except MalformedEvent as malformed:
            log.warning("webhook refused", extra={"why": str(malformed)})
            return Reply(400, {"error": str(malformed)})
        try:
            if event.settles_refund:
                return await self._settle_refund(event)
            decided = await decide(self.orders, event)
            if isinstance(decided, Refused):
                log.warning(
                    "webhook refused",
                    extra={
                        "why": decided.error,
                        "event_id": event.event_id,
                        "order_id": event.order_id,
                    },
                )
                return Reply(decided.status, {"error": decided.error})
            first = await self.store.record(event, decided.outcome, decided.reason)
            if not first:
                # Delivered again: what counts is what the first delivery recorded.
                recorded = await self.store.event(event.event_id)
                assert recorded is not None
                return self._acknowledged(event, recorded.outcome, duplicate=True)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error(
                "webhook not recorded: the database failed",
                extra={"event_id": event.event_id, "error": type(exc).__name__},
            )
            return Reply(503, {"error": "not recorded; deliver it again"})
        _recorded(event, decided.outcome)
        return self._acknowledged(event, decided.outcome, duplicate=False)

    async def _settle_refund(self, event: ProviderEvent) -> Reply:
        """A refund's outcome: recorded and settled in one call; 503 while the refund it
        reports is not yet bound to the provider's id (the sender's send is under way).
        Whether it was recorded before is read first, for the answer and the metrics only
        (the call itself counts another delivery and changes nothing else)."""
        earlier = await self.store.event(event.event_id)
        outcome = await self.store.record_refund_outcome(event)
        if outcome is None:
            log.warning(
                "refund outcome before its send was recorded; asking for it again",
                extra={"event_id": event.event_id, "provider_refund_id": event.object_id},
            )
            return Reply(503, {"error": "refund not yet known; deliver it again"})
        if earlier is None:
            _recorded(event, outcome)
        return self._acknowledged(event, outcome, duplicate=earlier is not None)

    @staticmethod
    def _acknowledged(event: ProviderEvent, outcome: Outcome, *, duplicate: bool) -> Reply:
        return Reply(
            200, {"event_id": event.event_id, "outcome": outcome.name, "duplicate": duplicate}
        )


def _recorded(event: ProviderEvent, outcome: Outcome) -> None:
    log.info(
        "webhook recorded",
        extra={
            "event_id": event.event_id,
            "type": event.type,
            "object_id": event.object_id,
            "order_id": event.order_id,
            "outcome": outcome.name,
        },
    )


async def decide(orders: OrderClient, event: ProviderEvent) -> Decision | Refused:
    """What an event does: a captured charge pays its order through `orders`
    (ConfirmPayment), or is money to return; any other event is noted. The reconciler
    decides a charge whose webhook never came with this same code."""
    if not event.captures_money:
        return Decision(Outcome.NOTED)
    assert event.order_id and event.amount_minor is not None and event.currency
    try:
        await orders.confirm_payment(
            event.order_id, event.object_id, event.amount_minor, event.currency
        )
    except NotFound:
        return Refused(400, "unknown order")
    except InvalidArgument as invalid:
        fields = ", ".join(v.field for v in invalid.field_violations) or "the request"
        return Refused(400, f"invalid {fields}")
    except AlreadyExists:
        log.error(
            "a charge id already paid another order",
            extra={"event_id": event.event_id, "order_id": event.order_id},
        )
        return Refused(409, "the charge already paid another order")
    except FailedPrecondition as refused:
        reason = refused.error_info.reason if refused.error_info else ""
        if reason == _NOT_PAYABLE:
            return Decision(Outcome.TO_RETURN, ReturnReason.ORDER_NOT_PAYABLE)
        if reason == _MISMATCH:
            return Decision(Outcome.TO_RETURN, ReturnReason.AMOUNT_DIFFERS)
        return _unknown(event, refused)
    except StockcoreError as failed:
        return _unknown(event, failed)
    return Decision(Outcome.PAID)


def _unknown(event: ProviderEvent, error: StockcoreError) -> Refused:
    # Unavailable, a deadline, an overloaded server, a token refused, a refusal this
    # receiver does not know: the outcome is not known, so nothing is recorded.
    log.error(
        "payment not confirmed; the provider will deliver it again",
        extra={
            "event_id": event.event_id,
            "order_id": event.order_id,
            "code": error.code.name,
            "reason": error.error_info.reason if error.error_info else "",
        },
    )
    return Refused(503, "not decided; deliver it again")
