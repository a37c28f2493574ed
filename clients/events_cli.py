"""`stockctl events dlq ...`: inspect, replay and drop a consumer group's dead letters
(order events its handlers gave up on, see clients/events.py). These commands talk to
the Redis server holding the event stream, not to the stockcore server."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO, assert_never

import redis.asyncio as aioredis

from clients.commands import Leaf, Missing, bounded_int, rfc3339
from clients.events import STREAM, DeadLetter, DeadLetters
from clients.order_cli import order_data
from clients.orders import event_type_name

#: Environment variable naming the Redis server when --redis is not given.
REDIS_ENV = "STOCKCORE_REDIS_URL"
#: The Redis server `make run` starts.
DEFAULT_REDIS = "redis://127.0.0.1:56389/0"


@dataclass(frozen=True)
class DeadLetterList:
    """`events dlq list`: a group's dead letters, oldest first."""

    redis_url: str
    stream: str
    group: str
    limit: int
    after: str


@dataclass(frozen=True)
class DeadLetterShow:
    """`events dlq show`: one dead letter with its event."""

    redis_url: str
    stream: str
    group: str
    dead_id: str


@dataclass(frozen=True)
class DeadLetterReplay:
    """`events dlq replay`: send dead letters back to their group (all when no id)."""

    redis_url: str
    stream: str
    group: str
    dead_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeadLetterDrop:
    """`events dlq drop`: delete dead letters for good."""

    redis_url: str
    stream: str
    group: str
    dead_ids: tuple[str, ...]


EventCommand = DeadLetterList | DeadLetterShow | DeadLetterReplay | DeadLetterDrop
EVENT_COMMANDS = (DeadLetterList, DeadLetterShow, DeadLetterReplay, DeadLetterDrop)


class DeadLetterMissing(Missing):
    """A dead letter named on the command line is not there."""


def _entry_id(text: str) -> str:
    ms, dash, seq = text.partition("-")
    if not (ms.isdigit() and (not dash or seq.isdigit())):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a stream entry id (like 1700000000000-0)"
        )
    return text


