"""PostgreSQL, the durable authority: every stock change is a conditional UPDATE made
inside one of the batch functions of sql/live/inventory.sql, one statement per batch.

Two pools: one for the batches and the server's own upkeep (expiry, the mirror, health),
one for what callers read (`read`, `read_levels`, `plain_reservations`). However many
callers read, and however slow their reads, a batch that changes stock never waits for
a connection a reader holds: readers queue on their own pool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, TypeVar

import asyncpg

from runtime.pools import keep_session
from server.domain.errors import Shortage, Unavailable
from server.domain.inventory import (
    AdjustCommand,
    Finish,
    Line,
    Reservation,
    ReservationStatus,
    ReserveCommand,
    SetLine,
    StockLevel,
)
from server.domain.sharding import shard_of

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which the same statement may succeed when simply run again.
_RETRYABLE = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.UniqueViolationError,
)
# Errors that mean the database cannot be reached right now.
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.InternalClientError,
)


class ReserveCode(IntEnum):
    """What hold_stock did with one request (codes of the SQL function)."""

    HELD = 0
    REPEAT = 1
    CONFLICT = 2
    REJECTED = 3


class FinishCode(IntEnum):
    """What finish_holds did with one reservation (codes of the SQL function)."""

    APPLIED = 0
    UNCHANGED = 1
    ORDER_OWNED = 2
    UNKNOWN = 4
    OTHER_CUSTOMER = 5
    """Not held for the customer the request is bound to."""


class LineCode(IntEnum):
    """What set_reservation_lines did with one change (codes of the SQL function)."""

    APPLIED = 0
    REPEAT = 1
    CONFLICT = 2
    REJECTED = 3
    UNKNOWN = 4
    NOT_HELD = 5
    ORDER_OWNED = 6
    OTHER_CUSTOMER = 7
    FULL = 8


class AdjustCode(IntEnum):
    """What adjust did (codes of the SQL function)."""

    APPLIED = 0
    REPEAT = 1
    CONFLICT = 2
    REFUSED = 3


@dataclass(frozen=True, slots=True)
class MirrorLevel:
    """A SKU's level at a version: what the Redis mirror is told."""

    sku: str
    on_hand: int
    reserved: int
    version: int


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """The outcome of one reservation in a batch."""

    code: ReserveCode
    reservation: Reservation | None
    shortages: tuple[Shortage, ...] = ()
    unknown_skus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FinishResult:
    """The outcome of one finish in a batch; reservation is None when unknown."""

    code: FinishCode
    reservation: Reservation | None


@dataclass(frozen=True, slots=True)
class LineResult:
    """The outcome of one SetReservationLine in a batch: the reservation after it (None
    when unknown, or not the caller's to see), and for a short SKU (REJECTED) the units
    the reservation could hold of it (None: an unknown SKU)."""

    code: LineCode
    reservation: Reservation | None
    available: int | None = None


@dataclass(frozen=True, slots=True)
class HeldLine:
    """What a change would meet, read without a lock before the gate: whether the
    reservation is HELD, the units it holds of the SKU, and whether the change id was
    applied already."""

    held: bool
    quantity: int
    known_change: bool


