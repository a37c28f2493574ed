"""clients/events.py against a real Redis: a consumer group reads the order event
stream, picks up what a dead consumer left pending, hands each event over once even to
consumers racing on copies of it, retries failed ones, and sends poison events to a
dead-letter stream from which they can be replayed."""

from __future__ import annotations

import asyncio
import io
import json

import redis.asyncio as aioredis
from stockcore.v1 import orders_pb2 as pb

from clients.cli import ExitCode, parse_args, run
from clients.events import STREAM, DeadLetters, OrderEventConsumer
from clients.events_cli import DeadLetterMissing
from clients.orders import OrderEvent
from clients.stockctl_config import load
from tests.conftest import Servers
from tests.redis_memory import writes_refused
from tests.waiting import until


async def publish(client: aioredis.Redis, *order_ids: str, again: bool = False) -> None:
    for cursor, oid in enumerate(order_ids, start=1):
        event = pb.OrderEvent(event_id=f"{oid}/1", cursor=cursor, order_id=oid, order_version=1)
        await client.xadd(STREAM, {"event_id": event.event_id, "event": event.SerializeToString()})
    if again:
        await publish(client, *order_ids)


class Crash(BaseException):
    """Stands for the consumer's process dying inside a handler."""


class Recorder:
    """A handler that records what it was given, and can fail (or crash) on one event."""

    def __init__(self, fail_on: str = "", crash: bool = False) -> None:
        self.seen: list[str] = []
        self.fail_on = fail_on
        self.crash = crash

    async def __call__(self, event: OrderEvent) -> None:
        if event.event_id == self.fail_on:
            raise Crash() if self.crash else RuntimeError("handler failed")
        self.seen.append(event.event_id)


async def drain(consumer: OrderEventConsumer, handler: Recorder) -> None:
    while deliveries := await consumer.fetch(block_ms=10):
        await consumer.handle(deliveries, handler)


async def test_a_group_on_a_missing_stream_creates_it_and_creating_twice_is_fine(
    redis_client: aioredis.Redis,
) -> None:
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    await consumer.ensure_group()
    assert await redis_client.exists(STREAM) == 1
    assert await consumer.fetch(block_ms=10) == []


async def test_republished_events_are_handed_over_once(redis_client: aioredis.Redis) -> None:
    await publish(redis_client, "o-1", "o-2", again=True)
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    handler = Recorder()
    await drain(consumer, handler)
    assert handler.seen == ["o-1/1", "o-2/1"]
    pending = await redis_client.xpending(STREAM, "g")
    assert pending["pending"] == 0


