"""AdmissionGate against a real Redis: all-or-none admission, pending holds, versioned levels."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping

import pytest
import redis.asyncio as aioredis

from server.storage.postgres import MirrorLevel
from server.storage.redis_gate import Admission, AdmissionGate, AdmitCode, GateUnavailable
from tests.conftest import Servers
from tests.support import hold

CLOSED_PORT_URL = "redis://127.0.0.1:1"


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of pending deadlines."""
    return int(time.time() * 1000)


def later_ms() -> int:
    """A deadline an hour away."""
    return now_ms() + 3_600_000


async def mirror(
    gate: AdmissionGate, levels: Mapping[str, tuple[int, int]], *, version: int = 1
) -> None:
    """Mirror (on_hand, reserved) per SKU at one version, and mark the mirror ready."""
    await gate.settle(
        levels=[MirrorLevel(sku, oh, rs, version) for sku, (oh, rs) in levels.items()]
    )
    await gate.mark_ready("tests")


async def pending(gate: AdmissionGate, sku: str) -> int:
    """Units of unsettled holds on a SKU."""
    level = await gate.level(sku)
    assert level is not None
    return level[2]


async def test_admit_holds_every_line_or_none_and_reports_each_short_sku(
    gate: AdmissionGate,
) -> None:
    await mirror(gate, {"A": (10, 2), "B": (5, 0), "C": (3, 3)})

    verdicts = await gate.admit(
        [hold("r-short", ("A", 9), ("B", 6), ("C", 1)), hold("r-fits", ("A", 8), ("B", 5))],
        later_ms(),
    )

    assert verdicts == [
        Admission(AdmitCode.REJECTED, {"A": 8, "B": 5, "C": 0}),
        Admission(AdmitCode.ADMITTED, {}),
    ]
    # Only the admitted reservation left pending units, the rejected one none at all.
    assert await gate.level("A") == (10, 2, 8, 1)
    assert await gate.level("B") == (5, 0, 5, 1)
    assert await gate.level("C") == (3, 3, 0, 1)


async def test_rejection_lists_only_the_short_skus(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0), "B": (1, 0)})

    (verdict,) = await gate.admit([hold("r-1", ("A", 4), ("B", 2))], later_ms())

    assert verdict == Admission(AdmitCode.REJECTED, {"B": 1})
    assert await pending(gate, "A") == 0


async def test_reservations_in_one_admit_compete_for_the_last_units(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})

    verdicts = await gate.admit(
        [hold("r-1", ("A", 4)), hold("r-2", ("A", 4)), hold("r-3", ("A", 4))], later_ms()
    )

    assert [v.code for v in verdicts] == [
        AdmitCode.ADMITTED,
        AdmitCode.ADMITTED,
        AdmitCode.REJECTED,
    ]
    assert verdicts[2].available == {"A": 2}
    assert await pending(gate, "A") == 8


async def test_pending_units_reduce_availability_until_settle_clears_them(
    gate: AdmissionGate,
) -> None:
    await mirror(gate, {"A": (10, 0)})
    assert [v.code for v in await gate.admit([hold("r-1", ("A", 6))], later_ms())] == [
        AdmitCode.ADMITTED
    ]

    (blocked,) = await gate.admit([hold("r-2", ("A", 5))], later_ms())
    await gate.settle(clear=["r-1"])
    (admitted,) = await gate.admit([hold("r-2", ("A", 5))], later_ms())

    assert blocked == Admission(AdmitCode.REJECTED, {"A": 4})
    assert admitted.code is AdmitCode.ADMITTED
    assert await pending(gate, "A") == 5