@dataclass(frozen=True, slots=True)
class AdjustResult:
    """The outcome of an adjustment."""

    code: AdjustCode
    applied_delta: int
    level: StockLevel
    version: int | None


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one expiry sweep did: holds that were due, those it expired (with how late
    each was), unpaid orders that expired with them, and the levels after."""

    due: int
    holds_expired: int
    orders_expired: int
    lags_s: tuple[float, ...]
    levels: tuple[MirrorLevel, ...]


def reservation_from_row(row: asyncpg.Record) -> Reservation:
    """A Reservation from a stockcore.reservations row (or composite)."""
    return Reservation(
        reservation_id=row["reservation_id"],
        status=ReservationStatus(row["status"]),
        lines=tuple(Line(s, q) for s, q in zip(row["skus"], row["quantities"], strict=True)),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        finished_at=row["finished_at"],
    )


def mirror_levels(rows: Sequence[asyncpg.Record] | None) -> list[MirrorLevel]:
    """MirrorLevels from stockcore.stock_level composites."""
    return [MirrorLevel(r["sku"], r["on_hand"], r["reserved"], r["version"]) for r in rows or ()]


@dataclass(frozen=True, slots=True)
class HoldArrays:
    """Reservation requests as hold_stock's parallel arrays, sorted by id (repeats of an
    id adjacent), with where each request of the caller's order went."""

    order: list[int]
    ids: list[str]
    fingerprints: list[bytes]
    ttls: list[int]
    callers: list[str]
    customers: list[str | None]
    first: list[int]
    count: list[int]
    shards: list[int]
    skus: list[str]
    quantities: list[int]

    @classmethod
    def of(cls, commands: Sequence[ReserveCommand], shard_count: int) -> HoldArrays:
        """Lay out `commands`."""
        order = sorted(range(len(commands)), key=lambda i: commands[i].reservation_id)
        arrays = cls(order, [], [], [], [], [], [], [], [], [], [])
        for i in order:
            cmd = commands[i]
            arrays.ids.append(cmd.reservation_id)
            arrays.fingerprints.append(cmd.fingerprint)
            arrays.ttls.append(cmd.ttl_ms)
            arrays.callers.append(cmd.caller)
            arrays.customers.append(cmd.customer_id)
            arrays.first.append(len(arrays.skus) + 1)
            arrays.count.append(len(cmd.lines))
            for line in cmd.lines:
                arrays.shards.append(shard_of(line.sku, shard_count))
                arrays.skus.append(line.sku)
                arrays.quantities.append(line.quantity)
        return arrays

    def args(self) -> tuple[object, ...]:
        """hold_stock's arguments."""
        return (
            self.ids,
            self.fingerprints,
            self.ttls,
            self.callers,
            self.customers,
            self.first,
            self.count,
            self.shards,
            self.skus,
            self.quantities,
        )


def shortages_of(
    command: ReserveCommand, skus: Sequence[str], available: Sequence[int]
) -> tuple[Shortage, ...]:
    """The Shortages of a rejected request, from the SQL function's arrays."""
    wanted = {line.sku: line.quantity for line in command.lines}
    return tuple(
        Shortage(sku, wanted[sku], left) for sku, left in zip(skus, available, strict=True)
    )


async def _open_pool(dsn: str, size: int, timeout: float, name: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(2, size),
        max_size=size,
        command_timeout=timeout,
        # JIT never pays off for statements that touch a batch's worth of rows, and its
        # compile time (tens of ms) lands on whoever's batch triggered it.
        server_settings={"application_name": name, "jit": "off"},
        # Connections hold no session state between uses; skipping asyncpg's
        # RESET ALL on release saves a round trip per batch.
        reset=keep_session,
    )
    assert pool is not None
    return pool


