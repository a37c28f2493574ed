"""Reading stockcore's order events from the Redis stream, as another service would.

The server publishes every OrderEvent to the stream "stockcore:order-events" at least
once (fields "event_id", "cursor" and "event", the serialized stockcore.v1.OrderEvent),
in cursor order. A consumer group shares the stream among a service's instances:

    consumer = OrderEventConsumer(redis, group="billing", consumer="billing-1")
    await consumer.ensure_group()
    await consumer.run(handle)   # handle(event) is awaited once per event_id

Each group keeps a ledger in Redis, one small hash per event_id, changed only by Lua
scripts (clients/lua/), so that what is checked and what is changed cannot be split by
another consumer:

- before a handler runs, the consumer *claims* the event: an event handled (or buried)
  before is acknowledged unread; a second copy (republished) of one another consumer
  holds a live lease on is acknowledged too, since the other copy stays pending until
  it is handled; otherwise the claim takes a lease and counts an attempt;
- after the handler returns, "handled" is recorded and the entry acknowledged in one
  script; a handler that raised records its error and gives the lease back, and the
  entry stays pending: this consumer tries it again after `retry_ms`, another one
  claims it (XAUTOCLAIM) if this one dies, after `claim_idle_ms`;
- an event whose handler failed `max_attempts` times (or whose consumers died that many
  times while handling it) is a poison event: it goes to the group's dead-letter stream
  "<stream>:dead:<group>" with its last error, and the entry is acknowledged, so the
  events behind it flow on. `DeadLetters` (and `stockctl events dlq ...`) lists, shows,
  replays (to this group alone) and drops them.

A group that disappears (a Redis server that lost its data) is created again, from the
start of what the stream holds: the server republishes what Redis lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, cast

import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.message import DecodeError

from clients.orders import OrderEvent, decode_event

log = logging.getLogger(__name__)

#: The stream the server publishes to.
STREAM = "stockcore:order-events"
#: How long a group remembers an event it handled (longer than any redelivery takes).
LEDGER_TTL_S = 7 * 86_400
#: About how many dead letters a group keeps.
DEAD_LETTERS_KEPT = 100_000
#: Errors a consumer waits out: Redis unreachable, or full (a Redis at its maxmemory that
#: evicts nothing refuses the ledger's writes until it has room again).
REDIS_OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    OSError,
)

Verdict = Literal["mine", "done", "dead", "busy"]


def dead_letter_stream(stream: str, group: str) -> str:
    """The name of a group's dead-letter stream."""
    return f"{stream}:dead:{group}"


def _ledger_prefix(stream: str, group: str) -> str:
    return f"{stream}:ledger:{group}:"


def _script(client: aioredis.Redis, name: str) -> Any:
    return client.register_script((resources.files("clients") / "lua" / name).read_text())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Delivery:
    """One stream entry: its id in the stream and the event it carries."""

    entry_id: str
    event: OrderEvent
    payload: bytes = b""


@dataclass(frozen=True)
class Claim:
    """A claim's verdict, how many times the event has been tried (this one too), and
    the stream entry the lease holder handles it through."""

    verdict: Verdict
    attempts: int
    entry_id: str


