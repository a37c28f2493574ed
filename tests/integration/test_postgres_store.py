"""StockStore against a real PostgreSQL: holds, finishes, adjustments, the ledger and shards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

from server.domain.errors import Shortage
from server.domain.inventory import (
    AdjustCommand,
    Finish,
    Line,
    ReservationStatus,
)
from server.domain.sharding import shard_of
from server.storage.postgres import (
    AdjustCode,
    FinishCode,
    MirrorLevel,
    ReserveCode,
    StockStore,
)
from tests.conftest import SHARDS, Servers
from tests.invariants import assert_invariants_hold
from tests.support import HOUR_MS, hold, stock_up
from tests.waiting import sql_is, until


def change(
    sku: str,
    key: str,
    *,
    delta: int | None = None,
    on_hand: int | None = None,
    reason: str = "count",
) -> AdjustCommand:
    """An adjustment by `delta` or to `on_hand`."""
    return AdjustCommand(sku, delta, on_hand, reason, key, "tests")


async def row(db: asyncpg.Connection, sku: str) -> tuple[int, int, int] | None:
    """(on_hand, reserved, version) of a SKU, or None when it has no row."""
    found = await db.fetchrow(
        "SELECT on_hand, reserved, version FROM stockcore.stock WHERE sku = $1", sku
    )
    return None if found is None else (found["on_hand"], found["reserved"], found["version"])


async def units(db: asyncpg.Connection, sku: str) -> tuple[int, int]:
    """(on_hand, reserved) of a SKU that must exist."""
    found = await row(db, sku)
    assert found is not None, f"{sku} has no stock row"
    return found[0], found[1]


async def version(db: asyncpg.Connection, sku: str) -> int:
    """The row version of a SKU that must exist."""
    found = await row(db, sku)
    assert found is not None, f"{sku} has no stock row"
    return found[2]


async def movements(db: asyncpg.Connection, reservation_id: str) -> list[tuple[str, str, int, int]]:
    """(kind, sku, on_hand_delta, reserved_delta) written for a reservation, in order."""
    rows = await db.fetch(
        "SELECT kind, sku, on_hand_delta, reserved_delta FROM stockcore.movements"
        " WHERE reservation_id = $1 ORDER BY movement_id",
        reservation_id,
    )
    return [(r["kind"], r["sku"], r["on_hand_delta"], r["reserved_delta"]) for r in rows]


async def count(db: asyncpg.Connection, table: str) -> int:
    """Rows in one of the stockcore tables."""
    value: int = await db.fetchval(f"SELECT count(*) FROM stockcore.{table}")
    return value


async def assert_levels_are_current(db: asyncpg.Connection, levels: list[MirrorLevel]) -> None:
    """Levels reported for the mirror are what the stock rows hold now."""
    for level in levels:
        assert await row(db, level.sku) == (level.on_hand, level.reserved, level.version)


# --- reserve_batch -------------------------------------------------------------------


async def test_reserve_batch_holds_every_line_of_a_reservation_or_none(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10, "B": 5, "C": 2})
    feasible = hold("r-1-feasible", ("A", 3), ("B", 2))
    infeasible = hold("r-2-infeasible", ("A", 4), ("B", 4), ("C", 3))

    results, levels = await store.reserve_batch([infeasible, feasible])

    rejected, held = results
    assert held.code is ReserveCode.HELD
    assert held.reservation is not None
    assert held.reservation.status is ReservationStatus.HELD
    assert held.reservation.lines == (Line("A", 3), Line("B", 2))
    assert rejected.code is ReserveCode.REJECTED
    assert rejected.reservation is None
    # A could be covered; B and C could not, given what the feasible one took first.
    assert rejected.shortages == (Shortage("B", 4, 3), Shortage("C", 3, 2))
    assert rejected.unknown_skus == ()
    assert [await units(db, s) for s in "ABC"] == [(10, 3), (5, 2), (2, 0)]
    assert await db.fetchval("SELECT array_agg(reservation_id) FROM stockcore.reservations") == [
        "r-1-feasible"
    ]
    assert await movements(db, "r-2-infeasible") == []
    assert await movements(db, "r-1-feasible") == [
        ("reserve", "A", 0, 3),
        ("reserve", "B", 0, 2),
    ]
    assert {level.sku for level in levels} == {"A", "B", "C"}
    await assert_levels_are_current(db, levels)
    await assert_invariants_hold(db)


async def test_rejected_reservation_leaves_stock_versions_untouched(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10, "B": 1})
    before = {sku: await row(db, sku) for sku in "AB"}

    # A is listed first and could be held; B cannot, so nothing may change.
    (result,), _ = await store.reserve_batch([hold("r-1", ("A", 2), ("B", 2))])

    assert result.code is ReserveCode.REJECTED
    assert {sku: await row(db, sku) for sku in "AB"} == before


async def test_rejected_reservation_reports_unknown_skus_as_unknown(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5})

    results, _ = await store.reserve_batch(
        [hold("r-1", ("A", 1), ("GHOST", 1)), hold("r-2", ("A", 9), ("PHANTOM", 2))]
    )

    assert results[0].code is ReserveCode.REJECTED
    assert results[0].unknown_skus == ("GHOST",)
    assert results[0].shortages == ()
    assert results[1].code is ReserveCode.REJECTED
    assert results[1].unknown_skus == ("PHANTOM",)
    assert results[1].shortages == (Shortage("A", 9, 5),)
    assert await units(db, "A") == (5, 0)
    assert await row(db, "GHOST") is None
    assert await row(db, "PHANTOM") is None
    assert await count(db, "reservations") == 0
    assert await db.fetchval("SELECT count(*) FROM stockcore.movements WHERE kind = 'reserve'") == 0


async def test_repeating_a_reservation_returns_the_first_one(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5})
    command = hold("r-1", ("A", 2))
    (first,), _ = await store.reserve_batch([command])
    before = await row(db, "A")

    (again,), levels = await store.reserve_batch([command])

    assert first.code is ReserveCode.HELD
    assert again.code is ReserveCode.REPEAT
    assert again.reservation == first.reservation
    assert await row(db, "A") == before
    assert await movements(db, "r-1") == [("reserve", "A", 0, 2)]
    await assert_levels_are_current(db, levels)


async def test_repeating_a_finished_reservation_reports_it_as_finished(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5})
    command = hold("r-1", ("A", 2))
    await store.reserve_batch([command])
    await store.finish_batch(["r-1"], Finish.COMMIT, ["tests"])

    (again,), _ = await store.reserve_batch([command])

    assert again.code is ReserveCode.REPEAT
    assert again.reservation is not None
    assert again.reservation.status is ReservationStatus.COMMITTED
    assert again.reservation.finished_at is not None
    assert await units(db, "A") == (3, 0)


async def test_reusing_a_reservation_id_for_other_content_conflicts(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5, "B": 5})
    (first,), _ = await store.reserve_batch([hold("r-1", ("A", 2))])
    before = [await row(db, sku) for sku in "AB"]

    results, _ = await store.reserve_batch(
        [
            hold("r-1", ("A", 3)),
            hold("r-1", ("B", 2)),
            hold("r-1", ("A", 2), ttl_ms=HOUR_MS + 1),
        ]
    )

    assert [r.code for r in results] == [ReserveCode.CONFLICT] * 3
    assert all(r.reservation == first.reservation for r in results)
    assert [await row(db, sku) for sku in "AB"] == before
    assert await movements(db, "r-1") == [("reserve", "A", 0, 2)]


async def test_one_id_twice_in_a_batch_is_held_once(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5})
    command = hold("r-1", ("A", 2))

    results, _ = await store.reserve_batch([command, command, hold("r-1", ("A", 1))])

    assert [r.code for r in results] == [
        ReserveCode.HELD,
        ReserveCode.REPEAT,
        ReserveCode.CONFLICT,
    ]
    assert await units(db, "A") == (5, 2)
    await assert_invariants_hold(db)


async def test_reservations_in_one_batch_competing_for_the_last_units_hold_exactly_the_stock(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"LAST": 5, "PLENTY": 100})
    commands = [hold(f"r-{i:02}", ("LAST", 1), ("PLENTY", 3)) for i in range(8)]

    results, levels = await store.reserve_batch(commands)

    codes = [r.code for r in results]
    assert codes == [ReserveCode.HELD] * 5 + [ReserveCode.REJECTED] * 3
    assert all(r.shortages == (Shortage("LAST", 1, 0),) for r in results[5:])
    assert await units(db, "LAST") == (5, 5)
    assert await units(db, "PLENTY") == (100, 15)
    assert await count(db, "reservations") == 5
    await assert_levels_are_current(db, levels)
    await assert_invariants_hold(db)


async def test_reserve_bumps_the_version_of_each_held_sku_once(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5, "B": 5, "C": 5})
    before = {sku: await version(db, sku) for sku in "ABC"}

    await store.reserve_batch([hold("r-1", ("A", 1), ("B", 2))])

    assert await row(db, "A") == (5, 1, before["A"] + 1)
    assert await row(db, "B") == (5, 2, before["B"] + 1)
    assert await row(db, "C") == (5, 0, before["C"])


# --- finish_batch --------------------------------------------------------------------


async def test_commit_deducts_the_held_units_from_on_hand(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10, "B": 4})
    await store.reserve_batch([hold("r-1", ("A", 3), ("B", 4))])
    before = {sku: await version(db, sku) for sku in "AB"}

    (result,), levels = await store.finish_batch(["r-1"], Finish.COMMIT, ["checkout"])

    assert result.code is FinishCode.APPLIED
    assert result.reservation is not None
    assert result.reservation.status is ReservationStatus.COMMITTED
    assert result.reservation.finished_at is not None
    assert await row(db, "A") == (7, 0, before["A"] + 1)
    assert await row(db, "B") == (0, 0, before["B"] + 1)
    assert (await movements(db, "r-1"))[2:] == [
        ("commit", "A", -3, -3),
        ("commit", "B", -4, -4),
    ]
    assert await db.fetchval(
        "SELECT array_agg(DISTINCT caller) FROM stockcore.movements WHERE kind = 'commit'"
    ) == ["checkout"]
    assert {level.sku for level in levels} == {"A", "B"}
    await assert_levels_are_current(db, levels)
    await assert_invariants_hold(db)


async def test_release_gives_the_held_units_back(store: StockStore, db: asyncpg.Connection) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-1", ("A", 3))])
    was = await version(db, "A")

    (result,), levels = await store.finish_batch(["r-1"], Finish.RELEASE, ["tests"])

    assert result.code is FinishCode.APPLIED
    assert result.reservation is not None
    assert result.reservation.status is ReservationStatus.RELEASED
    assert await row(db, "A") == (10, 0, was + 1)
    assert (await movements(db, "r-1"))[-1] == ("release", "A", 0, -3)
    await assert_levels_are_current(db, levels)
    await assert_invariants_hold(db)


async def due(db: asyncpg.Connection) -> list[str]:
    """HELD reservations past their expiry, by the database clock."""
    rows = await db.fetch(
        "SELECT reservation_id FROM stockcore.reservations"
        " WHERE status = 1 AND expires_at <= now() ORDER BY reservation_id"
    )
    return [r["reservation_id"] for r in rows]


async def test_a_sweep_leaves_a_hold_that_is_not_due_held(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-1", ("A", 3))])
    before = await row(db, "A")

    sweep = await store.expire_due(10, "sweeper", "req-1")

    assert (sweep.due, sweep.holds_expired, sweep.orders_expired) == (0, 0, 0)
    assert sweep.levels == ()
    assert await row(db, "A") == before
    assert await movements(db, "r-1") == [("reserve", "A", 0, 3)]


async def test_a_lapsed_hold_is_expired_by_a_commit_a_release_or_a_sweep(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch(
        [hold(f"r-{finish.name}", ("A", 2), ttl_ms=1000) for finish in Finish]
    )
    assert await units(db, "A") == (10, 6)
    assert await due(db) == []
    every = sorted(f"r-{f.name}" for f in Finish)

    async def all_due() -> bool:
        return await due(db) == every

    await until(all_due, "the 1 s holds are due", timeout=10)

    for finish in (Finish.COMMIT, Finish.RELEASE):
        (result,), _ = await store.finish_batch([f"r-{finish.name}"], finish, ["tests"])

        assert result.code is FinishCode.APPLIED
        assert result.reservation is not None
        assert result.reservation.status is ReservationStatus.EXPIRED
        assert (await movements(db, f"r-{finish.name}"))[-1] == ("expire", "A", 0, -2)
    sweep = await store.expire_due(10, "sweeper", "req-1")
    assert (sweep.due, sweep.holds_expired, sweep.orders_expired) == (1, 1, 0)
    assert len(sweep.lags_s) == 1 and 0 <= sweep.lags_s[0] < 10
    assert (await movements(db, "r-EXPIRE"))[-1] == ("expire", "A", 0, -2)

    assert await units(db, "A") == (10, 0)
    assert await due(db) == []
    await assert_levels_are_current(db, list(sweep.levels))
    await assert_invariants_hold(db)


async def test_finishing_a_finished_reservation_changes_nothing(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-1", ("A", 3))])
    await store.finish_batch(["r-1"], Finish.COMMIT, ["tests"])
    before = await row(db, "A")

    for finish in (Finish.COMMIT, Finish.RELEASE):
        (result,), levels = await store.finish_batch(["r-1"], finish, ["tests"])

        assert result.code is FinishCode.UNCHANGED
        assert result.reservation is not None
        assert result.reservation.status is ReservationStatus.COMMITTED
        assert levels == []

    assert await row(db, "A") == before
    assert [m[0] for m in await movements(db, "r-1")] == ["reserve", "commit"]


async def test_finishing_unknown_reservations_reports_them_unknown(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-known", ("A", 3))])

    results, _ = await store.finish_batch(
        ["z-missing", "r-known", "a-missing"], Finish.RELEASE, ["tests"] * 3
    )

    assert [r.code for r in results] == [
        FinishCode.UNKNOWN,
        FinishCode.APPLIED,
        FinishCode.UNKNOWN,
    ]
    assert results[0].reservation is None
    assert results[2].reservation is None
    assert results[1].reservation is not None
    assert results[1].reservation.reservation_id == "r-known"
    assert await units(db, "A") == (10, 0)


async def test_every_change_writes_movements_that_sum_to_the_stock_row(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 20, "B": 20, "C": 20})
    versions = {sku: await version(db, sku) for sku in "ABC"}

    async def changed(touched: str) -> None:
        """Each call moves the version of exactly the SKUs it touched, by one."""
        for sku in "ABC":
            versions[sku] += sku in touched
        assert {sku: await version(db, sku) for sku in "ABC"} == versions
        await assert_invariants_hold(db)

    await store.reserve_batch([hold("r-1", ("A", 2), ("B", 3))])
    await changed("AB")
    await store.reserve_batch([hold("r-2", ("B", 1), ("C", 5))])
    await changed("BC")
    await store.reserve_batch([hold("r-3", ("A", 4), ("C", 1))])
    await changed("AC")
    await store.reserve_batch([hold("r-4", ("A", 50))])
    await changed("")
    await store.finish_batch(["r-1"], Finish.COMMIT, ["tests"])
    await changed("AB")
    await store.finish_batch(["r-2"], Finish.RELEASE, ["tests"])
    await changed("BC")
    await store.adjust(change("A", "recount-A", on_hand=30))
    await changed("A")
    await store.adjust(change("C", "damaged-C", delta=-3))
    await changed("C")
    await store.adjust(change("D", "new-D", delta=8))
    await changed("")

    assert [await units(db, sku) for sku in "ABCD"] == [(30, 4), (17, 0), (17, 1), (8, 0)]
    kinds = await db.fetch("SELECT kind, count(*) FROM stockcore.movements GROUP BY kind")
    assert {r["kind"]: r["count"] for r in kinds} == {
        "adjust": 6,
        "reserve": 6,
        "commit": 2,
        "release": 2,
    }


# --- the ledger and the stock constraints --------------------------------------------


async def test_movements_refuse_update_and_delete(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    before = await count(db, "movements")

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE stockcore.movements SET on_hand_delta = on_hand_delta + 1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM stockcore.movements")

    assert await count(db, "movements") == before
    await assert_invariants_hold(db)


@pytest.mark.parametrize(
    "assignment",
    [
        "on_hand = reserved - 1",
        "reserved = on_hand + 1",
        "reserved = -1",
        "on_hand = on_hand - 8",
    ],
)
async def test_stock_rows_refuse_any_update_below_the_reserved_floor(
    store: StockStore, db: asyncpg.Connection, assignment: str
) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-1", ("A", 3))])
    before = await row(db, "A")

    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(f"UPDATE stockcore.stock SET {assignment} WHERE sku = 'A'")

    assert await row(db, "A") == before


# --- adjust --------------------------------------------------------------------------


async def test_adjust_by_delta_changes_on_hand(store: StockStore, db: asyncpg.Connection) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-1", ("A", 4))])
    was = await version(db, "A")

    added = await store.adjust(change("A", "k-add", delta=5))
    removed = await store.adjust(change("A", "k-remove", delta=-11))

    assert added.code is AdjustCode.APPLIED
    assert added.applied_delta == 5
    assert (added.level.on_hand, added.level.reserved, added.version) == (15, 4, was + 1)
    assert removed.code is AdjustCode.APPLIED
    assert removed.applied_delta == -11
    assert (removed.level.on_hand, removed.level.reserved, removed.version) == (4, 4, was + 2)
    assert await row(db, "A") == (4, 4, was + 2)
    await assert_invariants_hold(db)


async def test_adjust_to_an_absolute_on_hand_applies_the_difference(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})

    down = await store.adjust(change("A", "k-down", on_hand=3))
    up = await store.adjust(change("A", "k-up", on_hand=12))
    same = await store.adjust(change("A", "k-same", on_hand=12))

    assert (down.code, down.applied_delta, down.level.on_hand) == (AdjustCode.APPLIED, -7, 3)
    assert (up.code, up.applied_delta, up.level.on_hand) == (AdjustCode.APPLIED, 9, 12)
    assert (same.code, same.applied_delta, same.level.on_hand) == (AdjustCode.APPLIED, 0, 12)
    rows = await db.fetch(
        "SELECT adjustment_key, on_hand_delta, reason, caller FROM stockcore.movements"
        " WHERE kind = 'adjust' AND sku = 'A' ORDER BY movement_id"
    )
    assert [tuple(r) for r in rows] == [
        ("initial-A", 10, "count", "tests"),
        ("k-down", -7, "count", "tests"),
        ("k-up", 9, "count", "tests"),
        ("k-same", 0, "count", "tests"),
    ]
    await assert_invariants_hold(db)


@pytest.mark.parametrize("adjustment", [{"delta": 7}, {"on_hand": 7}])
async def test_adjust_creates_an_unknown_sku(
    store: StockStore, db: asyncpg.Connection, adjustment: dict[str, Any]
) -> None:
    result = await store.adjust(change("NEW-1", "k-new", **adjustment))

    assert result.code is AdjustCode.APPLIED
    assert result.applied_delta == 7
    assert (result.level.on_hand, result.level.reserved) == (7, 0)
    assert await row(db, "NEW-1") == (7, 0, result.version)
    assert await db.fetchval("SELECT shard FROM stockcore.stock WHERE sku = 'NEW-1'") == shard_of(
        "NEW-1", SHARDS
    )
    found = await store.get_stock(["NEW-1", "NEVER"])
    assert list(found) == ["NEW-1"]
    assert (found["NEW-1"].on_hand, found["NEW-1"].reserved) == (7, 0)
    await assert_invariants_hold(db)


@pytest.mark.parametrize("adjustment", [{"delta": -7}, {"on_hand": 2}])
async def test_adjust_below_reserved_is_refused_and_leaves_no_trace(
    store: StockStore, db: asyncpg.Connection, adjustment: dict[str, Any]
) -> None:
    await stock_up(store, {"A": 10})
    await store.reserve_batch([hold("r-1", ("A", 4))])
    before = await row(db, "A")
    ledger = await count(db, "movements")
    keys = await count(db, "adjustments")

    result = await store.adjust(change("A", "k-refused", **adjustment))

    assert result.code is AdjustCode.REFUSED
    assert result.applied_delta == (-7 if "delta" in adjustment else -8)
    assert (result.level.on_hand, result.level.reserved) == (10, 4)
    assert await row(db, "A") == before
    assert await count(db, "movements") == ledger
    assert await count(db, "adjustments") == keys
    # The key was not spent: once the hold is gone the same adjustment applies.
    await store.finish_batch(["r-1"], Finish.RELEASE, ["tests"])
    retried = await store.adjust(change("A", "k-refused", **adjustment))
    assert retried.code is AdjustCode.APPLIED
    await assert_invariants_hold(db)


async def test_negative_adjust_of_an_unknown_sku_is_refused_and_creates_nothing(
    store: StockStore, db: asyncpg.Connection
) -> None:
    result = await store.adjust(change("NEW-1", "k-new", delta=-3))

    assert result.code is AdjustCode.REFUSED
    assert result.applied_delta == -3
    assert (result.level.on_hand, result.level.reserved) == (0, 0)
    assert await row(db, "NEW-1") is None
    assert await count(db, "stock") == 0
    assert await count(db, "movements") == 0
    assert await count(db, "adjustments") == 0


async def test_repeating_an_adjustment_applies_it_once(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    command = change("A", "k-1", delta=5)
    first = await store.adjust(command)
    await store.reserve_batch([hold("r-1", ("A", 1))])
    after_first = await row(db, "A")

    again = await store.adjust(command)

    assert first.code is AdjustCode.APPLIED
    assert again.code is AdjustCode.REPEAT
    assert again.applied_delta == 5
    # A repeat reports the level the adjustment left, not today's.
    assert (again.level.on_hand, again.level.reserved) == (15, 0)
    assert await row(db, "A") == after_first
    assert (
        await db.fetchval("SELECT count(*) FROM stockcore.movements WHERE adjustment_key = 'k-1'")
        == 1
    )
    await assert_invariants_hold(db)


@pytest.mark.parametrize(
    "other",
    [
        {"sku": "A", "delta": 6},
        {"sku": "A", "on_hand": 5},
        {"sku": "B", "delta": 5},
        {"sku": "A", "delta": 5, "reason": "other reason"},
    ],
)
async def test_reusing_an_adjustment_key_for_other_content_conflicts(
    store: StockStore, db: asyncpg.Connection, other: dict[str, Any]
) -> None:
    await stock_up(store, {"A": 10, "B": 10})
    await store.adjust(change("A", "k-1", delta=5))
    before = [await row(db, sku) for sku in "AB"]

    result = await store.adjust(change(key="k-1", **other))

    assert result.code is AdjustCode.CONFLICT
    assert [await row(db, sku) for sku in "AB"] == before
    await assert_invariants_hold(db)


async def test_concurrent_repeats_of_an_adjustment_apply_it_once(
    store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 10})
    command = change("A", "k-1", delta=1)

    results = await asyncio.gather(*(store.adjust(command) for _ in range(8)))

    assert sorted(r.code for r in results) == [AdjustCode.APPLIED] + [AdjustCode.REPEAT] * 7
    assert (await units(db, "A"))[0] == 11
    await assert_invariants_hold(db)


# --- shards, reads and the connection ------------------------------------------------


async def test_each_stock_row_lives_in_the_partition_of_its_shard(
    store: StockStore, db: asyncpg.Connection
) -> None:
    skus = [f"SKU-{i:03}" for i in range(64)] + ["a", "Z/9:x.y-z"]
    for sku in skus:
        await store.adjust(change(sku, f"k-{sku}", delta=1))

    rows = await db.fetch(
        "SELECT tableoid::regclass::text AS part, shard, sku FROM stockcore.stock"
    )

    placed = {r["sku"]: (r["part"], r["shard"]) for r in rows}
    expected = {
        sku: (f"stockcore.stock_s{shard_of(sku, SHARDS):04}", shard_of(sku, SHARDS)) for sku in skus
    }
    assert placed == expected
    assert len({part for part, _ in placed.values()}) == SHARDS


async def test_all_levels_pages_through_every_sku_once(
    store: StockStore, db: asyncpg.Connection
) -> None:
    skus = [f"SKU-{i:02}" for i in range(20)]
    await stock_up(store, {sku: i + 1 for i, sku in enumerate(skus)})
    await store.reserve_batch([hold("r-1", ("SKU-03", 2))])

    chunks = [chunk async for chunk in store.all_levels(chunk=3)]

    assert all(len(chunk) <= 3 for chunk in chunks)
    levels = [level for chunk in chunks for level in chunk]
    assert sorted(level.sku for level in levels) == skus
    await assert_levels_are_current(db, levels)


async def test_connect_refuses_a_different_shard_count(clean: Servers) -> None:
    with pytest.raises(RuntimeError, match="shards"):
        await StockStore.connect(clean.pg_dsn, shard_count=SHARDS * 2, pool_size=2, timeout=5)


async def test_callers_reads_queue_on_their_own_pool_and_leave_the_batches_theirs(
    clean: Servers,
) -> None:
    store = await StockStore.connect(
        clean.pg_dsn, shard_count=SHARDS, pool_size=1, read_pool_size=1, timeout=30
    )
    try:
        await stock_up(store, {"A": 10})
        slow = asyncio.ensure_future(store.read(lambda c: c.fetchval("SELECT pg_sleep(3)")))
        await until(
            lambda: sql_is(
                clean.pg_dsn,
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'stockcore-reads' AND wait_event = 'PgSleep'",
                1,
            ),
            "a caller's read holding the one reader connection",
        )
        queued = asyncio.ensure_future(store.read_levels(["A"]))

        results, _ = await asyncio.wait_for(store.reserve_batch([hold("r-1", ("A", 1))]), 2.5)

        # The hold was decided while every reader connection was taken and a read waited.
        assert results[0].code is ReserveCode.HELD
        assert not slow.done() and not queued.done()
        await slow
        assert (await queued)["A"].reserved == 1
    finally:
        await store.close()


# --- concurrency ---------------------------------------------------------------------


async def test_concurrent_batches_locking_in_opposite_orders_never_deadlock_or_oversell(
    store: StockStore,
    db: asyncpg.Connection,
    clean: Servers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    skus = [f"HOT-{i}" for i in range(6)]
    await stock_up(store, {sku: 40 for sku in skus})
    other = await StockStore.connect(clean.pg_dsn, shard_count=SHARDS, pool_size=4, timeout=5)
    caplog.set_level(logging.INFO, logger="server.storage.postgres")
    forward = [(sku, 1) for sku in skus[:4]]
    backward = [(sku, 1) for sku in reversed(skus[2:])]

    async def round_trip(r: int) -> None:
        await asyncio.gather(
            store.reserve_batch([hold(f"f-{r:03}-{k}", *forward) for k in range(3)]),
            other.reserve_batch([hold(f"b-{r:03}-{k}", *backward) for k in range(3)]),
        )

    try:
        await asyncio.wait_for(asyncio.gather(*(round_trip(r) for r in range(40))), 60)
    finally:
        await other.close()

    # A deadlock would be retried inside the store, so look for the retry too.
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []
    held = await db.fetch(
        "SELECT u.sku, sum(u.q)::bigint AS units FROM stockcore.reservations r,"
        " unnest(r.skus, r.quantities) AS u(sku, q) WHERE r.status = 1 GROUP BY u.sku"
    )
    held_units = {r["sku"]: r["units"] for r in held}
    for sku in skus:
        on_hand, reserved = await units(db, sku)
        assert on_hand == 40
        assert reserved == held_units.get(sku, 0)
        assert reserved <= on_hand
    # Every reservation wants HOT-2 and HOT-3, and there are far more than 40 of them.
    assert (await units(db, "HOT-2"))[1] == 40
    assert (await units(db, "HOT-3"))[1] == 40
    await assert_invariants_hold(db)


async def test_concurrent_reserves_and_releases_of_shared_skus_never_deadlock(
    store: StockStore,
    db: asyncpg.Connection,
    clean: Servers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    skus = [f"HOT-{i}" for i in range(4)]
    await stock_up(store, {sku: 1000 for sku in skus})
    await store.reserve_batch(
        [hold(f"old-{i:03}", *[(sku, 1) for sku in reversed(skus)]) for i in range(60)]
    )
    other = await StockStore.connect(clean.pg_dsn, shard_count=SHARDS, pool_size=4, timeout=5)
    caplog.set_level(logging.INFO, logger="server.storage.postgres")

    async def release(i: int) -> None:
        ids = [f"old-{i:03}", f"old-{59 - i:03}"]
        await other.finish_batch(ids, Finish.RELEASE, ["tests"] * 2)

    async def reserve(i: int) -> None:
        await store.reserve_batch([hold(f"new-{i:03}", *[(sku, 1) for sku in skus])])

    try:
        await asyncio.wait_for(
            asyncio.gather(*(f(i) for i in range(60) for f in (release, reserve))), 60
        )
    finally:
        await other.close()

    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []
    for sku in skus:
        assert await units(db, sku) == (1000, 60)
    await assert_invariants_hold(db)


async def test_concurrent_reserves_with_one_id_hold_it_once(
    store: StockStore, db: asyncpg.Connection, clean: Servers
) -> None:
    await stock_up(store, {"A": 100})
    other = await StockStore.connect(clean.pg_dsn, shard_count=SHARDS, pool_size=4, timeout=5)
    try:
        outcomes = await asyncio.gather(
            *(
                (store if i % 2 else other).reserve_batch([hold(f"r-{i // 8}", ("A", 3))])
                for i in range(64)
            )
        )
    finally:
        await other.close()

    codes = [results[0].code for results, _ in outcomes]
    assert codes.count(ReserveCode.HELD) == 8
    assert codes.count(ReserveCode.REPEAT) == 56
    assert await units(db, "A") == (100, 24)
    await assert_invariants_hold(db)


async def test_an_id_taken_by_a_concurrent_batch_leaves_its_units_to_the_rest_of_the_batch(
    store: StockStore, db: asyncpg.Connection, clean: Servers
) -> None:
    await stock_up(store, {"A": 10, "B": 10})
    rival = hold("r-x", ("B", 1))
    ours = hold("r-x", ("A", 2))
    # Another transaction holds r-x for other content and has not committed yet.
    open_tx = db.transaction()
    await open_tx.start()
    await db.fetch(
        "SELECT * FROM stockcore.hold_stock($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        [rival.reservation_id],
        [rival.fingerprint],
        [rival.ttl_ms],
        [rival.caller],
        [None],
        [1],
        [1],
        [shard_of("B", SHARDS)],
        ["B"],
        [1],
    )
    try:
        batch = asyncio.create_task(store.reserve_batch([ours, hold("r-y", ("A", 9))]))
        waiting = "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        await until(lambda: sql_is(clean.pg_dsn, waiting, True), "the batch waits for the lock")
        assert not batch.done(), "the batch should wait for the rival's id"
    finally:
        await open_tx.commit()
    (taken, other), _ = await asyncio.wait_for(batch, 10)

    assert taken.code is ReserveCode.CONFLICT
    # r-x holds nothing of A, so all 10 units were there for r-y.
    assert (other.code, other.shortages) == (ReserveCode.HELD, ())
    assert await units(db, "A") == (10, 9)
    await assert_invariants_hold(db)


async def test_a_batch_whose_stock_fell_meanwhile_is_decided_again_with_the_rows_locked(
    store: StockStore, db: asyncpg.Connection, clean: Servers
) -> None:
    await stock_up(store, {"A": 10})
    rival = hold("r-x", ("A", 8))
    # Another transaction takes 8 of the 10 units and has not committed yet: the batch
    # reads 10 available without a lock, then waits for the row to take its units.
    open_tx = db.transaction()
    await open_tx.start()
    await db.fetch(
        "SELECT * FROM stockcore.hold_stock($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        [rival.reservation_id],
        [rival.fingerprint],
        [rival.ttl_ms],
        [rival.caller],
        [None],
        [1],
        [1],
        [shard_of("A", SHARDS)],
        ["A"],
        [8],
    )
    try:
        batch = asyncio.create_task(store.reserve_batch([hold("r-y", ("A", 5))]))
        waiting = "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        await until(lambda: sql_is(clean.pg_dsn, waiting, True), "the batch waits for the row")
    finally:
        await open_tx.commit()
    (late,), levels = await asyncio.wait_for(batch, 10)

    assert late.code is ReserveCode.REJECTED
    assert late.shortages == (Shortage("A", 5, 2),)
    assert await units(db, "A") == (10, 8)
    await assert_levels_are_current(db, levels)
    await assert_invariants_hold(db)