class StockStore:
    """Stock, reservations and the movement ledger in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, reads: asyncpg.Pool, shard_count: int) -> None:
        self._pool = pool
        self._reads = reads
        self.shard_count = shard_count

    @classmethod
    async def connect(
        cls, dsn: str, *, shard_count: int, pool_size: int, timeout: float, read_pool_size: int = 2
    ) -> StockStore:
        """Open the pools (`pool_size` connections for the batches, `read_pool_size` for
        callers' reads) and check the database's shard count against ours."""
        pool = await _open_pool(dsn, pool_size, timeout, "stockcore")
        try:
            reads = await _open_pool(dsn, read_pool_size, timeout, "stockcore-reads")
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, reads, shard_count)
        stored = await store._run(
            lambda c: c.fetchval("SELECT value FROM stockcore.settings WHERE key = 'shard_count'")
        )
        if stored is not None and int(stored) != shard_count:
            await store.close()
            raise RuntimeError(
                f"the database has {stored} stock shards, settings ask for {shard_count}"
            )
        return store

    async def close(self, timeout: float = 10.0) -> None:
        """Close the pools: wait up to `timeout` for connections in use to come back, then
        terminate whatever is left (a wait without a bound could hold a shutdown forever)."""
        for pool in (self._pool, self._reads):
            try:
                await asyncio.wait_for(pool.close(), timeout)
            except TimeoutError:
                log.error("PostgreSQL pool did not close in time; terminating its connections")
                pool.terminate()

    async def _run(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        attempts: int = 5,
        *,
        pool: asyncpg.Pool | None = None,
    ) -> T:
        """Run `work` on a connection of `pool` (the batches' unless named), retrying
        transient conflicts and translating an unreachable database into Unavailable."""
        for attempt in range(attempts):
            try:
                async with (pool or self._pool).acquire() as conn:
                    try:
                        return await work(conn)
                    except _UNREACHABLE:
                        # A connection that failed mid-operation may be in any state:
                        # the pool must open a new one rather than reuse it (sessions
                        # are not reset on release).
                        conn.terminate()
                        raise
            except _RETRYABLE as exc:
                if attempt == attempts - 1:
                    raise
                log.info("retrying after transient conflict", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.001 * 2**attempt)
            except _UNREACHABLE as exc:
                raise Unavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def call(self, sql: str, *args: object) -> asyncpg.Record:
        """Run one statement that returns one row (a batch function), as its own
        transaction: no BEGIN/COMMIT round trips."""
        row: asyncpg.Record | None = await self._run(lambda c: c.fetchrow(sql, *args))
        assert row is not None, sql
        return row

    async def reserve_batch(
        self, commands: Sequence[ReserveCommand]
    ) -> tuple[list[ReserveResult], list[MirrorLevel]]:
        """Hold stock for each command, all lines or none, in one statement."""
        arrays = HoldArrays.of(commands, self.shard_count)
        row = await self.call(_HOLD, *arrays.args())
        results: list[ReserveResult | None] = [None] * len(commands)
        for position, found in zip(arrays.order, row["results"], strict=True):
            results[position] = _reserve_result(commands[position], found)
        return results, mirror_levels(row["levels"])  # type: ignore[return-value]

    async def finish_batch(
        self,
        ids: Sequence[str],
        finish: Finish,
        callers: Sequence[str],
        customers: Sequence[str | None] | None = None,
    ) -> tuple[list[FinishResult], list[MirrorLevel]]:
        """Commit or release HELD reservations (not orders' holds) in one statement; a
        request bound to a customer (`customers`, None each for a service's) ends only a
        reservation held for that customer."""
        if finish is Finish.EXPIRE:
            raise ValueError("holds expire through expire_due")
        bound = list(customers) if customers is not None else [None] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        row = await self.call(
            _FINISH,
            [ids[i] for i in order],
            int(finish),
            [callers[i] for i in order],
            [bound[i] for i in order],
        )
        results: list[FinishResult | None] = [None] * len(ids)
        for position, found in zip(order, row["results"], strict=True):
            code = FinishCode(found["code"])
            held = found["reservation"]
            results[position] = FinishResult(
                code, None if held is None else reservation_from_row(held)
            )
        return results, mirror_levels(row["levels"])  # type: ignore[return-value]

    async def set_lines(
        self, changes: Sequence[SetLine]
    ) -> tuple[list[LineResult], list[MirrorLevel]]:
        """Apply each change to its HELD reservation, or say why not, in one statement."""
        order = sorted(range(len(changes)), key=lambda i: changes[i].reservation_id)
        batch = [changes[i] for i in order]
        row = await self.call(
            _SET_LINES,
            [c.reservation_id for c in batch],
            [c.change_id for c in batch],
            [c.fingerprint for c in batch],
            [shard_of(c.line.sku, self.shard_count) for c in batch],
            [c.line.sku for c in batch],
            [c.line.quantity for c in batch],
            [c.ttl_ms for c in batch],
            [c.caller for c in batch],
            [c.customer_id for c in batch],
        )
        results: list[LineResult | None] = [None] * len(changes)
        for position, found in zip(order, row["results"], strict=True):
            held = found["reservation"]
            results[position] = LineResult(
                LineCode(found["code"]),
                None if held is None else reservation_from_row(held),
                found["available"],
            )
        return results, mirror_levels(row["levels"])  # type: ignore[return-value]

    async def held_lines(self, changes: Sequence[SetLine]) -> list[HeldLine]:
        """What each change would meet, read without a lock (for the gate, which must
        know how many units a change adds; PostgreSQL decides again under its locks)."""
        rows = await self._run(
            lambda c: c.fetch(
                _HELD_LINES,
                [x.reservation_id for x in changes],
                [x.line.sku for x in changes],
                [x.change_id for x in changes],
            )
        )
        found: list[HeldLine | None] = [None] * len(changes)
        for row in rows:
            found[row["i"] - 1] = HeldLine(row["held"], row["quantity"], row["known"])
        return found  # type: ignore[return-value]

    async def expire_due(self, limit: int, caller: str, request_id: str) -> Sweep:
        """Expire up to `limit` lapsed holds, and the unpaid orders they belong to."""
        row = await self.call(_EXPIRE, limit, caller, request_id)
        return Sweep(
            row["due"],
            row["holds_expired"],
            row["orders_expired"],
            tuple(row["lag_seconds"]),
            tuple(mirror_levels(row["levels"])),
        )

    async def adjust(self, cmd: AdjustCommand) -> AdjustResult:
        """Apply one adjustment in one statement; a refused one changes nothing."""
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT * FROM stockcore.adjust($1, $2, $3, $4, $5, $6, $7, $8)",
                cmd.idempotency_key,
                cmd.fingerprint,
                shard_of(cmd.sku, self.shard_count),
                cmd.sku,
                cmd.delta,
                cmd.on_hand,
                cmd.reason,
                cmd.caller,
            )
        )
        assert row is not None
        return AdjustResult(
            AdjustCode(row["code"]),
            row["applied"],
            StockLevel(cmd.sku, row["on_hand"], row["reserved"]),
            row["version"],
        )

    async def read(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work`, a caller's read, on a connection of the readers' pool, with the same
        error translation."""
        return await self._run(work, pool=self._reads)

    async def get_stock(self, skus: Sequence[str]) -> dict[str, MirrorLevel]:
        """Levels of the known SKUs among `skus`, read from PostgreSQL (for the server's
        upkeep; a caller's read is `read_levels`)."""
        return await self._levels(skus, self._pool)

    async def read_levels(self, skus: Sequence[str]) -> dict[str, MirrorLevel]:
        """`get_stock` for a caller, on the readers' pool."""
        return await self._levels(skus, self._reads)

    async def _levels(self, skus: Sequence[str], pool: asyncpg.Pool) -> dict[str, MirrorLevel]:
        shards = [shard_of(s, self.shard_count) for s in skus]
        rows = await self._run(
            lambda c: c.fetch("SELECT * FROM stockcore.stock_levels($1, $2)", shards, list(skus)),
            pool=pool,
        )
        return {level.sku: level for level in mirror_levels(rows)}

    async def recently_moved_skus(self, seconds: float, scan: int = 100_000) -> list[str]:
        """SKUs with a movement in the last `seconds` (among the newest `scan` movements:
        a backward walk of the primary key, no time index needed)."""
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT DISTINCT sku FROM (SELECT sku, created_at FROM stockcore.movements"
                " ORDER BY movement_id DESC LIMIT $1) newest"
                " WHERE created_at > now() - make_interval(secs => $2)",
                scan,
                seconds,
            )
        )
        return [r["sku"] for r in rows]

    async def get_reservations(self, reservation_ids: Sequence[str]) -> dict[str, Reservation]:
        """The named reservations that exist."""
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT * FROM stockcore.reservations WHERE reservation_id = ANY($1::text[])",
                list(reservation_ids),
            )
        )
        return {r["reservation_id"]: reservation_from_row(r) for r in rows}

    async def plain_reservations(
        self, reservation_ids: Sequence[str]
    ) -> tuple[dict[str, Reservation], set[str]]:
        """The named reservations that exist and are not an order's hold, and the named
        ids that are an order's hold (GetReservation answers the first only), read for a
        caller on the readers' pool."""
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT r.*, EXISTS (SELECT 1 FROM stockcore.orders o"
                "                     WHERE o.order_id = r.reservation_id) AS order_hold"
                "  FROM stockcore.reservations r WHERE r.reservation_id = ANY($1::text[])",
                list(reservation_ids),
            ),
            pool=self._reads,
        )
        plain = {r["reservation_id"]: reservation_from_row(r) for r in rows if not r["order_hold"]}
        return plain, {r["reservation_id"] for r in rows if r["order_hold"]}

    async def existing_reservations(self, reservation_ids: Sequence[str]) -> set[str]:
        """Which of the named reservations exist."""
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT reservation_id FROM stockcore.reservations"
                " WHERE reservation_id = ANY($1::text[])",
                list(reservation_ids),
            )
        )
        return {r["reservation_id"] for r in rows}

    async def all_levels(self, chunk: int = 5000) -> AsyncIterator[list[MirrorLevel]]:
        """Every SKU's level, in chunks, for rebuilding the Redis mirror."""
        after: tuple[int, str] = (-1, "")
        while True:
            rows = await self._run(
                lambda c, after=after: c.fetch(  # type: ignore[misc]
                    "SELECT shard, sku, on_hand, reserved, version FROM stockcore.stock"
                    " WHERE (shard, sku) > ($1, $2) ORDER BY shard, sku LIMIT $3",
                    after[0],
                    after[1],
                    chunk,
                )
            )
            if not rows:
                return
            yield [MirrorLevel(r["sku"], r["on_hand"], r["reserved"], r["version"]) for r in rows]
            after = (rows[-1]["shard"], rows[-1]["sku"])

    async def recent_reservations(self, since: datetime) -> list[tuple[str, datetime]]:
        """(id, expires_at) of reservations created after `since`."""
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT reservation_id, expires_at FROM stockcore.reservations WHERE created_at > $1",
                since,
            )
        )
        return [(r["reservation_id"], r["expires_at"]) for r in rows]

    async def now(self) -> datetime:
        """The database clock, which decides expiry."""
        value: datetime = await self._run(lambda c: c.fetchval("SELECT now()"))
        return value

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers."""
        await self._run(lambda c: c.fetchval("SELECT 1"), attempts=1)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Run a read-only query (for checks and reports)."""
        rows: list[asyncpg.Record] = await self._run(lambda c: c.fetch(query, *args))
        return rows


_HOLD = "SELECT * FROM stockcore.hold_stock($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_FINISH = "SELECT * FROM stockcore.finish_holds($1, $2, $3, $4)"
_SET_LINES = "SELECT * FROM stockcore.set_reservation_lines($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_HELD_LINES = """
SELECT q.i, coalesce(r.status = 1 AND r.expires_at > now(), false) AS held,
       coalesce(r.quantities[array_position(r.skus, q.sku)], 0) AS quantity,
       EXISTS (SELECT 1 FROM stockcore.reservation_changes c WHERE c.change_id = q.change) AS known
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(id, sku, change, i)
  LEFT JOIN stockcore.reservations r ON r.reservation_id = q.id
"""
_EXPIRE = "SELECT * FROM stockcore.expire_due($1, $2, $3)"


def _reserve_result(command: ReserveCommand, row: asyncpg.Record) -> ReserveResult:
    code = ReserveCode(row["code"])
    held = row["reservation"]
    if code is ReserveCode.REJECTED:
        return ReserveResult(
            code,
            None,
            shortages_of(command, row["short_skus"], row["short_available"]),
            tuple(row["unknown_skus"]),
        )
    return ReserveResult(code, reservation_from_row(held))
