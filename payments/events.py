"""The payment provider's events as the receiver reads them, and what an event did.

An event is JSON: `{"id", "type", "created", "data": {"object": {...}}}`, the object being
the charge, refund or payout it reports (simulators/payments.py shows them). A captured
charge (`charge.succeeded`) changes an order; its object must name the order, the amount
in minor units and the ISO 4217 currency. A refund's outcome (`refund.succeeded`,
`refund.failed`) settles the refund of stockcore's it reports (stockcore.refunds, by the
provider's refund id); its object must name the charge. Every other type is noted.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CHARGE_SUCCEEDED = "charge.succeeded"
#: The events that settle a refund.
REFUND_OUTCOMES = frozenset({"refund.succeeded", "refund.failed"})
_MAX_ID = 128
_MAX_TYPE = 64
_CURRENCY = re.compile(r"[A-Z]{3}")


class Outcome(enum.IntEnum):
    """What an event did (the codes of stockcore.payment_events.outcome)."""

    PAID = 1
    """A captured charge paid its order (ConfirmPayment)."""
    TO_RETURN = 2
    """A captured charge paid nothing: its money is to be given back."""
    NOTED = 3
    """Anything else: recorded, no order changed."""
    REFUND_SETTLED = 4
    """A refund's outcome, recorded on stockcore's refund (sql/live/refunds.sql)."""


class ReturnReason(enum.IntEnum):
    """Why a captured charge paid nothing (stockcore.payments_to_return.reason)."""

    ORDER_NOT_PAYABLE = 1
    """The order was cancelled, had expired, or another payment had paid it."""
    AMOUNT_DIFFERS = 2
    """The amount or currency captured is not the order's."""


class MalformedEvent(ValueError):
    """A signed body that is not an event the receiver can read."""


@dataclass(frozen=True)
class ProviderEvent:
    """One event: its id, type and time, the object it is about and, for a charge, the
    order, amount and currency; `charge_id`, the charge a refund is of; `document` is the
    whole event as sent."""

    event_id: str
    type: str
    created: datetime
    object_id: str
    order_id: str | None
    amount_minor: int | None
    currency: str | None
    document: dict[str, Any]
    charge_id: str | None = None

    @property
    def captures_money(self) -> bool:
        """Whether it reports a captured charge, which pays an order."""
        return self.type == CHARGE_SUCCEEDED

    @property
    def settles_refund(self) -> bool:
        """Whether it reports a refund's outcome."""
        return self.type in REFUND_OUTCOMES


def _id(value: object, what: str, limit: int = _MAX_ID) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise MalformedEvent(f"{what} must be 1-{limit} printable characters")
    return value


def _integer(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedEvent(f"{what} must be a whole number >= 0")
    return value


def parse_event(body: bytes) -> ProviderEvent:
    """Read an event; MalformedEvent when it is not one."""
    if b"\\u0000" in body:
        # PostgreSQL's text and jsonb hold no NUL character.
        raise MalformedEvent("the body holds a NUL character")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent("the body is not JSON") from exc
    if not isinstance(document, dict):
        raise MalformedEvent("an event is a JSON object")
    event_id = _id(document.get("id"), "id")
    kind = _id(document.get("type"), "type", _MAX_TYPE)
    try:
        created = datetime.fromtimestamp(_integer(document.get("created"), "created"), UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedEvent("created must be a time in Unix seconds") from exc
    data = document.get("data")
    target = data.get("object") if isinstance(data, dict) else None
    if not isinstance(target, dict):
        raise MalformedEvent("data.object must be the object the event is about")
    object_id = _id(target.get("id"), "data.object.id")
    order_id = target.get("order_id") or None
    amount = target.get("amount")
    currency = target.get("currency")
    if kind == CHARGE_SUCCEEDED:
        order_id = _id(order_id, "data.object.order_id")
        amount = _integer(amount, "data.object.amount")
        if amount == 0:
            raise MalformedEvent("data.object.amount of a captured charge must be positive")
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise MalformedEvent("data.object.currency must be an ISO 4217 code")
    charge_id = None
    if kind in REFUND_OUTCOMES:
        charge_id = _id(target.get("charge"), "data.object.charge")
    if kind != CHARGE_SUCCEEDED:
        # Noted as sent, when it names them well; nothing depends on them.
        named = isinstance(order_id, str) and len(order_id) <= _MAX_ID and order_id.isprintable()
        order_id = order_id if named else None
        amount = amount if isinstance(amount, int) and not isinstance(amount, bool) else None
        currency = currency if isinstance(currency, str) and _CURRENCY.fullmatch(currency) else None
    return ProviderEvent(
        event_id, kind, created, object_id, order_id, amount, currency, document, charge_id
    )
