"""PostgreSQL, the durable authority: every stock change is a conditional UPDATE made
inside one of the batch functions of sql/001_inventory.sql."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, TypeVar

import asyncpg

from server.domain.errors import Shortage, Unavailable
from server.domain.inventory import (
    AdjustCommand,
    Finish,
    Line,
    Reservation,
    ReservationStatus,
    ReserveCommand,
    StockLevel,
)
from server.domain.sharding import shard_of

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_NO_TRANSACTION = contextlib.nullcontext()

# Work a caller adds to a batch's transaction: it sees the batch's results, in order.
Within = Callable[[asyncpg.Connection, list[R]], Awaitable[None]]

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
    """What reserve_batch did with one request (codes of the SQL function)."""

    HELD = 0
    REPEAT = 1
    CONFLICT = 2
    REJECTED = 3


class FinishCode(IntEnum):
    """What finish_batch did with one reservation (codes of the SQL function)."""

    APPLIED = 0
    UNCHANGED = 1
    UNKNOWN = 4


class AdjustCode(IntEnum):
    """What adjust_stock did (codes of the SQL function)."""

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
class AdjustResult:
    """The outcome of an adjustment."""

    code: AdjustCode
    applied_delta: int
    level: StockLevel
    version: int | None


def _reservation(reservation_id: str, row: asyncpg.Record) -> Reservation:
    return Reservation(
        reservation_id=reservation_id,
        status=ReservationStatus(row["status"]),
        lines=tuple(Line(s, q) for s, q in zip(row["skus"], row["quantities"], strict=True)),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        finished_at=row["finished_at"],
    )


def _levels(rows: Sequence[asyncpg.Record]) -> list[MirrorLevel]:
    return [
        MirrorLevel(r["sku"], r["on_hand"], r["reserved"], r["version"])
        for r in rows
        if r["kind"] == 3
    ]


def _reserve_results(
    rows: Sequence[asyncpg.Record],
    commands: Sequence[ReserveCommand],
    order: Sequence[int],
    ids: Sequence[str],
) -> list[ReserveResult]:
    results: list[ReserveResult | None] = [None] * len(commands)
    shortages: dict[int, list[Shortage]] = {}
    unknown: dict[int, list[str]] = {}
    for row in rows:
        if row["kind"] == 2:
            cmd = commands[order[row["idx"] - 1]]
            if row["code"] == 4:
                unknown.setdefault(row["idx"], []).append(row["sku"])
            else:
                wanted = next(line.quantity for line in cmd.lines if line.sku == row["sku"])
                shortages.setdefault(row["idx"], []).append(
                    Shortage(row["sku"], wanted, max(row["on_hand"] - (row["reserved"] or 0), 0))
                )
    for row in rows:
        if row["kind"] != 1:
            continue
        pos = order[row["idx"] - 1]
        code = ReserveCode(row["code"])
        reservation = (
            None if code is ReserveCode.REJECTED else _reservation(ids[row["idx"] - 1], row)
        )
        results[pos] = ReserveResult(
            code,
            reservation,
            tuple(shortages.get(row["idx"], ())),
            tuple(unknown.get(row["idx"], ())),
        )
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: no session state is ever set."""