class EventLedger:
    """One group's record of the events it handled, is handling, or buried."""

    def __init__(self, client: aioredis.Redis, stream: str, group: str) -> None:
        self._client = client
        self._stream = stream
        self._group = group
        self._prefix = _ledger_prefix(stream, group)
        self.dead_letters = dead_letter_stream(stream, group)
        self._ttl_ms = LEDGER_TTL_S * 1000
        self._claim = _script(client, "claim.lua")
        self._done = _script(client, "done.lua")
        self._failed = _script(client, "failed.lua")
        self._bury = _script(client, "bury.lua")

    def key(self, event_id: str) -> str:
        """The ledger entry of one event."""
        return self._prefix + event_id

    async def claim(self, event_id: str, entry_id: str, consumer: str, lease_ms: int) -> Claim:
        """Claim `event_id`, delivered as `entry_id`, for `consumer` for `lease_ms` (see
        the module's notes)."""
        verdict, attempts, holder = await self._claim(
            keys=[self.key(event_id)], args=[consumer, entry_id, lease_ms, self._ttl_ms]
        )
        return Claim(cast(Verdict, _text(verdict)), int(attempts), _text(holder))

    async def done(self, event_id: str, entry_id: str) -> None:
        """Record the event handled and acknowledge its entry."""
        await self._done(
            keys=[self.key(event_id), self._stream], args=[self._group, entry_id, self._ttl_ms]
        )

    async def failed(self, event_id: str, consumer: str, error: str) -> None:
        """Record a failed attempt; the entry stays pending."""
        await self._failed(keys=[self.key(event_id)], args=[consumer, error, self._ttl_ms])

    async def bury(
        self, event_id: str, entry_id: str, payload: bytes, consumer: str, error: str
    ) -> str:
        """Move the event to the dead-letter stream and acknowledge its entry; return the
        dead letter's id."""
        dead_id = await self._bury(
            keys=[self.key(event_id), self._stream, self.dead_letters],
            args=[
                self._group,
                entry_id,
                event_id,
                payload,
                consumer,
                error,
                self._ttl_ms,
                DEAD_LETTERS_KEPT,
            ],
        )
        return _text(dead_id)


