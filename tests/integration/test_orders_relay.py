"""The outbox relay against real PostgreSQL and Redis: gap-free cursors in commit
order, one sequencer at a time, publication at least once, and lag measured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from stockcore.v1 import orders_pb2 as pb

from clients.events import OrderEventConsumer
from clients.orders import OrderEvent
from server.config import Settings
from server.domain.inventory import AdjustCommand
from server.domain.order_queries import WatchFilter
from server.domain.orders import Actor, create_order
from server.metrics import REGISTRY
from server.orders.relay import Relay
from server.orders.watch import EventFeed
from server.rpc.orders_convert import encoded_event, stored_event
from server.storage.event_stream import STREAM, EventStream, LeftBehind
from server.storage.orders_pg import OrderStore, order_request
from server.storage.outbox_pg import OutboxSession
from server.storage.postgres import StockStore
from tests.conftest import Servers
from tests.redis_memory import writes_refused
from tests.support import connected
from tests.waiting import until

ACTOR = Actor("tests", "req")
LIMITS = {"default_ttl_s": 300.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}


@pytest.fixture
async def orders(store: StockStore) -> OrderStore:
    """An OrderStore over the test database, with plenty of A."""
    for sku in "AB":
        await store.adjust(AdjustCommand(sku, None, 100_000, "initial", f"init-{sku}", "tests"))
    return OrderStore(store)


@pytest.fixture
def relay_settings(clean: Servers) -> Settings:
    """Settings with a quick relay."""
    return Settings(
        pg_dsn=clean.pg_dsn,
        redis_url=clean.redis_url,
        relay_interval_s=0.02,
        relay_standby_interval_s=0.1,
        relay_batch=50,
    ).validate()


@pytest.fixture
async def session(clean: Servers) -> AsyncIterator[OutboxSession]:
    """A relay session of its own."""
    opened = await OutboxSession.open(clean.pg_dsn, 5)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def stream(clean: Servers) -> AsyncIterator[EventStream]:
    """The event stream on the test Redis."""
    opened = EventStream.from_url(clean.redis_url, maxlen=10_000, max_age_s=3600)
    try:
        yield opened
    finally:
        await opened.close()


async def create(
    orders: OrderStore, *ids: str, conn: asyncpg.Connection | None = None, sku: str = "A"
) -> None:
    """Orders (and their ORDER_CREATED events), committed in one statement; on `conn`
    when given (inside a transaction the test holds open)."""
    commands = [
        create_order(oid, "c-1", [(sku, 1, 10)], "EUR", None, ACTOR, **LIMITS) for oid in ids
    ]
    if conn is None:
        await orders.create(commands)
        return
    shards = orders.stock.shard_count
    ordered = sorted(commands, key=lambda c: c.order_id)
    await conn.fetchrow(
        "SELECT * FROM stockcore.create_orders($1)", [order_request(c, shards) for c in ordered]
    )


async def stream_events(client: aioredis.Redis) -> list[pb.OrderEvent]:
    return [pb.OrderEvent.FromString(fields[b"event"]) for _, fields in await client.xrange(STREAM)]


async def waiting_ids(session: OutboxSession) -> list[str]:
    """Sequence what is committed; the ids of every sequenced, unpublished event."""
    return [pending.event.event_id for pending in await session.next_events(100)]


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_cursors_are_gap_free_in_commit_order_even_when_ids_interleave(
    orders: OrderStore, clean: Servers, session: OutboxSession, db: asyncpg.Connection
) -> None:
    async with connected(clean.pg_dsn) as early:
        # The first transaction takes the lower id but commits last.
        async with early.transaction():
            # Another SKU: the open transaction holds A's row lock.
            await create(orders, "first-begun", conn=early)
            await create(orders, "second-begun", sku="B")
            assert await waiting_ids(session) == ["second-begun/1"]
        assert await waiting_ids(session) == ["second-begun/1", "first-begun/1"]
    await create(orders, "third")
    assert await waiting_ids(session) == ["second-begun/1", "first-begun/1", "third/1"]
    rows = await db.fetch("SELECT event_id, cursor FROM stockcore.order_events ORDER BY cursor")
    assert [(r["event_id"], r["cursor"]) for r in rows] == [
        ("second-begun/1", 1),
        ("first-begun/1", 2),
        ("third/1", 3),
    ]


async def test_every_event_is_published_once_with_its_cursor_and_its_lag_measured(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    await create(orders, *(f"o-{i}" for i in range(120)))
    lags_before = sample("stockcore_order_event_publication_lag_seconds_count")
    relay = Relay(relay_settings, stream, encoded_event)

    while await relay.step(session):
        pass

    events = await stream_events(redis_client)
    assert [e.cursor for e in events] == list(range(1, 121))
    # One batch writes its events in order id order.
    assert [e.event_id for e in events] == sorted(f"o-{i}/1" for i in range(120))
    # How far publication got is recorded by the next step (or when the relay idles).
    assert await session.backlog() == 20
    assert not await relay.step(session)
    assert await session.backlog() == 0
    assert len(await stream_events(redis_client)) == 120
    assert sample("stockcore_order_events_unpublished") == 0
    assert sample("stockcore_order_event_publication_lag_seconds_count") == lags_before + 120


async def test_a_crash_between_publishing_and_recording_publishes_again_and_consumers_see_each_once(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    clean: Servers,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    await create(orders, "o-1", "o-2", "o-3")
    # A relay publishes, then its process dies before anything records that it did.
    assert not await Relay(relay_settings, stream, encoded_event).step(session)
    await session.close()
    taking_over = await OutboxSession.open(clean.pg_dsn, 5)
    try:
        assert not await Relay(relay_settings, stream, encoded_event).step(taking_over)
    finally:
        await taking_over.close()

    events = await stream_events(redis_client)
    assert [e.event_id for e in events] == ["o-1/1", "o-2/1", "o-3/1"] * 2
    consumer = OrderEventConsumer(redis_client, group="billing", consumer="b-1")
    await consumer.ensure_group()
    handled: list[str] = []

    async def handle(event: OrderEvent) -> None:
        handled.append(event.event_id)

    while deliveries := await consumer.fetch(block_ms=10):
        await consumer.handle(deliveries, handle)
    assert handled == ["o-1/1", "o-2/1", "o-3/1"]


async def test_events_wait_while_redis_is_unreachable_and_are_published_after(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    await create(orders, "o-1", "o-2")
    down = EventStream.from_url("redis://127.0.0.1:1/0", maxlen=10_000, max_age_s=3600, timeout=0.2)
    try:
        assert not await Relay(relay_settings, down, encoded_event).step(session)
    finally:
        await down.close()
    assert sample("stockcore_order_events_unpublished") == 2
    assert await stream_events(redis_client) == []

    await Relay(relay_settings, stream, encoded_event).step(session)
    assert [e.event_id for e in await stream_events(redis_client)] == ["o-1/1", "o-2/1"]


async def relays_holding_the_lock(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'stockcore-relay'"
    )
    return count


async def test_one_relay_works_at_a_time_and_another_takes_over_when_it_stops(
    orders: OrderStore,
    relay_settings: Settings,
    stream: EventStream,
    redis_client: aioredis.Redis,
    db: asyncpg.Connection,
) -> None:
    relays = [Relay(relay_settings, stream, encoded_event) for _ in range(3)]
    tasks = {relay: asyncio.create_task(relay.run()) for relay in relays}
    try:
        for round_ in range(3):
            await create(orders, f"o-{round_}")
            await until(lambda n=round_ + 1: published(redis_client, n), f"{round_ + 1} published")
            working = [relay for relay in relays if relay.active]
            assert len(working) == 1
            assert await relays_holding_the_lock(db) == 1
            # The working relay goes away; one standing by takes over within its interval.
            working[0].stop()
            await asyncio.wait_for(tasks[working[0]], 5)
            relays.remove(working[0])
    finally:
        for relay in relays:
            relay.stop()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert [e.event_id for e in await stream_events(redis_client)] == ["o-0/1", "o-1/1", "o-2/1"]
    assert await relays_holding_the_lock(db) == 0


async def published(client: aioredis.Redis, count: int) -> bool:
    return int(await client.xlen(STREAM)) >= count


async def holds(client: aioredis.Redis, count: int) -> bool:
    return int(await client.xlen(STREAM)) == count


async def test_the_relay_wakes_on_a_commit_rather_than_waiting_for_its_poll(
    orders: OrderStore, clean: Servers, stream: EventStream, redis_client: aioredis.Redis
) -> None:
    slow_poll = Settings(
        pg_dsn=clean.pg_dsn,
        redis_url=clean.redis_url,
        relay_interval_s=10.0,
        relay_standby_interval_s=0.1,
    ).validate()
    relay = Relay(slow_poll, stream, encoded_event)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: asyncio.sleep(0, relay.active), "the relay is active", timeout=5)
        await asyncio.sleep(0.2)  # let its first look find nothing; the next is 10 s away
        for round_ in range(3):
            started = asyncio.get_running_loop().time()
            await create(orders, f"o-{round_}")
            await until(lambda n=round_ + 1: published(redis_client, n), "published", timeout=5)
            # Well inside the 10 s poll: woken by the commit's notification.
            assert asyncio.get_running_loop().time() - started < slow_poll.relay_interval_s / 2
    finally:
        relay.stop()
        await asyncio.wait_for(task, 5)


async def relay_until_idle(relay: Relay, session: OutboxSession) -> None:
    """Steps until nothing waits (a refused publish counts as waiting)."""
    for _ in range(20):
        if not await relay.step(session):
            return
    raise AssertionError("the relay still had work after 20 steps")


async def test_events_a_redis_restart_lost_are_published_again_in_cursor_order(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    relay = Relay(relay_settings, stream, encoded_event)
    await create(orders, "o-1", "o-2", "o-3")
    await relay_until_idle(relay, session)
    await relay_until_idle(relay, session)  # records the watermark
    assert await session.published_upto() == 3
    republished = sample("stockcore_order_events_republished_total")

    # Redis comes back empty (no persistence); then more orders are committed.
    await redis_client.flushdb()
    await create(orders, "o-4")
    await relay_until_idle(relay, session)

    events = await stream_events(redis_client)
    assert [e.cursor for e in events] == [1, 2, 3, 4]
    assert [e.event_id for e in events] == ["o-1/1", "o-2/1", "o-3/1", "o-4/1"]
    assert sample("stockcore_order_events_republished_total") == republished + 3


async def test_a_stream_from_an_older_snapshot_gets_what_it_missed_before_anything_newer(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    relay = Relay(relay_settings, stream, encoded_event)
    await create(orders, "o-1", "o-2")
    await relay_until_idle(relay, session)
    snapshot = [entry_id for entry_id, _ in await redis_client.xrange(STREAM)]
    await create(orders, "o-3", "o-4")
    await relay_until_idle(relay, session)
    await relay_until_idle(relay, session)
    # What a Redis restored from a snapshot taken after the first two holds.
    newer = [entry_id for entry_id, _ in await redis_client.xrange(STREAM)][len(snapshot) :]
    await redis_client.xdel(STREAM, *newer)
    await redis_client.set(STREAM + ":published-upto", 2)

    await create(orders, "o-5")
    await relay_until_idle(relay, session)

    assert [e.cursor for e in await stream_events(redis_client)] == [1, 2, 3, 4, 5]


async def test_a_new_relay_finds_the_loss_at_activation(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    await create(orders, "o-1", "o-2")
    first = Relay(relay_settings, stream, encoded_event)
    await relay_until_idle(first, session)
    await relay_until_idle(first, session)
    await redis_client.flushdb()

    # Nothing new was committed: the relay that takes over republishes anyway.
    await relay_until_idle(Relay(relay_settings, stream, encoded_event), session)
    assert [e.cursor for e in await stream_events(redis_client)] == [1, 2]


async def test_a_stream_written_before_markers_is_trusted_not_republished(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    await create(orders, "o-1", "o-2")
    earlier = Relay(relay_settings, stream, encoded_event)
    await relay_until_idle(earlier, session)
    await relay_until_idle(earlier, session)
    await redis_client.delete(STREAM + ":published-upto")

    await create(orders, "o-3")
    await relay_until_idle(Relay(relay_settings, stream, encoded_event), session)
    assert [e.cursor for e in await stream_events(redis_client)] == [1, 2, 3]


async def fill(stream: EventStream, start: int, count: int) -> None:
    """Entries with cursors start..start+count-1, in batches."""
    for first in range(start, start + count, 500):
        last = min(first + 500, start + count)
        await stream.publish([(f"e-{c}", c, b"x") for c in range(first, last)])


async def test_trimming_keeps_what_a_slow_group_has_not_read(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    small = EventStream(redis_client, maxlen=1000, max_age_s=3600, hard_cap=10)
    await redis_client.xgroup_create(STREAM, "slow", id="0", mkstream=True)
    await redis_client.xgroup_create(STREAM, "quick", id="0")
    await fill(small, 1, 5000)
    # "slow" read 300 entries and acknowledged 200; "quick" read and acknowledged all.
    read = await redis_client.xreadgroup("slow", "s-1", {STREAM: ">"}, count=300)
    ids = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(STREAM, "slow", *ids[:200])
    quick = await redis_client.xreadgroup("quick", "q-1", {STREAM: ">"}, count=5000)
    await redis_client.xack(STREAM, "quick", *[entry_id for entry_id, _ in quick[0][1]])

    trimmed = await small.trim()
    assert trimmed.left_behind == ()
    oldest = await redis_client.xrange(STREAM, "-", "+", count=1)
    # Nothing "slow" still needs went: its first unacknowledged entry is entry 201.
    assert int(oldest[0][1][b"cursor"]) <= 201
    assert int(await redis_client.xlen(STREAM)) >= 4800

    # Once "slow" has acknowledged everything, the stream is trimmed to about its length.
    rest = await redis_client.xreadgroup("slow", "s-1", {STREAM: ">"}, count=5000)
    await redis_client.xack(STREAM, "slow", *ids[200:], *[e for e, _ in rest[0][1]])
    trimmed = await small.trim()
    assert trimmed.removed > 0
    assert 1000 <= int(await redis_client.xlen(STREAM)) < 2000


async def test_past_the_hard_cap_trimming_goes_on_and_names_the_groups_left_behind(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    small = EventStream(redis_client, maxlen=1000, max_age_s=3600, hard_cap=2)
    await redis_client.xgroup_create(STREAM, "stalled", id="0", mkstream=True)
    await fill(small, 1, 5000)

    trimmed = await small.trim()
    length = int(await redis_client.xlen(STREAM))
    assert length < 3000
    # "stalled" read nothing: it may have missed everything before what the stream kept.
    assert trimmed.left_behind == (LeftBehind("stalled", 1, 5000 - length + 1),)


async def test_without_groups_the_stream_is_trimmed_to_about_its_length(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    small = EventStream(redis_client, maxlen=1000, max_age_s=3600)
    await fill(small, 1, 3000)
    assert (await small.trim()).removed > 0
    assert 1000 <= int(await redis_client.xlen(STREAM)) < 2000


async def test_one_trim_brings_the_stream_back_to_about_its_length_however_far_past_it(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    # One approximate XTRIM removes at most 10,000 entries; the peak adds more than that
    # between two trims.
    small = EventStream(redis_client, maxlen=1000, max_age_s=3600)
    await fill(small, 1, 25_000)
    trimmed = await small.trim()
    assert 1000 <= int(await redis_client.xlen(STREAM)) < 2000
    assert trimmed.length == int(await redis_client.xlen(STREAM))
    assert trimmed.removed == 25_000 - trimmed.length


async def oldest_cursor(client: aioredis.Redis) -> int:
    entries = await client.xrange(STREAM, "-", "+", count=1)
    return int(entries[0][1][b"cursor"])


async def test_entries_older_than_the_maximum_age_are_trimmed_below_the_usual_length(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    aging = EventStream(redis_client, maxlen=10_000, max_age_s=1.0)
    await fill(aging, 1, 3000)
    assert (await aging.trim()).removed == 0  # young, and below the usual length
    await asyncio.sleep(1.2)
    await fill(aging, 3001, 500)

    trimmed = await aging.trim()
    # Whole macro nodes go (cheap), so a few entries of the last old node may stay.
    assert 3000 - 100 < await oldest_cursor(redis_client) <= 3001
    assert trimmed.removed == 3500 - int(await redis_client.xlen(STREAM))
    assert trimmed.left_behind == ()


async def test_the_age_bound_passes_a_slow_group_and_names_what_it_may_have_missed(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    aging = EventStream(redis_client, maxlen=10_000, max_age_s=1.0)
    await redis_client.xgroup_create(STREAM, "slow", id="0", mkstream=True)
    await redis_client.xgroup_create(STREAM, "quick", id="0")
    await fill(aging, 1, 3000)
    # "slow" read 100 entries and acknowledged 50; "quick" read and acknowledged all.
    read = await redis_client.xreadgroup("slow", "s-1", {STREAM: ">"}, count=100)
    await redis_client.xack(STREAM, "slow", *[entry_id for entry_id, _ in read[0][1][:50]])
    quick = await redis_client.xreadgroup("quick", "q-1", {STREAM: ">"}, count=3000)
    await redis_client.xack(STREAM, "quick", *[entry_id for entry_id, _ in quick[0][1]])
    await asyncio.sleep(1.2)
    await fill(aging, 3001, 500)

    trimmed = await aging.trim()
    kept_from = await oldest_cursor(redis_client)
    assert kept_from > 3000 - 100
    assert trimmed.left_behind == (LeftBehind("slow", 51, kept_from),)


async def test_a_group_past_the_age_bound_goes_on_with_the_stream_and_finds_the_rest_in_postgresql(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    clean: Servers,
    redis_client: aioredis.Redis,
) -> None:
    aging = EventStream(redis_client, maxlen=10_000, max_age_s=1.0)
    relay = Relay(relay_settings, aging, encoded_event)
    await create(orders, *(f"o-{i:03}" for i in range(1, 101)))
    await relay_until_idle(relay, session)
    billing = OrderEventConsumer(redis_client, group="billing", consumer="b-1")
    await billing.ensure_group()
    handled: list[int] = []

    async def handle(event: OrderEvent) -> None:
        handled.append(event.cursor)

    await billing.handle(await billing.fetch(count=10, block_ms=10), handle)
    assert len(await billing.fetch(count=5, block_ms=10)) == 5  # and then it stopped
    # Billing stays away past the age bound while orders go on.
    await asyncio.sleep(1.2)
    await create(orders, *(f"o-{i:03}" for i in range(101, 111)))
    await relay_until_idle(relay, session)

    trimmed = await aging.trim()
    kept_from = await oldest_cursor(redis_client)
    assert 11 < kept_from <= 101
    assert trimmed.left_behind == (LeftBehind("billing", 11, kept_from),)

    # Billing comes back: the entries it had read and not finished are gone; it is not
    # held up by them, and goes on with what the stream kept.
    back = OrderEventConsumer(redis_client, group="billing", consumer="b-1")
    expected = [*range(1, 11), *range(kept_from, 111)]
    async with asyncio.timeout(10):
        while len(handled) < len(expected):
            await back.handle(await back.fetch(block_ms=10), handle)
    assert handled == expected
    assert (await redis_client.xpending(STREAM, "billing"))["pending"] == 0

    # What it missed, WatchOrders serves from PostgreSQL, from the cursor the trim named.
    feed = EventFeed(OrderStore(orders.stock), clean.pg_dsn, stored_event, safety_interval=0.1)
    missed: list[int] = []
    try:
        async with asyncio.timeout(10):
            everything = WatchFilter("", "", frozenset(), trimmed.left_behind[0].from_cursor - 1)
            async for cursor, _ in feed.stream(everything):
                if cursor >= kept_from:
                    break
                missed.append(cursor)
    finally:
        await feed.stop()
    assert missed == list(range(11, kept_from))


async def test_a_full_redis_refuses_publication_until_the_age_bound_trims_room_for_it(
    orders: OrderStore,
    relay_settings: Settings,
    session: OutboxSession,
    stream: EventStream,
    redis_client: aioredis.Redis,
) -> None:
    # Entries published two hours ago (past the stream's one-hour bound) fill Redis.
    (seconds, _) = await redis_client.time()
    two_hours_ago = (int(seconds) - 7200) * 1000
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(20_000):
            pipe.xadd(
                STREAM,
                {"event_id": f"old-{i}", "cursor": i, "event": b"x" * 500},
                id=f"{two_hours_ago}-{i}",
            )
        await pipe.execute()
    await create(orders, "o-1", "o-2", "o-3")
    relay = Relay(relay_settings, stream, encoded_event)

    async with writes_refused(redis_client, until_freed=1_000_000):
        assert not await relay.step(session)
        assert int(await redis_client.xlen(STREAM)) == 20_000
        assert sample("stockcore_order_events_unpublished") == 3
        # The relay keeps trimming while its publications are refused: the old entries
        # go, and with them the events find room.
        task = asyncio.create_task(relay.run())
        try:
            await until(lambda: holds(redis_client, 3), "only the new events, after the trim")
        finally:
            relay.stop()
            await asyncio.wait_for(task, 5)
        assert [e.event_id for e in await stream_events(redis_client)] == [
            "o-1/1",
            "o-2/1",
            "o-3/1",
        ]