def add_event_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf
) -> None:
    """Add `events` and its subcommands to stockctl's parser."""
    events = commands.add_parser("events", help="order events on the Redis stream")
    group = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    dlq = group.add_parser("dlq", help="a consumer group's dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    def dead_letter_leaf(name: str, summary: str) -> argparse.ArgumentParser:
        sub = leaf(dlq_commands, name, summary)
        sub.add_argument("--group", required=True, help="the consumer group")
        sub.add_argument(
            "--redis",
            default=os.environ.get(REDIS_ENV) or DEFAULT_REDIS,
            help=f"Redis URL (default: ${REDIS_ENV}, else {DEFAULT_REDIS})",
        )
        sub.add_argument("--stream", default=STREAM, help=f"the event stream (default {STREAM})")
        return sub

    listing = dead_letter_leaf("list", "list dead letters, oldest first")
    listing.add_argument(
        "--limit", type=bounded_int(1, 10_000), default=100, help="at most this many (100)"
    )
    listing.add_argument("--after", type=_entry_id, help="only those after this dead letter")
    listing.set_defaults(
        make=lambda ns: DeadLetterList(ns.redis, ns.stream, ns.group, ns.limit, ns.after or "-")
    )

    show = dead_letter_leaf("show", "show one dead letter and its event")
    show.add_argument("dead_id", type=_entry_id, metavar="ID")
    show.set_defaults(make=lambda ns: DeadLetterShow(ns.redis, ns.stream, ns.group, ns.dead_id))

    replay = dead_letter_leaf("replay", "send dead letters back to the group, attempts reset")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("dead_ids", type=_entry_id, nargs="*", default=[], metavar="ID")
    target.add_argument("--all", action="store_true", help="every dead letter of the group")
    replay.set_defaults(
        make=lambda ns: DeadLetterReplay(
            ns.redis, ns.stream, ns.group, () if ns.all else tuple(ns.dead_ids)
        )
    )

    drop = dead_letter_leaf("drop", "delete dead letters for good")
    drop.add_argument("dead_ids", type=_entry_id, nargs="+", metavar="ID")
    drop.set_defaults(
        make=lambda ns: DeadLetterDrop(ns.redis, ns.stream, ns.group, tuple(ns.dead_ids))
    )


def _moment(ms: int) -> str:
    return rfc3339(datetime.fromtimestamp(ms / 1000, UTC))


def dead_letter_data(letter: DeadLetter) -> dict[str, object]:
    """A dead letter as JSON-ready data, with the event it carries when it is one."""
    event = letter.event()
    return {
        "id": letter.dead_id,
        "event_id": letter.event_id,
        "entry_id": letter.entry_id,
        "attempts": letter.attempts,
        "error": letter.error,
        "consumer": letter.consumer,
        "buried_at": _moment(letter.buried_at_ms),
        "event": None
        if event is None
        else {
            "cursor": event.cursor,
            "type": event_type_name(event.type),
            "order_id": event.order_id,
            "order_version": event.order_version,
            "occur_time": rfc3339(event.occur_time),
            "order": order_data(event.order),
        },
    }


def _summary(letter: DeadLetter) -> str:
    error = letter.error if len(letter.error) <= 60 else letter.error[:57] + "..."
    return f"{letter.dead_id}  {letter.event_id}  attempts={letter.attempts}  {error}"


async def execute_events(command: EventCommand, *, out: TextIO, as_json: bool) -> None:
    """Perform an events command and print its result; raises DeadLetterMissing when a
    named dead letter is not there (after doing the rest)."""
    client = aioredis.Redis.from_url(command.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        letters = DeadLetters(client, command.group, command.stream)
        await _execute(letters, command, out=out, as_json=as_json)
    finally:
        await client.aclose()


async def _execute(
    letters: DeadLetters, command: EventCommand, *, out: TextIO, as_json: bool
) -> None:
    match command:
        case DeadLetterList():
            found = await letters.list(command.limit, command.after)
            total = await letters.count()
            if as_json:
                data = {"dead_letters": [dead_letter_data(d) for d in found], "total": total}
                print(json.dumps(data, indent=2), file=out)
            else:
                for each in found:
                    print(_summary(each), file=out)
                print(f"{len(found)} shown of {total} dead letters in {letters.name}", file=out)
        case DeadLetterShow(dead_id=dead_id):
            letter = await letters.get(dead_id)
            if letter is None:
                raise DeadLetterMissing(f"no dead letter {dead_id} in {letters.name}")
            if as_json:
                print(json.dumps(dead_letter_data(letter), indent=2), file=out)
            else:
                data = dead_letter_data(letter)
                event = data.pop("event")
                for key, value in data.items():
                    print(f"{key:<10} {value}", file=out)
                print(f"{'event':<10} {json.dumps(event, indent=2)}", file=out)
        case DeadLetterReplay(dead_ids=dead_ids):
            ids = dead_ids or await _all_ids(letters)
            await _each(ids, letters.replay, "replayed as", out=out, as_json=as_json)
        case DeadLetterDrop(dead_ids=dead_ids):
            await _each(dead_ids, letters.drop, "dropped", out=out, as_json=as_json)
        case _:
            assert_never(command)


async def _all_ids(letters: DeadLetters) -> tuple[str, ...]:
    ids: list[str] = []
    after = "-"
    while batch := await letters.list(1000, after):
        ids += [d.dead_id for d in batch]
        after = batch[-1].dead_id
    return tuple(ids)


async def _each(
    ids: Sequence[str],
    act: Callable[[str], Awaitable[object]],
    verb: str,
    *,
    out: TextIO,
    as_json: bool,
) -> None:
    done: dict[str, object] = {}
    missing: list[str] = []
    for dead_id in ids:
        outcome = await act(dead_id)
        if outcome:
            done[dead_id] = outcome
        else:
            missing.append(dead_id)
    if as_json:
        print(json.dumps({"done": done, "missing": missing}, indent=2), file=out)
    else:
        for dead_id, outcome in done.items():
            detail = f" {outcome}" if isinstance(outcome, str) else ""
            print(f"{dead_id} {verb}{detail}", file=out)
        print(f"{len(done)} {verb.split()[0]}, {len(missing)} not found", file=out)
    if missing:
        raise DeadLetterMissing(f"no dead letter {', '.join(missing)}")
