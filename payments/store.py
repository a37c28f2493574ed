"""The receiver's tables in PostgreSQL (016_payment_events.sql, sql/live/payments.sql): the
provider's events it acknowledged and the money to return. Each write is one function call
answering with a typed value; the reads are for operators and checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from payments.events import Outcome, ProviderEvent, ReturnReason
from runtime.pools import open_pool


@dataclass(frozen=True)
class RecordedEvent:
    """A provider event as recorded: what it did, and how many deliveries brought it."""

    event_id: str
    type: str
    object_id: str
    order_id: str | None
    amount_minor: int | None
    currency: str | None
    outcome: Outcome
    deliveries: int
    received_at: datetime


@dataclass(frozen=True)
class PaymentToReturn:
    """A captured charge that paid no order; `returned_at` is None until it is refunded."""

    charge_id: str
    order_id: str
    amount_minor: int
    currency: str
    reason: ReturnReason
    event_id: str
    recorded_at: datetime
    returned_at: datetime | None


class PaymentEventStore:
    """The receiver's tables, through one pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        pool_size: int,
        timeout: float,
        connect_timeout: float = 60.0,
        name: str = "stockcore-payments",
    ) -> PaymentEventStore:
        """Open a pool; `name` is what PostgreSQL shows as its connections' application."""
        pool = await open_pool(
            dsn,
            name=name,
            max_size=pool_size,
            command_timeout=timeout,
            connect_timeout=connect_timeout,
        )
        return cls(pool)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def record(
        self, event: ProviderEvent, outcome: Outcome, reason: ReturnReason | None
    ) -> bool:
        """Record what an event did, and a charge to return with it (TO_RETURN, with its
        reason); whether it was new (False: another delivery recorded it first)."""
        return bool(
            await self._pool.fetchval(
                "SELECT stockcore.record_payment_event($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10::jsonb)",
                event.event_id,
                event.type,
                event.object_id,
                event.order_id,
                event.amount_minor,
                event.currency,
                event.created,
                int(outcome),
                None if reason is None else int(reason),
                json.dumps(event.document),
            )
        )

    async def record_refund_outcome(self, event: ProviderEvent) -> Outcome | None:
        """Record a refund's outcome and settle the refund of stockcore's it reports, in one
        transaction (stockcore.record_refund_event): REFUND_SETTLED, NOTED (not a refund of
        stockcore's), the outcome of an event recorded already, or None, recording nothing,
        when a refund of that charge is not yet bound to the provider's id (deliver it
        again)."""
        outcome = await self._pool.fetchval(
            "SELECT stockcore.record_refund_event($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
            event.event_id,
            event.type,
            event.object_id,
            event.charge_id,
            event.order_id,
            event.amount_minor,
            event.currency,
            event.created,
            json.dumps(event.document),
        )
        return None if outcome is None else Outcome(outcome)

    async def event(self, event_id: str) -> RecordedEvent | None:
        """A recorded event (None: not recorded)."""
        row = await self._pool.fetchrow(
            "SELECT event_id, type, object_id, order_id, amount_minor, currency, outcome,"
            " deliveries, received_at FROM stockcore.payment_events WHERE event_id = $1",
            event_id,
        )
        if row is None:
            return None
        return RecordedEvent(**{**dict(row), "outcome": Outcome(row["outcome"])})

    async def payments_to_return(self, *, returned: bool = False) -> list[PaymentToReturn]:
        """The charges to return not yet returned (with `returned`, every one), oldest
        first."""
        rows = await self._pool.fetch(
            "SELECT charge_id, order_id, amount_minor, currency, reason, event_id, recorded_at,"
            " returned_at FROM stockcore.payments_to_return"
            " WHERE $1 OR returned_at IS NULL ORDER BY recorded_at, charge_id",
            returned,
        )
        return [
            PaymentToReturn(**{**dict(row), "reason": ReturnReason(row["reason"])}) for row in rows
        ]
