"""Fulfilment state in PostgreSQL (sql/live/fulfilment.sql): intake of paid and cancelled
orders, leases of due rows, the record of a batch's outcomes, heartbeats, breaker
transitions and the stale-sync scan; each one statement or one function call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from clients.fulfilment_stages import Stage
from fulfilment.domain import Fulfilment, Outcome


def _json(value: object) -> str:
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def fulfilment_from_row(row: asyncpg.Record) -> Fulfilment:
    """A claimed row as a Fulfilment."""
    return Fulfilment(
        order_id=row["order_id"],
        stage=Stage(row["stage"]),
        customer_id=row["customer_id"],
        lines=tuple(zip(row["skus"], row["quantities"], strict=True)),
        paid_at=row["paid_at"],
        lease=row["lease"],
        attempts=row["attempts"],
        warehouse_ref=row["warehouse_ref"],
        handed_off_at=row["handed_off_at"],
        packed_at=row["packed_at"],
        carrier=row["carrier"],
        booking_key=row["booking_key"],
        tracking_no=row["tracking_no"],
        carrier_ack_id=row["carrier_ack_id"],
        shipped_at=row["shipped_at"],
        in_transit_at=row["in_transit_at"],
        delivered_at=row["delivered_at"],
        cancel_requested=row["cancel_requested"],
        last_error=row["last_error"],
    )


@dataclass(frozen=True)
class StaleScan:
    """What one stale-sync scan found and did."""

    stale: int
    oldest_s: float
    pushed: int
    created: int


@dataclass(frozen=True)
class BreakerTransitionRow:
    """A breaker transition to store."""

    partner: str
    from_state: str
    to_state: str
    reason: str
    at: datetime


class FulfilmentStore:
    """The fulfilment tables, through one pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, pool_size: int, timeout: float) -> FulfilmentStore:
        """Open a pool."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=pool_size,
            command_timeout=timeout,
            server_settings={"application_name": "stockcore-fulfil", "jit": "off"},
        )
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def paid(
        self,
        order_id: str,
        customer_id: str,
        lines: Sequence[tuple[str, int]],
        paid_at: datetime,
        worker: str,
    ) -> bool:
        """Start a paid order's fulfilment (once); whether it is new."""
        return bool(
            await self._pool.fetchval(
                "SELECT stockcore.fulfilment_paid($1, $2, $3, $4, $5, $6)",
                order_id,
                customer_id,
                [sku for sku, _ in lines],
                [qty for _, qty in lines],
                paid_at,
                worker,
            )
        )

    async def cancelled(self, order_id: str, customer_id: str, worker: str) -> Stage | None:
        """Note an order's cancellation; the stage its fulfilment is in (None: unchanged)."""
        stage = await self._pool.fetchval(
            "SELECT stockcore.fulfilment_cancelled($1, $2, $3)", order_id, customer_id, worker
        )
        return None if stage is None else Stage(stage)

    async def claim(self, worker: str, limit: int, lease_s: float) -> list[Fulfilment]:
        """Lease up to `limit` due rows."""
        rows = await self._pool.fetch(
            "SELECT * FROM stockcore.claim_fulfilments($1, $2, $3)", worker, limit, lease_s
        )
        return [fulfilment_from_row(row) for row in rows]

    async def record(self, outcomes: Sequence[Outcome], worker: str) -> set[str]:
        """Record a batch of outcomes; the order ids recorded (the others' leases were lost)."""
        if not outcomes:
            return set()
        body: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        for o in outcomes:
            body.append(
                {
                    "order_id": o.row.order_id,
                    "lease": o.row.lease,
                    "stage": int(o.stage),
                    "due_in_s": o.due_in_s,
                    "attempts": o.attempts,
                    "last_error": o.last_error,
                    "synced": o.synced,
                    "warehouse_ref": o.warehouse_ref,
                    "handed_off": o.handed_off,
                    "packed_at": o.packed_at,
                    "bind": o.bind,
                    "carrier": o.carrier,
                    "booking_key": o.booking_key,
                    "tracking_no": o.tracking_no,
                    "carrier_ack_id": o.carrier_ack_id,
                    "booked": o.booked,
                    "shipped": o.shipped,
                    "in_transit_at": o.in_transit_at,
                    "delivered_at": o.delivered_at,
                    "dead_stage": None if o.dead_stage is None else int(o.dead_stage),
                    "dead_partner": o.dead_partner,
                }
            )
            history += [
                {
                    "order_id": o.row.order_id,
                    "stage": int(o.stage),
                    "partner": h.partner,
                    "what": h.what,
                    "detail": h.detail[:2000],
                }
                for h in o.history
            ]
        recorded = await self._pool.fetchval(
            "SELECT stockcore.record_fulfilments($1::jsonb, $2::jsonb, $3)",
            _json(body),
            _json(history),
            worker,
        )
        return set(recorded or ())

    async def heartbeat(
        self,
        worker: str,
        started_at: datetime,
        in_flight: int,
        breakers: dict[str, object],
        transitions: Sequence[BreakerTransitionRow],
    ) -> None:
        """Say this worker is alive, with its breakers, and store its new transitions."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO stockcore.fulfilment_workers"
                " (worker, started_at, seen_at, in_flight, breakers)"
                " VALUES ($1, $2, now(), $3, $4::jsonb)"
                " ON CONFLICT (worker) DO UPDATE SET seen_at = now(),"
                " in_flight = excluded.in_flight, breakers = excluded.breakers",
                worker,
                started_at,
                in_flight,
                _json(breakers),
            )
            if transitions:
                await conn.executemany(
                    "INSERT INTO stockcore.fulfilment_breaker_transitions"
                    " (worker, partner, from_state, to_state, reason, at)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    [
                        (worker, t.partner, t.from_state, t.to_state, t.reason, t.at)
                        for t in transitions
                    ],
                )

    async def scan_stale(self, stale_after_s: float, worker: str) -> StaleScan:
        """Run the stale-sync scan."""
        row = await self._pool.fetchrow(
            "SELECT * FROM stockcore.scan_stale_fulfilments($1, $2)", stale_after_s, worker
        )
        assert row is not None
        return StaleScan(row["stale"], float(row["oldest_s"]), row["pushed"], row["created"])

    async def bind(self, rows: Sequence[tuple[Fulfilment, str, str]], worker: str) -> set[str]:
        """Bind leased rows to (carrier, booking key) before booking; the ids bound."""
        if not rows:
            return set()
        bound = await self._pool.fetchval(
            "SELECT stockcore.bind_fulfilments($1, $2, $3, $4, $5)",
            [r.order_id for r, _, _ in rows],
            [r.lease for r, _, _ in rows],
            [carrier for _, carrier, _ in rows],
            [key for _, _, key in rows],
            worker,
        )
        return set(bound or ())