async def test_settle_moves_a_hold_from_pending_to_reserved_at_once(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})
    await gate.admit([hold("r-1", ("A", 6))], later_ms())

    await gate.settle(
        clear=["r-1"],
        known=[("r-1", later_ms())],
        levels=[MirrorLevel("A", 10, 6, 2)],
    )

    assert await gate.level("A") == (10, 6, 0, 2)
    (verdict,) = await gate.admit([hold("r-2", ("A", 5))], later_ms())
    assert verdict == Admission(AdmitCode.REJECTED, {"A": 4})


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
async def test_settle_applies_a_level_only_when_its_version_is_newer(
    gate: AdmissionGate, order: tuple[int, ...]
) -> None:
    levels = [MirrorLevel("A", 10 + v, v, v) for v in (1, 2, 3, 4)]

    for i in order:
        await gate.settle(levels=[levels[i]])

    assert await gate.level("A") == (14, 4, 0, 4)


async def test_settle_ignores_older_levels_within_one_call(gate: AdmissionGate) -> None:
    await gate.settle(
        levels=[MirrorLevel("A", 7, 0, 7), MirrorLevel("A", 3, 0, 3), MirrorLevel("B", 1, 0, 1)]
    )

    assert await gate.level("A") == (7, 0, 0, 7)
    assert await gate.level("B") == (1, 0, 0, 1)


async def test_settle_ignores_a_level_at_the_mirrored_version(gate: AdmissionGate) -> None:
    await gate.settle(levels=[MirrorLevel("A", 10, 0, 5)])

    await gate.settle(levels=[MirrorLevel("A", 99, 1, 5)])

    assert await gate.level("A") == (10, 0, 0, 5)


async def test_settle_keeps_pending_units_when_it_writes_a_level(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})
    await gate.admit([hold("r-1", ("A", 3))], later_ms())

    await gate.settle(levels=[MirrorLevel("A", 20, 1, 2)])

    assert await gate.level("A") == (20, 1, 3, 2)


async def test_known_ids_are_answered_known(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})
    await gate.settle(known=[("r-done", later_ms())])

    verdicts = await gate.admit([hold("r-done", ("A", 1)), hold("r-new", ("A", 1))], later_ms())

    assert [v.code for v in verdicts] == [AdmitCode.KNOWN, AdmitCode.ADMITTED]
    assert await pending(gate, "A") == 1


async def test_an_id_with_a_pending_hold_is_answered_known(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})

    first = await gate.admit([hold("r-1", ("A", 2))], later_ms())
    again = await gate.admit([hold("r-1", ("A", 2)), hold("r-1", ("A", 2))], later_ms())

    assert [v.code for v in first] == [AdmitCode.ADMITTED]
    assert [v.code for v in again] == [AdmitCode.KNOWN, AdmitCode.KNOWN]
    assert await pending(gate, "A") == 2


async def test_known_ids_are_forgotten_at_their_time(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})
    await gate.settle(known=[("r-1", now_ms() + 200)])
    assert [v.code for v in await gate.admit([hold("r-1", ("A", 1))], later_ms())] == [
        AdmitCode.KNOWN
    ]

    await asyncio.sleep(0.4)

    assert [v.code for v in await gate.admit([hold("r-1", ("A", 1))], later_ms())] == [
        AdmitCode.ADMITTED
    ]


async def test_admit_without_the_ready_marker_answers_not_mirrored(gate: AdmissionGate) -> None:
    await gate.settle(levels=[MirrorLevel("A", 10, 0, 1)])

    verdicts = await gate.admit([hold("r-1", ("A", 1)), hold("r-2", ("A", 50))], later_ms())

    assert [v.code for v in verdicts] == [AdmitCode.NOT_MIRRORED] * 2
    assert await gate.is_ready() is False
    assert await pending(gate, "A") == 0
    assert await gate.stale_pending(later_ms()) == []