async def test_a_dead_consumers_pending_events_are_claimed_by_another(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1", "o-2", "o-3")
    dying = OrderEventConsumer(redis_client, group="g", consumer="dying", claim_idle_ms=100)
    await dying.ensure_group()
    deliveries = await dying.fetch(block_ms=10)
    assert len(deliveries) == 3
    first = Recorder(fail_on="o-2/1", crash=True)
    try:
        await dying.handle(deliveries, first)
    except Crash:
        pass  # the consumer "dies" here: o-2 and o-3 stay pending
    await asyncio.sleep(0.2)

    other = OrderEventConsumer(redis_client, group="g", consumer="other", claim_idle_ms=100)
    second = Recorder()
    await drain(other, second)
    assert (first.seen, second.seen) == (["o-1/1"], ["o-2/1", "o-3/1"])


async def test_a_restarted_consumer_first_rereads_what_it_had_not_acknowledged(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1", "o-2")
    before = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await before.ensure_group()
    assert len(await before.fetch(block_ms=10)) == 2  # and then it crashed
    await publish(redis_client, "o-3")

    restarted = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    handler = Recorder()
    await drain(restarted, handler)
    assert handler.seen == ["o-1/1", "o-2/1", "o-3/1"]


async def test_an_entry_that_is_not_an_order_event_goes_to_the_dead_letters_at_once(
    redis_client: aioredis.Redis,
) -> None:
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    await redis_client.xadd(STREAM, {"event_id": "x", "event": b"\xff\xff not protobuf"})
    await redis_client.xadd(STREAM, {"something": "else"})
    await publish(redis_client, "o-1")
    handler = Recorder()
    await drain(consumer, handler)
    assert handler.seen == ["o-1/1"]
    assert (await redis_client.xpending(STREAM, "g"))["pending"] == 0
    letters = await DeadLetters(redis_client, "g").list()
    assert [(d.event_id, d.error) for d in letters] == [
        ("x", "not a stockcore.v1.OrderEvent"),
        (f"entry:{letters[1].entry_id}", "not a stockcore.v1.OrderEvent"),
    ]


class Flaky(Recorder):
    """Fails on one event a given number of times, then handles it."""

    def __init__(self, fail_on: str, times: int) -> None:
        super().__init__(fail_on)
        self.failures_left = times
        self.calls = 0

    async def __call__(self, event: OrderEvent) -> None:
        self.calls += 1
        if event.event_id == self.fail_on and self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("handler failed")
        self.seen.append(event.event_id)


async def drain_until(consumer: OrderEventConsumer, handler: Recorder, done) -> None:
    """Fetch and handle until `done()` holds (retries come round after retry_ms)."""
    async with asyncio.timeout(10):
        while not done():
            await consumer.handle(await consumer.fetch(block_ms=10), handler)


async def test_a_failed_event_is_tried_again_soon_and_handled_once(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1", "o-2", "o-3")
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1", retry_ms=20)
    await consumer.ensure_group()
    handler = Flaky("o-2/1", times=2)
    await drain_until(consumer, handler, lambda: "o-2/1" in handler.seen)
    # The events behind the failing one are not held up by it.
    assert handler.seen == ["o-1/1", "o-3/1", "o-2/1"]
    assert (await redis_client.xpending(STREAM, "g"))["pending"] == 0
    assert await DeadLetters(redis_client, "g").count() == 0


async def test_a_poison_event_goes_to_the_dead_letters_after_max_attempts_and_replays(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1", "o-2", "o-3")
    consumer = OrderEventConsumer(
        redis_client, group="billing", consumer="c-1", retry_ms=10, max_attempts=3
    )
    await consumer.ensure_group()
    other_group = OrderEventConsumer(redis_client, group="analytics", consumer="a-1")
    await other_group.ensure_group()
    dead = DeadLetters(redis_client, "billing")
    handler = Flaky("o-2/1", times=1_000)
    await drain_until(consumer, handler, lambda: False if handler.calls < 5 else True)
    await drain(consumer, handler)

    assert handler.seen == ["o-1/1", "o-3/1"]
    assert handler.calls == 2 + 3  # o-2 tried exactly max_attempts times
    assert (await redis_client.xpending(STREAM, "billing"))["pending"] == 0
    [letter] = await dead.list()
    assert (letter.event_id, letter.attempts) == ("o-2/1", 3)
    assert letter.error == "RuntimeError: handler failed"
    assert letter.consumer == "c-1"
    event = letter.event()
    assert event is not None and event.order_id == "o-2"
    assert await dead.get(letter.dead_id) == letter

    # Fixed, the event is replayed to billing alone, with fresh attempts.
    handler.failures_left = 0
    assert await dead.replay(letter.dead_id) is not None
    assert await dead.replay(letter.dead_id) is None  # gone from the dead letters
    await drain(consumer, handler)
    assert handler.seen == ["o-1/1", "o-3/1", "o-2/1"]
    assert await dead.count() == 0
    analytics = Recorder()
    await drain(other_group, analytics)
    assert analytics.seen == ["o-1/1", "o-2/1", "o-3/1"]


async def test_an_event_its_consumers_keep_dying_on_is_buried_without_another_try(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1")
    for life in range(2):
        dying = OrderEventConsumer(
            redis_client, group="g", consumer=f"c-{life}", claim_idle_ms=50, max_attempts=2
        )
        await dying.ensure_group()
        [delivery] = await dying.fetch(block_ms=10)
        # The claim is taken, then the process dies inside the handler.
        await dying.ledger.claim(delivery.event.event_id, delivery.entry_id, dying.consumer, 50)
        await asyncio.sleep(0.1)
    survivor = OrderEventConsumer(
        redis_client, group="g", consumer="c-2", claim_idle_ms=50, max_attempts=2
    )
    handler = Recorder()
    await drain(survivor, handler)
    assert handler.seen == []
    [letter] = await DeadLetters(redis_client, "g").list()
    assert letter.attempts == 3
    assert letter.error == "no consumer survived 2 attempts"


async def test_racing_consumers_handle_each_republished_event_once(
    redis_client: aioredis.Redis,
) -> None:
    ids = [f"o-{i}" for i in range(40)]
    # Every event twice in a row, as a relay that republished after a crash leaves them.
    for cursor, oid in enumerate(ids, start=1):
        event = pb.OrderEvent(event_id=f"{oid}/1", cursor=cursor, order_id=oid, order_version=1)
        for _ in range(2):
            await redis_client.xadd(
                STREAM, {"event_id": event.event_id, "event": event.SerializeToString()}
            )
    handled: list[str] = []

    async def slow(event: OrderEvent) -> None:
        await asyncio.sleep(0.005)
        handled.append(event.event_id)

    consumers = [OrderEventConsumer(redis_client, group="g", consumer=f"c-{n}") for n in range(4)]
    await consumers[0].ensure_group()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(slow, stop=stop, count=1, block_ms=10)) for c in consumers]
    try:
        await until(lambda: asyncio.sleep(0, len(set(handled)) == len(ids)), "every event handled")
        await until(lambda: pending_count(redis_client, "g", 0), "every entry acknowledged")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert sorted(handled) == sorted(f"{oid}/1" for oid in ids)


async def pending_count(client: aioredis.Redis, group: str, count: int) -> bool:
    return int((await client.xpending(STREAM, group))["pending"]) == count


async def test_a_consumer_waits_while_redis_is_full_and_goes_on_when_it_has_room(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1")
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    handler = Recorder()
    stop = asyncio.Event()
    async with writes_refused(redis_client):
        # Reading works; claiming the event (a ledger write) is refused with OOM.
        task = asyncio.create_task(consumer.run(handler, stop=stop, block_ms=10))
        await asyncio.sleep(0.5)
        assert (task.done(), handler.seen) == (False, [])
    try:
        await until(
            lambda: asyncio.sleep(0, handler.seen == ["o-1/1"]), "handled once Redis has room"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_group_lost_with_redis_is_created_again_and_reads_from_the_start(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1")
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    handler = Recorder()
    await drain(consumer, handler)
    await redis_client.flushdb()  # what a Redis restarted without persistence holds
    await publish(redis_client, "o-1", "o-2")  # the server republishes what was lost
    await drain(consumer, handler)
    # The ledger went with the data: o-1 is handed over again (at least once).
    assert handler.seen == ["o-1/1", "o-1/1", "o-2/1"]


async def test_stockctl_lists_shows_replays_and_drops_dead_letters(
    redis_client: aioredis.Redis, clean: Servers
) -> None:
    await publish(redis_client, "o-1", "o-2", "o-3")
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1", max_attempts=1)
    await consumer.ensure_group()
    failing = Flaky("o-2/1", times=1_000)
    await drain(consumer, failing)
    await publish(redis_client, "o-4")
    await drain(consumer, Flaky("o-4/1", times=1_000))
    [first, second] = await DeadLetters(redis_client, "g").list()

    async def stockctl(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = ["--json", "events", "dlq", *argv[:1], "--group", "g", "--redis", clean.redis_url]
        options, command = parse_args([*args, *argv[1:]])
        config = load(options.flags(), {"STOCKCORE_CONFIG": "none"})
        try:
            await run(options, config, command, out=out)
        except DeadLetterMissing as missing:
            err.write(str(missing))
            return ExitCode.NOT_FOUND, out.getvalue(), err.getvalue()
        return ExitCode.OK, out.getvalue(), err.getvalue()

    code, out, _ = await stockctl("list")
    listed = json.loads(out)
    assert (code, listed["total"]) == (0, 2)
    assert [d["event_id"] for d in listed["dead_letters"]] == ["o-2/1", "o-4/1"]
    assert listed["dead_letters"][0]["event"]["order_id"] == "o-2"

    code, out, _ = await stockctl("show", first.dead_id)
    assert json.loads(out)["error"] == "RuntimeError: handler failed"
    code, _, err = await stockctl("show", "1-0")
    assert code == ExitCode.NOT_FOUND and "1-0" in err

    code, out, err = await stockctl("replay", first.dead_id, "1-0")
    assert code == ExitCode.NOT_FOUND
    assert list(json.loads(out)["done"]) == [first.dead_id]
    assert json.loads(out)["missing"] == ["1-0"]
    code, out, _ = await stockctl("drop", second.dead_id)
    assert code == 0 and await DeadLetters(redis_client, "g").count() == 0

    handler = Recorder()
    await drain(consumer, handler)
    assert handler.seen == ["o-2/1"]  # replayed; o-4 was dropped