class OrderEventConsumer:
    """One consumer of a consumer group on the order event stream."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        group: str,
        consumer: str,
        stream: str = STREAM,
        claim_idle_ms: int = 30_000,
        retry_ms: int = 1_000,
        max_attempts: int = 5,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._client = client
        self.group = group
        self.consumer = consumer
        self.stream = stream
        self.ledger = EventLedger(client, stream, group)
        self._claim_idle_ms = claim_idle_ms
        self._retry_ms = retry_ms
        self.max_attempts = max_attempts
        # A pass over this consumer's own pending entries reads on from `_pass_from`
        # (None: no pass under way); one starts at start, and at `_retry_at` (a loop
        # time, `retry_ms` after a failure).
        self._pass_from: str | None = "0"
        self._retry_at: float | None = None
        self._autoclaim_from = "0-0"

    async def ensure_group(self, start_id: str = "0") -> None:
        """Create the group (and the stream) unless it exists; a new group reads from
        `start_id` ("0": every retained event, "$": only new ones)."""
        try:
            await self._client.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def fetch(self, count: int = 100, block_ms: int = 1000) -> list[Delivery]:
        """The next entries for this consumer: its own unacknowledged ones (after a
        restart, or due for a retry), then idle ones claimed from dead consumers, then
        new ones (waiting up to `block_ms` for them)."""
        try:
            return await self._fetch(count, block_ms)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning(
                "the consumer group is gone; creating it again", extra={"group": self.group}
            )
            await self.ensure_group("0")
            self._pass_from, self._retry_at, self._autoclaim_from = "0", None, "0-0"
            return await self._fetch(count, block_ms)

    async def _fetch(self, count: int, block_ms: int) -> list[Delivery]:
        now = asyncio.get_running_loop().time()
        if self._pass_from is None and self._retry_at is not None and now >= self._retry_at:
            self._pass_from, self._retry_at = "0", None
        if self._pass_from is not None:
            mine = _entries(
                await self._client.xreadgroup(
                    self.group, self.consumer, {self.stream: self._pass_from}, count=count
                )
            )
            if mine:
                self._pass_from = _text(mine[-1][0])
                return await self._deliveries(mine)
            self._pass_from = None
        claimed = await self._client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self._claim_idle_ms,
            self._autoclaim_from,
            count=count,
        )
        self._autoclaim_from = _text(claimed[0]) if claimed else "0-0"
        if len(claimed) > 1 and claimed[1]:
            return await self._deliveries(claimed[1])
        if self._retry_at is not None:
            # A retry is due soon: wait for new entries no longer than that.
            block_ms = max(1, min(block_ms, int((self._retry_at - now) * 1000)))
        fresh = await self._client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return await self._deliveries(_entries(fresh))

    def reread_pending(self) -> None:
        """Read this consumer's own unacknowledged entries again before new ones: after a
        Redis outage, entries delivered before it may never have reached the handler."""
        self._pass_from = "0"

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge entries without recording anything about their events."""
        if entry_ids:
            await self._client.xack(self.stream, self.group, *entry_ids)

    async def handle(
        self, deliveries: Sequence[Delivery], handler: Callable[[OrderEvent], Awaitable[None]]
    ) -> int:
        """Hand each event this group has not handled to `handler`, one at a time, and
        return how many were handled. A handler error is recorded and the entry stays
        pending (tried again later) until the event has failed `max_attempts` times; then
        it is moved to the dead-letter stream."""
        handled = 0
        for delivery in deliveries:
            event_id = delivery.event.event_id
            claim = await self.ledger.claim(
                event_id, delivery.entry_id, self.consumer, self._claim_idle_ms
            )
            if claim.verdict == "busy" and claim.entry_id == delivery.entry_id:
                # This very entry, claimed from a consumer whose lease has not run out
                # yet: it stays pending and comes round again.
                continue
            if claim.verdict != "mine":
                # Handled, buried, or being handled through another copy that stays
                # pending until it is: this copy is not needed.
                await self.ack([delivery.entry_id])
                continue
            if claim.attempts > self.max_attempts:
                # Tried that often without a recorded failure: its consumers died on it.
                await self._bury(delivery, f"no consumer survived {self.max_attempts} attempts")
                continue
            try:
                await handler(delivery.event)
            except Exception as exc:  # the handler's failure, whatever it is, is recorded
                error = f"{type(exc).__name__}: {exc}"[:2000]
                if claim.attempts >= self.max_attempts:
                    await self._bury(delivery, error)
                else:
                    log.warning(
                        "an order event handler failed; the event will be tried again",
                        extra={"event_id": event_id, "attempt": claim.attempts, "error": error},
                    )
                    await self.ledger.failed(event_id, self.consumer, error)
                    self._schedule_retry()
                continue
            await self.ledger.done(event_id, delivery.entry_id)
            handled += 1
        return handled

    def _schedule_retry(self) -> None:
        due = asyncio.get_running_loop().time() + self._retry_ms / 1000
        if self._retry_at is None or self._retry_at > due:
            self._retry_at = due

    async def _bury(self, delivery: Delivery, error: str) -> None:
        log.error(
            "an order event went to the dead-letter stream",
            extra={"event_id": delivery.event.event_id, "group": self.group, "error": error},
        )
        await self.ledger.bury(
            delivery.event.event_id, delivery.entry_id, delivery.payload, self.consumer, error
        )

    async def run(
        self,
        handler: Callable[[OrderEvent], Awaitable[None]],
        *,
        stop: asyncio.Event | None = None,
        count: int = 100,
        block_ms: int = 1000,
    ) -> None:
        """Consume until `stop` is set (or forever). Redis outages (REDIS_OUTAGES) are
        waited out."""
        pause = 0.1
        while stop is None or not stop.is_set():
            try:
                await self.handle(await self.fetch(count, block_ms), handler)
                pause = 0.1
            except REDIS_OUTAGES as exc:
                log.warning(
                    "Redis unreachable or full; consuming again when it is back",
                    extra={"error": str(exc)},
                )
                self.reread_pending()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _deliveries(self, entries: Sequence[Any]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        skipped: list[str] = []
        for entry_id, fields in entries:
            entry = _text(entry_id)
            if not fields:
                # Trimmed while pending: nothing is left to hand over.
                log.warning("skipping a stream entry trimmed while pending", extra={"entry": entry})
                skipped.append(entry)
                continue
            addressed = fields.get(b"for_group")
            if addressed is not None and _text(addressed) != self.group:
                skipped.append(entry)  # a dead letter replayed to another group
                continue
            payload = fields.get(b"event")
            try:
                event = decode_event(payload) if isinstance(payload, bytes) else None
            except DecodeError:
                event = None
            if event is None:
                await self._bury_unreadable(entry, fields)
                continue
            deliveries.append(Delivery(entry, event, payload or b""))
        await self.ack(skipped)
        return deliveries

    async def _bury_unreadable(self, entry: str, fields: dict[bytes, Any]) -> None:
        """An entry that carries no OrderEvent cannot succeed on any attempt."""
        event_id = _text(fields.get(b"event_id", f"entry:{entry}"))
        payload = fields.get(b"event", b"")
        error = "not a stockcore.v1.OrderEvent"
        log.error(
            "an unreadable stream entry went to the dead-letter stream",
            extra={"entry": entry, "group": self.group},
        )
        await self.ledger.bury(event_id, entry, payload, self.consumer, error)


@dataclass(frozen=True)
class DeadLetter:
    """An event a group gave up on: why, after how many attempts, and the event."""

    dead_id: str
    event_id: str
    entry_id: str
    attempts: int
    error: str
    consumer: str
    buried_at_ms: int
    payload: bytes

    def event(self) -> OrderEvent | None:
        """The event, when the payload is one."""
        try:
            return decode_event(self.payload)
        except DecodeError:
            return None


class DeadLetters:
    """A group's dead-letter stream: list, show, replay to the group, drop."""

    def __init__(self, client: aioredis.Redis, group: str, stream: str = STREAM) -> None:
        self._client = client
        self.group = group
        self._stream = stream
        self.name = dead_letter_stream(stream, group)
        self._ledger = EventLedger(client, stream, group)
        self._replay = _script(client, "replay.lua")

    async def count(self) -> int:
        """How many dead letters the group has."""
        return int(await self._client.xlen(self.name))

    async def list(self, count: int = 100, after: str = "-") -> list[DeadLetter]:
        """Up to `count` dead letters, oldest first, from `after` (exclusive) on."""
        start = after if after == "-" else f"({after}"
        found: Any = await self._client.xrange(self.name, start, count=count)
        return [_dead_letter(dead_id, fields) for dead_id, fields in found]

    async def get(self, dead_id: str) -> DeadLetter | None:
        """One dead letter, or None."""
        found: Any = await self._client.xrange(self.name, dead_id, dead_id)
        return _dead_letter(found[0][0], found[0][1]) if found else None

    async def replay(self, dead_id: str) -> str | None:
        """Put the event back on the stream for this group alone, with its attempts
        forgotten; return the new entry id (None when there is no such dead letter)."""
        letter = await self.get(dead_id)
        if letter is None:
            return None
        new_id = await self._replay(
            keys=[self.name, self._stream, self._ledger.key(letter.event_id)],
            args=[dead_id, self.group, letter.event_id, letter.payload],
        )
        return None if new_id is None else _text(new_id)

    async def drop(self, dead_id: str) -> bool:
        """Delete a dead letter for good; whether it was there."""
        return bool(await self._client.xdel(self.name, dead_id))


def _dead_letter(dead_id: Any, fields: dict[bytes, Any]) -> DeadLetter:
    def field(name: str, default: str = "") -> str:
        return _text(fields.get(name.encode(), default))

    return DeadLetter(
        dead_id=_text(dead_id),
        event_id=field("event_id"),
        entry_id=field("entry_id"),
        attempts=int(field("attempts", "0")),
        error=field("error"),
        consumer=field("consumer"),
        buried_at_ms=int(field("buried_at_ms", "0")),
        payload=fields.get(b"event", b""),
    )


def _entries(reply: Any) -> list[Any]:
    """The (id, fields) entries of an XREADGROUP reply."""
    found: list[Any] = []
    for _, entries in reply.items() if isinstance(reply, dict) else reply or ():
        found.extend(entries)
    return found
