"""Fulfilment state in PostgreSQL (sql/live/fulfilment.sql): intake of paid and cancelled
orders, leases of due rows, the record of a batch's outcomes, heartbeats, breaker
transitions and the stale-sync scan, and what operators ask of them (fulfilment/admin.py):
stages, workers, an order's history, dead letters and their replay. Each is one statement
or one function call, answering with a typed row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from fulfilment.domain import Fulfilment, Outcome, Stage
from runtime.pools import open_pool


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


@dataclass(frozen=True)
class WorkerReport:
    """A worker's last heartbeat; `silent_s` is the time since, by the database's clock."""

    worker: str
    seen_at: datetime
    silent_s: float
    in_flight: int
    # Per partner, the worker's breaker as it reported it (Breaker.snapshot()).
    breakers: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class StoredTransition(BreakerTransitionRow):
    """A breaker transition as stored: the transition, and whose breaker moved."""

    worker: str


@dataclass(frozen=True)
class FulfilmentRecord:
    """An order's fulfilment row as operators read it (no lease: that is the workers')."""

    order_id: str
    stage: Stage
    customer_id: str
    paid_at: datetime
    created_at: datetime
    updated_at: datetime
    last_sync_at: datetime | None
    warehouse_ref: str | None
    handed_off_at: datetime | None
    packed_at: datetime | None
    carrier: str | None
    booking_key: str | None
    tracking_no: str | None
    carrier_ack_id: str | None
    booked_at: datetime | None
    shipped_at: datetime | None
    in_transit_at: datetime | None
    delivered_at: datetime | None
    cancel_requested: bool
    attempts: int
    last_error: str | None
    due_at: datetime
    lines: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class HistoryLine:
    """One line of an order's fulfilment history; `worker` is None in the copy a dead letter
    carries, which does not keep it."""

    at: datetime
    stage: Stage
    partner: str
    what: str
    detail: str
    worker: str | None


@dataclass(frozen=True)
class DeadLetter:
    """A step that failed past its retry budget; `replayed_at` None while it waits."""

    dead_id: int
    order_id: str
    stage: Stage
    partner: str
    attempts: int
    error: str
    dead_at: datetime
    worker: str
    replayed_at: datetime | None


def _dead_letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        dead_id=row["id"],
        order_id=row["order_id"],
        stage=Stage(row["stage"]),
        partner=row["partner"],
        attempts=row["attempts"],
        error=row["error"],
        dead_at=row["dead_at"],
        worker=row["worker"],
        replayed_at=row["replayed_at"],
    )


_DEAD_LETTER_COLUMNS = "id, order_id, stage, partner, attempts, error, dead_at, worker, replayed_at"


class FulfilmentStore:
    """The fulfilment tables, through one pool."""

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
        name: str = "stockcore-fulfil",
    ) -> FulfilmentStore:
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

    # --- what operators ask ---------------------------------------------------------

    async def orders_by_stage(self) -> dict[Stage, int]:
        """How many orders each stage holds (stages holding none left out)."""
        rows = await self._pool.fetch(
            "SELECT stage, count(*) AS n FROM stockcore.fulfilments GROUP BY stage"
        )
        return {Stage(row["stage"]): row["n"] for row in rows}

    async def workers(self) -> list[WorkerReport]:
        """Every worker's last heartbeat, by name."""
        rows = await self._pool.fetch(
            "SELECT worker, seen_at, in_flight, breakers,"
            " extract(epoch FROM now() - seen_at)::float8 AS silent_s"
            " FROM stockcore.fulfilment_workers ORDER BY worker"
        )
        return [
            WorkerReport(
                worker=row["worker"],
                seen_at=row["seen_at"],
                silent_s=row["silent_s"],
                in_flight=row["in_flight"],
                breakers=json.loads(row["breakers"]),
            )
            for row in rows
        ]

    async def recent_transitions(self, limit: int) -> list[StoredTransition]:
        """The last `limit` breaker transitions of every worker, newest first."""
        rows = await self._pool.fetch(
            "SELECT worker, partner, from_state, to_state, reason, at"
            " FROM stockcore.fulfilment_breaker_transitions ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [StoredTransition(**dict(row)) for row in rows]

    async def fulfilment(self, order_id: str) -> FulfilmentRecord | None:
        """An order's fulfilment row (None: the workers have not heard of the order)."""
        row = await self._pool.fetchrow(
            "SELECT * FROM stockcore.fulfilments WHERE order_id = $1", order_id
        )
        if row is None:
            return None
        return FulfilmentRecord(
            order_id=row["order_id"],
            stage=Stage(row["stage"]),
            customer_id=row["customer_id"],
            paid_at=row["paid_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_sync_at=row["last_sync_at"],
            warehouse_ref=row["warehouse_ref"],
            handed_off_at=row["handed_off_at"],
            packed_at=row["packed_at"],
            carrier=row["carrier"],
            booking_key=row["booking_key"],
            tracking_no=row["tracking_no"],
            carrier_ack_id=row["carrier_ack_id"],
            booked_at=row["booked_at"],
            shipped_at=row["shipped_at"],
            in_transit_at=row["in_transit_at"],
            delivered_at=row["delivered_at"],
            cancel_requested=row["cancel_requested"],
            attempts=row["attempts"],
            last_error=row["last_error"],
            due_at=row["due_at"],
            lines=tuple(zip(row["skus"], row["quantities"], strict=True)),
        )

    async def history(self, order_id: str) -> list[HistoryLine]:
        """An order's fulfilment history, oldest first."""
        rows = await self._pool.fetch(
            "SELECT at, stage, partner, what, detail, worker FROM stockcore.fulfilment_history"
            " WHERE order_id = $1 ORDER BY id",
            order_id,
        )
        return [
            HistoryLine(
                row["at"],
                Stage(row["stage"]),
                row["partner"],
                row["what"],
                row["detail"],
                row["worker"],
            )
            for row in rows
        ]

    async def dead_letters_waiting(self) -> int:
        """How many dead letters wait for a replay."""
        waiting = await self._pool.fetchval(
            "SELECT count(*) FROM stockcore.fulfilment_dead_letters WHERE replayed_at IS NULL"
        )
        return int(waiting)

    async def dead_letters(self, limit: int, *, replayed: bool) -> list[DeadLetter]:
        """Up to `limit` dead letters waiting for a replay (and, with `replayed`, those
        replayed already), oldest first."""
        rows = await self._pool.fetch(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM stockcore.fulfilment_dead_letters"
            " WHERE $1 OR replayed_at IS NULL ORDER BY id LIMIT $2",
            replayed,
            limit,
        )
        return [_dead_letter(row) for row in rows]

    async def dead_letter(self, dead_id: int) -> tuple[DeadLetter, list[HistoryLine]] | None:
        """A dead letter with the order's history as it was when the step died (None: no
        letter has that id)."""
        row = await self._pool.fetchrow(
            f"SELECT {_DEAD_LETTER_COLUMNS}, history FROM stockcore.fulfilment_dead_letters"
            " WHERE id = $1",
            dead_id,
        )
        if row is None:
            return None
        history = [
            HistoryLine(
                datetime.fromisoformat(line["at"]),
                Stage(line["stage"]),
                line["partner"],
                line["what"],
                line["detail"],
                None,
            )
            for line in json.loads(row["history"])
        ]
        return _dead_letter(row), history

    async def waiting_dead_letter_ids(self) -> list[int]:
        """The ids of every dead letter waiting for a replay, oldest first."""
        rows = await self._pool.fetch(
            "SELECT id FROM stockcore.fulfilment_dead_letters WHERE replayed_at IS NULL ORDER BY id"
        )
        return [row["id"] for row in rows]

    async def replay_dead_letter(self, dead_id: int, by: str) -> str | None:
        """Send a dead letter's order back to the step that died, its tries reset, and mark
        the letter replayed by `by`; the order's id (None: no letter with that id waits)."""
        order_id: str | None = await self._pool.fetchval(
            "SELECT stockcore.replay_fulfilment_dead_letter($1, $2)", dead_id, by
        )
        return order_id
