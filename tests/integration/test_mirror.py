"""Mirror against real servers: rebuilding Redis from PostgreSQL and bypassing a dead gate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from server.config import Settings
from server.domain.inventory import AdjustCommand, Finish
from server.domain.sharding import shard_of
from server.inventory.mirror import Mirror
from server.metrics import REGISTRY
from server.storage.postgres import MirrorLevel, StockStore
from server.storage.redis_gate import AdmissionGate, AdmitCode, GateUnavailable
from tests.conftest import SHARDS
from tests.redis_memory import redis_configured, writes_refused
from tests.support import hold, stock_up
from tests.waiting import eventually

CLOSED_PORT_URL = "redis://127.0.0.1:1"


async def database_levels(db: asyncpg.Connection) -> dict[str, tuple[int, int, int]]:
    """(on_hand, reserved, version) of every SKU in PostgreSQL."""
    rows = await db.fetch("SELECT sku, on_hand, reserved, version FROM stockcore.stock")
    return {r["sku"]: (r["on_hand"], r["reserved"], r["version"]) for r in rows}


async def mirrored_levels(gate: AdmissionGate, skus: list[str]) -> dict[str, object]:
    """(on_hand, reserved, version) of each SKU as Redis mirrors it, or None."""
    found: dict[str, object] = {}
    for sku in skus:
        level = await gate.level(sku)
        found[sku] = None if level is None else (level[0], level[1], level[3])
    return found


async def assert_redis_agrees_with_postgres(gate: AdmissionGate, db: asyncpg.Connection) -> None:
    """Every SKU in PostgreSQL is mirrored with its current level and version."""
    expected = await database_levels(db)
    assert expected
    assert await mirrored_levels(gate, sorted(expected)) == expected


@pytest.fixture
async def mirror(gate: AdmissionGate, store: StockStore, settings: Settings) -> Mirror:
    """A mirror over the test gate, not yet loaded."""
    return Mirror(gate, store, settings)


@pytest.fixture
async def dead_gate() -> AsyncIterator[AdmissionGate]:
    """A gate pointed at a port nothing listens on."""
    opened = AdmissionGate.from_url(CLOSED_PORT_URL)
    try:
        yield opened
    finally:
        await opened.close()


async def test_resync_loads_every_sku_level_and_marks_ready(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {f"SKU-{i:02}": 10 + i for i in range(30)})
    await store.reserve_batch(
        [hold("r-1", ("SKU-01", 2), ("SKU-02", 3)), hold("r-2", ("SKU-03", 4))]
    )
    await store.finish_batch(["r-2"], Finish.COMMIT, ["tests"])
    assert await gate.is_ready() is False

    assert await mirror.resync() is True

    assert await gate.is_ready() is True
    await assert_redis_agrees_with_postgres(gate, db)
    # The ids PostgreSQL knows are known to the gate too.
    verdicts = await gate.admit(
        [hold("r-1", ("SKU-01", 1)), hold("r-2", ("SKU-03", 1)), hold("r-3", ("SKU-04", 1))],
        int(time.time() * 1000) + 60_000,
    )
    assert [v.code for v in verdicts] == [AdmitCode.KNOWN, AdmitCode.KNOWN, AdmitCode.ADMITTED]
    # The loader's lock is given back.
    assert await gate.try_lock("resync", "someone-else", 1000) is True


async def test_resync_loads_skus_beyond_one_chunk(
    mirror: Mirror, gate: AdmissionGate, db: asyncpg.Connection
) -> None:
    skus = [f"BULK-{i:05}" for i in range(5_003)]
    await db.copy_records_to_table(
        "stock",
        schema_name="stockcore",
        columns=["shard", "sku", "on_hand", "reserved", "version"],
        records=[(shard_of(sku, SHARDS), sku, i % 50 + 1, 0, 3) for i, sku in enumerate(skus)],
    )

    assert await mirror.resync() is True

    levels = await mirrored_levels(gate, skus)
    assert levels == {sku: (i % 50 + 1, 0, 3) for i, sku in enumerate(skus)}


async def test_check_loads_the_gate_before_using_it(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5})
    assert mirror.usable is False
    assert await mirror.admit([hold("r-1", ("A", 1))]) is None
    changed = mirror.subscribe()

    await mirror.check()

    assert mirror.usable is True
    assert changed.is_set()
    await assert_redis_agrees_with_postgres(gate, db)
    verdicts = await mirror.admit([hold("r-1", ("A", 1)), hold("r-2", ("A", 5))])
    assert verdicts is not None
    assert [v.code for v in verdicts] == [AdmitCode.ADMITTED, AdmitCode.REJECTED]
    assert verdicts[1].available == {"A": 4}


async def test_check_rebuilds_the_mirror_after_redis_lost_its_data(
    mirror: Mirror,
    gate: AdmissionGate,
    store: StockStore,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    await stock_up(store, {"A": 5, "B": 7})
    await mirror.check()
    assert mirror.usable is True

    await redis_client.flushall()
    # PostgreSQL moves on while Redis is empty.
    await store.reserve_batch([hold("r-1", ("A", 2))])
    await stock_up(store, {"C": 3})
    assert await gate.is_ready() is False
    assert await gate.level("A") is None

    await mirror.check()

    assert mirror.usable is True
    assert await gate.is_ready() is True
    await assert_redis_agrees_with_postgres(gate, db)
    verdicts = await mirror.admit([hold("r-1", ("A", 1)), hold("r-2", ("A", 4))])
    assert verdicts is not None
    assert [v.code for v in verdicts] == [AdmitCode.KNOWN, AdmitCode.REJECTED]
    assert verdicts[1].available == {"A": 3}


async def test_an_unreachable_gate_makes_the_mirror_unusable_and_admit_answer_none(
    mirror: Mirror,
    gate: AdmissionGate,
    dead_gate: AdmissionGate,
    store: StockStore,
) -> None:
    await stock_up(store, {"A": 5})
    await mirror.check()
    assert mirror.usable is True
    changed = mirror.subscribe()
    mirror.gate = dead_gate

    assert await mirror.admit([hold("r-1", ("A", 1))]) is None

    assert mirror.usable is False
    assert changed.is_set()
    # While unusable nothing reaches the gate and nothing raises.
    await mirror.settle(clear=["r-1"], levels=[MirrorLevel("A", 5, 0, 9)])
    await mirror.check()
    assert mirror.usable is False
    assert await mirror.admit([hold("r-1", ("A", 1))]) is None
    # Back on a live Redis, the next probe rebuilds and turns the gate on again.
    mirror.gate = gate
    await mirror.check()
    assert mirror.usable is True


async def test_a_gate_that_fails_on_settle_is_bypassed(
    mirror: Mirror, dead_gate: AdmissionGate, store: StockStore
) -> None:
    await stock_up(store, {"A": 5})
    await mirror.check()
    mirror.gate = dead_gate

    await mirror.settle(levels=[MirrorLevel("A", 5, 1, 9)])

    assert mirror.usable is False
    assert await mirror.admit([hold("r-1", ("A", 1))]) is None


async def test_a_mirror_starting_on_an_unreachable_gate_stays_unusable(
    dead_gate: AdmissionGate, store: StockStore, settings: Settings
) -> None:
    await stock_up(store, {"A": 5})
    mirror = Mirror(dead_gate, store, settings)

    await mirror.check()

    assert mirror.usable is False
    assert await mirror.admit([hold("r-1", ("A", 1))]) is None


async def test_resync_makes_redis_agree_with_postgres(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {f"SKU-{i}": 20 for i in range(6)})
    await mirror.check()
    # Changes Redis never hears of, as during an outage, and a stale level it did hear of.
    await store.reserve_batch(
        [hold("r-1", ("SKU-0", 3), ("SKU-1", 4)), hold("r-2", ("SKU-1", 1), ("SKU-2", 20))]
    )
    await store.finish_batch(["r-1"], Finish.COMMIT, ["tests"])
    await store.finish_batch(["r-2"], Finish.RELEASE, ["tests"])
    await store.adjust(AdjustCommand("SKU-3", None, 7, "recount", "k-1", "tests"))
    await stock_up(store, {"NEW-1": 4})
    await gate.settle(levels=[MirrorLevel("SKU-4", 1, 1, 1)])
    # A SKU is created at version 1 with its first level.
    assert await mirrored_levels(gate, ["SKU-0", "NEW-1"]) == {"SKU-0": (20, 0, 1), "NEW-1": None}

    assert await mirror.resync() is True

    await assert_redis_agrees_with_postgres(gate, db)


async def test_resync_is_skipped_while_another_process_holds_the_lock(
    mirror: Mirror, gate: AdmissionGate, store: StockStore
) -> None:
    await stock_up(store, {"A": 5})
    assert await gate.try_lock("resync", "another-process", 60_000) is True

    assert await mirror.resync() is False
    await mirror.check()

    assert await gate.is_ready() is False
    assert await gate.level("A") is None
    assert mirror.usable is False


async def test_check_drops_pending_holds_of_dead_requests(
    mirror: Mirror, gate: AdmissionGate, store: StockStore
) -> None:
    await stock_up(store, {"A": 10})
    await mirror.check()
    now = int(time.time() * 1000)
    await gate.admit([hold("r-dead", ("A", 4))], now - 1_000)
    await gate.admit([hold("r-alive", ("A", 3))], now + 60_000)

    await mirror.check()

    assert await gate.stale_pending(now + 120_000) == ["r-alive"]
    level = await gate.level("A")
    assert level is not None
    assert level[2] == 3


async def test_mirror_admit_gives_pending_holds_the_grace_period(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, settings: Settings
) -> None:
    await stock_up(store, {"A": 10})
    await mirror.check()
    before = int(time.time() * 1000)

    verdicts = await mirror.admit([hold("r-1", ("A", 4))])

    assert verdicts is not None
    assert verdicts[0].code is AdmitCode.ADMITTED
    grace_ms = int(settings.pending_grace_s * 1000)
    assert await gate.stale_pending(before + grace_ms - 1_000) == []
    assert await gate.stale_pending(before + grace_ms + 1_000) == ["r-1"]


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_each_probe_reports_redis_memory_against_its_maxmemory_also_when_full(
    mirror: Mirror, redis_client: aioredis.Redis
) -> None:
    configured = int((await redis_client.config_get("maxmemory"))["maxmemory"])
    await redis_client.set("filler", b"x" * 4_000_000)
    await mirror.check()
    with_filler = gauge("stockcore_redis_memory_used_bytes")
    assert with_filler is not None and with_filler > 4_000_000
    assert gauge("stockcore_redis_memory_max_bytes") == configured

    await redis_client.delete("filler")
    async with writes_refused(redis_client):
        await mirror.check()
        assert gauge("stockcore_redis_memory_max_bytes") == 1
    assert (gauge("stockcore_redis_memory_used_bytes") or 0) < with_filler - 3_000_000


async def test_a_redis_that_could_grow_unbounded_or_evict_the_gates_keys_is_reported_once(
    mirror: Mirror, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    def reports() -> list[str]:
        return [
            getattr(r, "policy", "")
            for r in caplog.records
            if "maxmemory-policy noeviction" in r.getMessage()
        ]

    with caplog.at_level(logging.WARNING, logger="server.inventory.mirror"):
        async with redis_configured(redis_client, maxmemory="1gb", maxmemory_policy="noeviction"):
            await mirror.check()
            assert reports() == []
        async with redis_configured(redis_client, maxmemory="1gb", maxmemory_policy="allkeys-lru"):
            await mirror.check()
            await mirror.check()
    assert reports() == ["allkeys-lru"]


async def test_a_redis_refusing_writes_makes_admit_answer_none(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, redis_client: aioredis.Redis
) -> None:
    await stock_up(store, {"A": 5})
    await mirror.check()
    assert mirror.usable is True
    async with writes_refused(redis_client):
        verdicts = await mirror.admit([hold("r-1", ("A", 1))])

        assert verdicts is None
        assert mirror.usable is False


async def test_check_survives_a_redis_that_refuses_writes(
    mirror: Mirror, store: StockStore, redis_client: aioredis.Redis
) -> None:
    await stock_up(store, {"A": 5})
    async with writes_refused(redis_client):
        await mirror.check()

        assert mirror.usable is False


async def test_a_redis_refusing_writes_makes_settle_bypass_the_gate(
    mirror: Mirror, store: StockStore, redis_client: aioredis.Redis
) -> None:
    await stock_up(store, {"A": 5})
    await mirror.check()
    async with writes_refused(redis_client):
        await mirror.settle(levels=[MirrorLevel("A", 6, 0, 9)])

        assert mirror.usable is False


async def test_the_probe_rebuilds_the_mirror_once_redis_accepts_writes_again(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, redis_client: aioredis.Redis
) -> None:
    await stock_up(store, {"A": 5})
    probe = asyncio.create_task(mirror.run())
    try:
        assert await eventually(gate.is_ready)
        async with writes_refused(redis_client):
            # Losing the marker asks for a rebuild, which cannot write for now.
            await redis_client.delete(gate.prefix + "ready")
            await asyncio.sleep(0.5)

        rebuilt = await eventually(gate.is_ready)
        died_of = probe.exception() if probe.done() else None
        assert (rebuilt, died_of) == (True, None)
    finally:
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)


# --- what the mirror must never lose (a gate that refuses what PostgreSQL would accept) ---


async def test_changes_made_while_the_gate_is_bypassed_reach_redis_before_it_is_used_again(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5, "B": 5})
    await mirror.check()
    assert mirror.usable
    mirror.failed(RuntimeError("a blip of this process's connection"))
    # PostgreSQL restocks A while this process does not tell Redis.
    result = await store.adjust(AdjustCommand("A", 10, None, "restock", "k-restock", "tests"))
    assert result.version is not None
    await mirror.settle(levels=[MirrorLevel("A", 15, 0, result.version)])
    assert (await gate.level("A"))[:2] == (5, 0)  # type: ignore[index]

    await mirror.check()  # the mirror is still loaded: only what changed is caught up

    assert mirror.usable
    await assert_redis_agrees_with_postgres(gate, db)


async def test_a_change_made_while_a_rebuild_reads_is_not_lost(
    mirror: Mirror, gate: AdmissionGate, store: StockStore, db: asyncpg.Connection
) -> None:
    await stock_up(store, {f"SKU-{i:02}": 5 for i in range(12)})
    read_everything = store.all_levels

    async def chunks_with_a_change_between(chunk: int = 5000):  # type: ignore[no-untyped-def]
        first = True
        async for levels in read_everything(chunk=4):
            yield levels
            if first:
                first = False
                # SKU-00 was just read; PostgreSQL changes it before the rebuild ends.
                result = await store.adjust(
                    AdjustCommand("SKU-00", None, 1, "recount", "k-recount", "tests")
                )
                assert result.version is not None
                await mirror.settle(levels=[MirrorLevel("SKU-00", 1, 0, result.version)])

    store.all_levels = chunks_with_a_change_between  # type: ignore[method-assign]
    try:
        await mirror.check()
    finally:
        del store.all_levels  # type: ignore[attr-defined]

    assert mirror.usable
    await assert_redis_agrees_with_postgres(gate, db)


async def test_a_ready_marker_that_survived_a_redis_restart_is_not_trusted(
    store: StockStore, settings: Settings, db: asyncpg.Connection, tmp_path
) -> None:
    from devstack.servers import LocalRedis
    from runtime.processes import free_port

    # Redis with an append-only file, as some operators run it: every key survives.
    persistent = LocalRedis(tmp_path / "redis", free_port(), persistent=True)
    persistent.start()
    gate = AdmissionGate.from_url(persistent.url)
    try:
        await stock_up(store, {"A": 5})
        mirror = Mirror(gate, store, settings)
        await mirror.check()
        assert await gate.is_ready()
        # PostgreSQL moves on while Redis restarts with yesterday's levels.
        await store.adjust(AdjustCommand("A", 20, None, "restock", "k-a", "tests"))
        persistent.kill()
        await persistent.restart()
        with pytest.raises(GateUnavailable):  # the pooled connection died with the server
            await gate.level("A")
        assert (await gate.level("A"))[:2] == (5, 0)  # type: ignore[index]

        assert not await gate.is_ready()
        (verdict,) = await gate.admit([hold("r-1", ("A", 10))], 10**13)
        assert verdict.code is AdmitCode.NOT_MIRRORED
        await mirror.check()
        assert await gate.is_ready()
        await assert_redis_agrees_with_postgres(gate, db)
    finally:
        await gate.close()
        persistent.stop()


async def test_a_hold_on_plentiful_stock_goes_past_the_gate_and_a_scarce_one_through_it(
    mirror: Mirror, gate: AdmissionGate, store: StockStore
) -> None:
    await stock_up(store, {"DEEP": 1000, "THIN": 30})
    await mirror.check()
    assert not mirror.plentiful(hold("r-0", ("DEEP", 1)))  # nothing seen here yet
    await mirror.levels(["DEEP", "THIN"])

    assert mirror.plentiful(hold("r-1", ("DEEP", 5)))
    assert not mirror.plentiful(hold("r-2", ("DEEP", 5), ("THIN", 1)))  # 30 is not plenty
    assert not mirror.plentiful(hold("r-3", ("DEEP", 120)))  # plenty for 5, not for 120
    await asyncio.sleep(0.3)
    assert not mirror.plentiful(hold("r-1", ("DEEP", 5)))  # seen too long ago


async def test_a_starting_process_writes_again_what_a_dead_one_changed_without_telling_redis(
    gate: AdmissionGate, store: StockStore, settings: Settings, db: asyncpg.Connection
) -> None:
    await stock_up(store, {"A": 5, "B": 5})
    first = Mirror(gate, store, settings)
    await first.check()
    # A process commits a change in PostgreSQL and dies (kill -9) before its settle
    # reaches Redis: the mirror stays loaded, with A's old level.
    await store.adjust(AdjustCommand("A", 20, None, "restock", "k-a", "tests"))
    assert (await gate.level("A"))[:2] == (5, 0)  # type: ignore[index]

    # The process that starts next catches up what moved recently, before serving.
    second = Mirror(gate, store, settings)
    await second.remember_recent(300)
    await second.check()
    assert second.usable
    assert (await gate.level("A"))[:2] == (25, 0)  # type: ignore[index]
    await assert_redis_agrees_with_postgres(gate, db)