async def test_admit_with_an_unmirrored_sku_answers_not_mirrored_and_holds_nothing(
    gate: AdmissionGate,
) -> None:
    await mirror(gate, {"A": (10, 0)})

    verdicts = await gate.admit(
        [hold("r-1", ("A", 1), ("UNSEEN", 1)), hold("r-2", ("A", 50), ("UNSEEN", 1))], later_ms()
    )

    assert [v.code for v in verdicts] == [AdmitCode.NOT_MIRRORED] * 2
    assert await pending(gate, "A") == 0
    assert await gate.level("UNSEEN") is None


async def test_stale_pending_lists_holds_past_their_deadline(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (100, 0), "B": (100, 0)})
    now = now_ms()
    await gate.admit([hold("r-dead-1", ("A", 3), ("B", 1))], now - 5_000)
    await gate.admit([hold("r-dead-2", ("A", 4))], now - 1_000)
    await gate.admit([hold("r-alive", ("A", 5))], now + 60_000)

    stale = await gate.stale_pending(now)

    assert sorted(stale) == ["r-dead-1", "r-dead-2"]
    assert await gate.stale_pending(now, limit=1) == ["r-dead-1"]
    await gate.settle(clear=stale)
    assert await pending(gate, "A") == 5
    assert await pending(gate, "B") == 0
    assert await gate.stale_pending(now) == []
    assert await gate.stale_pending(now + 120_000) == ["r-alive"]


async def test_clearing_a_hold_twice_is_harmless(gate: AdmissionGate) -> None:
    await mirror(gate, {"A": (10, 0)})
    await gate.admit([hold("r-1", ("A", 3))], later_ms())
    await gate.admit([hold("r-2", ("A", 2))], later_ms())

    await gate.settle(clear=["r-1"])
    await gate.settle(clear=["r-1", "r-1", "r-never"])

    assert await pending(gate, "A") == 2
    assert await gate.level("A") == (10, 0, 2, 1)
    assert sorted(await gate.stale_pending(later_ms() + 1)) == ["r-2"]


async def test_clearing_a_hold_does_not_recreate_a_vanished_level(
    gate: AdmissionGate, redis_client: aioredis.Redis
) -> None:
    await mirror(gate, {"A": (10, 0)})
    await gate.admit([hold("r-1", ("A", 3))], later_ms())
    await redis_client.delete(gate.prefix + "s:A")

    await gate.settle(clear=["r-1"])

    assert await redis_client.exists(gate.prefix + "s:A") == 0
    assert await gate.stale_pending(later_ms() + 1) == []


async def test_a_lock_has_one_owner_at_a_time(gate: AdmissionGate) -> None:
    assert await gate.try_lock("resync", "first", 60_000) is True
    assert await gate.try_lock("resync", "second", 60_000) is False

    await gate.unlock("resync", "second")
    assert await gate.try_lock("resync", "second", 60_000) is False
    await gate.unlock("resync", "first")
    assert await gate.try_lock("resync", "second", 60_000) is True


async def test_a_lock_lapses_after_its_ttl(gate: AdmissionGate) -> None:
    assert await gate.try_lock("resync", "first", 100) is True

    await asyncio.sleep(0.25)

    assert await gate.try_lock("resync", "second", 60_000) is True


async def test_every_call_on_an_unreachable_redis_raises_gate_unavailable(clean: Servers) -> None:
    gate = AdmissionGate.from_url(CLOSED_PORT_URL)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "admit": lambda: gate.admit([hold("r-1", ("A", 1))], later_ms()),
        "settle": lambda: gate.settle(clear=["r-1"]),
        "stale_pending": lambda: gate.stale_pending(now_ms()),
        "is_ready": gate.is_ready,
        "mark_ready": lambda: gate.mark_ready("tests"),
        "try_lock": lambda: gate.try_lock("resync", "me", 1000),
        "unlock": lambda: gate.unlock("resync", "me"),
        "level": lambda: gate.level("A"),
    }
    silent = []
    try:
        for name, call in calls.items():
            try:
                await call()
            except GateUnavailable:
                continue
            silent.append(name)
    finally:
        await gate.close()

    assert silent == []