class StockStore:
    """Stock, reservations and the movement ledger in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, shard_count: int) -> None:
        self._pool = pool
        self.shard_count = shard_count

    @classmethod
    async def connect(
        cls, dsn: str, *, shard_count: int, pool_size: int, timeout: float
    ) -> StockStore:
        """Open a pool and check the database's shard count against ours."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(2, pool_size),
            max_size=pool_size,
            command_timeout=timeout,
            server_settings={"application_name": "stockcore"},
            # Connections hold no session state between uses; skipping asyncpg's
            # RESET ALL on release saves a round trip per batch.
            reset=_keep_session,
        )
        assert pool is not None
        store = cls(pool, shard_count)
        stored = await store._run(
            lambda c: c.fetchval("SELECT value FROM stockcore.settings WHERE key = 'shard_count'")
        )
        if stored is not None and int(stored) != shard_count:
            await pool.close()
            raise RuntimeError(
                f"the database has {stored} stock shards, settings ask for {shard_count}"
            )
        return store

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def _run(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], attempts: int = 5
    ) -> T:
        """Run `work` on a pooled connection, retrying transient conflicts and
        translating an unreachable database into Unavailable."""
        for attempt in range(attempts):
            try:
                async with self._pool.acquire() as conn:
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

    async def reserve_batch(
        self,
        commands: Sequence[ReserveCommand],
        within: Within[ReserveResult] | None = None,
    ) -> tuple[list[ReserveResult], list[MirrorLevel]]:
        """Hold stock for each command, all lines or none, in one transaction.

        `within(conn, results)` runs in that same transaction after the holds, so a
        caller's own rows (an order and its event) commit or vanish with them."""
        order = sorted(range(len(commands)), key=lambda i: commands[i].reservation_id)
        ids, fps, ttls, callers, first, count = [], [], [], [], [], []
        shards: list[int] = []
        skus: list[str] = []
        qtys: list[int] = []
        for i in order:
            cmd = commands[i]
            ids.append(cmd.reservation_id)
            fps.append(cmd.fingerprint)
            ttls.append(cmd.ttl_ms)
            callers.append(cmd.caller)
            first.append(len(skus) + 1)
            count.append(len(cmd.lines))
            for line in cmd.lines:
                shards.append(shard_of(line.sku, self.shard_count))
                skus.append(line.sku)
                qtys.append(line.quantity)

        def parse(rows: list[asyncpg.Record]) -> list[ReserveResult]:
            return _reserve_results(rows, commands, order, ids)

        async def work(conn: asyncpg.Connection) -> tuple[list[ReserveResult], list[MirrorLevel]]:
            # Alone, the one statement is its own transaction: no BEGIN/COMMIT round trips.
            async with conn.transaction() if within is not None else _NO_TRANSACTION:
                rows = await conn.fetch(
                    "SELECT * FROM stockcore.reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    ids,
                    fps,
                    ttls,
                    callers,
                    first,
                    count,
                    shards,
                    skus,
                    qtys,
                )
                results = parse(rows)
                if within is not None:
                    await within(conn, results)
            return results, _levels(rows)

        return await self._run(work)

    async def finish_batch(
        self,
        ids: Sequence[str],
        finish: Finish,
        callers: Sequence[str],
        within: Within[FinishResult] | None = None,
    ) -> tuple[list[FinishResult], list[MirrorLevel]]:
        """Commit, release or expire HELD reservations in one transaction; `within`
        runs in the same transaction, as for reserve_batch."""
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        sorted_ids = [ids[i] for i in order]
        sorted_callers = [callers[i] for i in order]

        async def work(conn: asyncpg.Connection) -> tuple[list[FinishResult], list[MirrorLevel]]:
            async with conn.transaction() if within is not None else _NO_TRANSACTION:
                rows = await conn.fetch(
                    "SELECT * FROM stockcore.finish_batch($1, $2, $3)",
                    sorted_ids,
                    int(finish),
                    sorted_callers,
                )
                results: list[FinishResult | None] = [None] * len(ids)
                for row in rows:
                    if row["kind"] != 1:
                        continue
                    idx = row["idx"] - 1
                    code = FinishCode(row["code"])
                    found = (
                        None if code is FinishCode.UNKNOWN else _reservation(sorted_ids[idx], row)
                    )
                    results[order[idx]] = FinishResult(code, found)
                done: list[FinishResult] = results  # type: ignore[assignment]
                if within is not None:
                    await within(conn, done)
            return done, _levels(rows)

        return await self._run(work)

    async def adjust(self, cmd: AdjustCommand) -> AdjustResult:
        """Apply one adjustment; a refused one changes nothing."""

        async def work(conn: asyncpg.Connection) -> asyncpg.Record:
            async with conn.transaction():
                row = await self._adjust_row(conn, cmd)
                if row["code"] == AdjustCode.REFUSED:
                    # Undo the row a refused adjustment of an unknown SKU created.
                    raise _Refused(row)
                return row

        try:
            row = await self._run(work)
        except _Refused as refused:
            row = refused.row
        return _adjust_result(cmd, row)

    async def adjust_on(self, conn: asyncpg.Connection, cmd: AdjustCommand) -> AdjustResult:
        """Apply one adjustment on `conn`, inside the caller's transaction (which must
        roll back a REFUSED one); for changes that commit together with stock."""
        return _adjust_result(cmd, await self._adjust_row(conn, cmd))

    async def _adjust_row(self, conn: asyncpg.Connection, cmd: AdjustCommand) -> asyncpg.Record:
        row = await conn.fetchrow(
            "SELECT * FROM stockcore.adjust_stock($1, $2, $3, $4, $5, $6, $7, $8)",
            cmd.idempotency_key,
            cmd.fingerprint,
            shard_of(cmd.sku, self.shard_count),
            cmd.sku,
            cmd.delta,
            cmd.on_hand,
            cmd.reason,
            cmd.caller,
        )
        assert row is not None
        return row

    async def transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` in one transaction on a pooled connection, retried whole after a
        transient conflict (so `work` must not keep state between attempts); an
        unreachable database is Unavailable."""

        async def wrapped(conn: asyncpg.Connection) -> T:
            async with conn.transaction():
                return await work(conn)

        return await self._run(wrapped)

    async def read(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` (reads) on a pooled connection, with the same error translation."""
        return await self._run(work)

    async def get_stock(self, skus: Sequence[str]) -> dict[str, StockLevel]:
        """Levels of the known SKUs among `skus`."""
        shards = [shard_of(s, self.shard_count) for s in skus]

        async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return await conn.fetch(  # type: ignore[no-any-return]
                "SELECT st.sku, st.on_hand, st.reserved FROM stockcore.stock st"
                " JOIN unnest($1::smallint[], $2::text[]) AS u(sh, sk) ON st.shard = u.sh AND st.sku = u.sk",
                shards,
                list(skus),
            )

        return {
            r["sku"]: StockLevel(r["sku"], r["on_hand"], r["reserved"])
            for r in await self._run(work)
        }

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation, or None."""
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT * FROM stockcore.reservations WHERE reservation_id = $1", reservation_id
            )
        )
        return None if row is None else _reservation(reservation_id, row)

    async def due_expiries(self, limit: int) -> list[str]:
        """Ids of HELD reservations past their expiry, oldest first."""
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT reservation_id FROM stockcore.reservations"
                " WHERE status = 1 AND expires_at <= now() ORDER BY expires_at LIMIT $1",
                limit,
            )
        )
        return [r["reservation_id"] for r in rows]

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


def _adjust_result(cmd: AdjustCommand, row: asyncpg.Record) -> AdjustResult:
    return AdjustResult(
        AdjustCode(row["code"]),
        row["applied"],
        StockLevel(cmd.sku, row["on_hand"], row["reserved"]),
        row["version"],
    )


class _Refused(Exception):
    """Raised inside a transaction to roll back a refused adjustment."""

    def __init__(self, row: asyncpg.Record) -> None:
        self.row = row
        super().__init__("adjustment refused")
