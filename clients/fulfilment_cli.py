"""`stockctl fulfilment ...`: the fulfilment workers' state and their dead letters (steps
that failed past their retry budget, with the order's history). These commands read the
PostgreSQL database the workers keep their state in, not the stockcore server.

    stockctl fulfilment status                 orders by stage, workers and their breakers
    stockctl fulfilment show ORDER             one order's fulfilment and history
    stockctl fulfilment dlq list               dead letters waiting for a replay
    stockctl fulfilment dlq show ID            one dead letter with its history
    stockctl fulfilment dlq replay ID... | --all
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO, assert_never

import asyncpg

from clients.commands import Leaf, Missing
from clients.fulfilment_stages import stage_name

#: Environment variable naming the database when --pg is not given.
PG_ENV = "STOCKCORE_PG_DSN"


def default_pg() -> str:
    """The database `make run` starts."""
    user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    return f"postgresql://{user}@127.0.0.1:54329/stockcore"


@dataclass(frozen=True)
class FulfilmentStatus:
    """`fulfilment status`."""

    pg: str


@dataclass(frozen=True)
class FulfilmentShow:
    """`fulfilment show ORDER`."""

    pg: str
    order_id: str


@dataclass(frozen=True)
class FulfilmentDlqList:
    """`fulfilment dlq list`."""

    pg: str
    limit: int
    replayed: bool


@dataclass(frozen=True)
class FulfilmentDlqShow:
    """`fulfilment dlq show ID`."""

    pg: str
    dead_id: int


@dataclass(frozen=True)
class FulfilmentDlqReplay:
    """`fulfilment dlq replay ID... | --all`."""

    pg: str
    dead_ids: tuple[int, ...]
    by: str


FulfilmentCommand = (
    FulfilmentStatus | FulfilmentShow | FulfilmentDlqList | FulfilmentDlqShow | FulfilmentDlqReplay
)
FULFILMENT_COMMANDS = (
    FulfilmentStatus,
    FulfilmentShow,
    FulfilmentDlqList,
    FulfilmentDlqShow,
    FulfilmentDlqReplay,
)


class FulfilmentMissing(Missing):
    """An order or dead letter named on the command line is not there."""


def _dead_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead letter id") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: dead letter ids start at 1")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: the limit must be 1-10000")
    return value


def add_fulfilment_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf
) -> None:
    """Add `fulfilment` and its subcommands to stockctl's parser."""
    top = commands.add_parser(
        "fulfilment", help="fulfilment workers, their breakers and dead letters"
    )
    sub = top.add_subparsers(dest="fulfilment_command", required=True, metavar="COMMAND")

    def pg_leaf(parent: Any, name: str, summary: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = leaf(parent, name, summary)
        p.add_argument(
            "--pg",
            default=os.environ.get(PG_ENV) or default_pg(),
            help=f"PostgreSQL DSN (default: ${PG_ENV}, else make run's database)",
        )
        return p

    status = pg_leaf(sub, "status", "orders by stage, workers and their circuit breakers")
    status.set_defaults(make=lambda ns: FulfilmentStatus(ns.pg))
    show = pg_leaf(sub, "show", "one order's fulfilment and its history")
    show.add_argument("order_id", metavar="ORDER")
    show.set_defaults(make=lambda ns: FulfilmentShow(ns.pg, ns.order_id))

    dlq = sub.add_parser("dlq", help="hand-offs and bookings that failed past their retry budget")
    dlq_sub = dlq.add_subparsers(dest="fulfilment_dlq_command", required=True, metavar="COMMAND")
    listing = pg_leaf(dlq_sub, "list", "dead letters waiting for a replay, oldest first")
    listing.add_argument("--limit", type=_limit, default=100, help="at most this many (100)")
    listing.add_argument("--replayed", action="store_true", help="also those replayed already")
    listing.set_defaults(make=lambda ns: FulfilmentDlqList(ns.pg, ns.limit, ns.replayed))
    one = pg_leaf(dlq_sub, "show", "one dead letter with the order's history")
    one.add_argument("dead_id", type=_dead_id, metavar="ID")
    one.set_defaults(make=lambda ns: FulfilmentDlqShow(ns.pg, ns.dead_id))
    replay = pg_leaf(dlq_sub, "replay", "send orders back to the step that died, tries reset")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("dead_ids", type=_dead_id, nargs="*", default=[], metavar="ID")
    target.add_argument("--all", action="store_true", help="every dead letter waiting")
    replay.add_argument(
        "--caller",
        default="stockctl",
        help="who replays, recorded on the dead letters (this command writes to PostgreSQL"
        " with your database credentials, not through the gRPC port's tokens)",
    )
    replay.set_defaults(
        make=lambda ns: FulfilmentDlqReplay(ns.pg, () if ns.all else tuple(ns.dead_ids), ns.caller)
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def _letter(row: asyncpg.Record, with_history: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row["id"],
        "order_id": row["order_id"],
        "stage": stage_name(row["stage"]),
        "partner": row["partner"],
        "attempts": row["attempts"],
        "error": row["error"],
        "dead_at": _time(row["dead_at"]),
        "worker": row["worker"],
        "replayed_at": _time(row["replayed_at"]),
    }
    if with_history:
        data["history"] = [
            {**h, "stage": stage_name(h["stage"])} for h in json.loads(row["history"])
        ]
    return data


async def _status(conn: asyncpg.Connection) -> dict[str, Any]:
    stages = await conn.fetch(
        "SELECT stage, count(*) AS n, min(due_at) AS due FROM stockcore.fulfilments GROUP BY stage"
    )
    workers = await conn.fetch(
        "SELECT worker, seen_at, in_flight, breakers, now() - seen_at AS silent"
        " FROM stockcore.fulfilment_workers ORDER BY worker"
    )
    moves = await conn.fetch(
        "SELECT worker, partner, from_state, to_state, reason, at"
        " FROM stockcore.fulfilment_breaker_transitions ORDER BY id DESC LIMIT 10"
    )
    waiting = await conn.fetchval(
        "SELECT count(*) FROM stockcore.fulfilment_dead_letters WHERE replayed_at IS NULL"
    )
    return {
        "stages": {stage_name(r["stage"]): r["n"] for r in stages},
        "dead_letters_waiting": waiting,
        "workers": [
            {
                "worker": w["worker"],
                "seen_at": _time(w["seen_at"]),
                "alive": w["silent"].total_seconds() < 10,
                "in_flight": w["in_flight"],
                "breakers": json.loads(w["breakers"]),
            }
            for w in workers
        ],
        "recent_transitions": [
            {
                "at": _time(m["at"]),
                "worker": m["worker"],
                "partner": m["partner"],
                "from": m["from_state"],
                "to": m["to_state"],
                "reason": m["reason"],
            }
            for m in moves
        ],
    }


def _status_text(data: dict[str, Any]) -> str:
    lines = ["orders by stage:"]
    lines += [f"  {stage:<11} {n}" for stage, n in sorted(data["stages"].items())] or ["  none"]
    lines.append(f"dead letters waiting: {data['dead_letters_waiting']}")
    lines.append("workers:")
    for w in data["workers"]:
        state = "alive" if w["alive"] else "silent"
        lines.append(
            f"  {w['worker']} ({state}, last seen {w['seen_at']}, {w['in_flight']} in flight)"
        )
        for partner, b in w["breakers"].items():
            lines.append(
                f"    {partner:<14} {b['state']:<9} calls={b['calls']} failures={b['failures']}"
                f" slow={b['slow']} consecutive={b['consecutive_failures']}"
                + (f" opens for {b['open_for_s']} s" if b["state"] == "OPEN" else "")
            )
    if not data["workers"]:
        lines.append("  none")
    lines.append("recent breaker transitions:")
    lines += [
        f"  {m['at']} {m['partner']} {m['from']} -> {m['to']} ({m['reason']}) [{m['worker']}]"
        for m in data["recent_transitions"]
    ] or ["  none"]
    return "\n".join(lines)


async def execute_fulfilment(command: FulfilmentCommand, *, out: TextIO, as_json: bool) -> None:
    """Perform a fulfilment command and print its result; FulfilmentMissing when what it
    names is not there (after doing the rest)."""
    conn = await asyncpg.connect(command.pg, timeout=10)
    try:
        await _execute(conn, command, out=out, as_json=as_json)
    finally:
        await conn.close()


def _history_lines(history: list[dict[str, Any]]) -> list[str]:
    return [
        f"  {h['at']} {stage_name(h['stage']):<10}"
        f" {h['partner'] or '-':<13} {h['what']}  {h['detail']}"
        for h in history
    ]


def _fields_text(data: dict[str, Any], width: int) -> str:
    lines = [f"{key:<{width}} {value}" for key, value in data.items() if key != "history"]
    return "\n".join([*lines, "history:", *_history_lines(data["history"])])


async def _show(conn: asyncpg.Connection, order_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM stockcore.fulfilments WHERE order_id = $1", order_id)
    if row is None:
        raise FulfilmentMissing(f"no fulfilment of order {order_id!r}")
    history = await conn.fetch(
        "SELECT at, stage, partner, what, detail, worker FROM stockcore.fulfilment_history"
        " WHERE order_id = $1 ORDER BY id",
        order_id,
    )
    data = {
        key: _time(value) if isinstance(value, datetime) else value
        for key, value in dict(row).items()
        if key not in {"skus", "quantities", "lease", "lease_owner"}
    }
    data["stage"] = stage_name(row["stage"])
    data["lines"] = [list(x) for x in zip(row["skus"], row["quantities"], strict=True)]
    data["history"] = [
        {**dict(h), "at": _time(h["at"]), "stage": stage_name(h["stage"])} for h in history
    ]
    return data


async def _replay(
    conn: asyncpg.Connection, dead_ids: tuple[int, ...], by: str
) -> tuple[dict[int, str], list[int]]:
    ids = list(dead_ids) or [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM stockcore.fulfilment_dead_letters WHERE replayed_at IS NULL ORDER BY id"
        )
    ]
    done: dict[int, str] = {}
    missing: list[int] = []
    for dead_id in ids:
        order_id = await conn.fetchval(
            "SELECT stockcore.replay_fulfilment_dead_letter($1, $2)", dead_id, by
        )
        if order_id is None:
            missing.append(dead_id)
        else:
            done[dead_id] = order_id
    return done, missing


async def _execute(
    conn: asyncpg.Connection, command: FulfilmentCommand, *, out: TextIO, as_json: bool
) -> None:
    def say(data: object, text: str) -> None:
        print(json.dumps(data, indent=2) if as_json else text, file=out)

    match command:
        case FulfilmentStatus():
            data = await _status(conn)
            say(data, _status_text(data))
        case FulfilmentShow(order_id=order_id):
            data = await _show(conn, order_id)
            say(data, _fields_text(data, 16))
        case FulfilmentDlqList(limit=limit, replayed=replayed):
            rows = await conn.fetch(
                "SELECT * FROM stockcore.fulfilment_dead_letters"
                " WHERE $1 OR replayed_at IS NULL ORDER BY id LIMIT $2",
                replayed,
                limit,
            )
            letters = [_letter(r, with_history=False) for r in rows]
            text = [
                f"{d['id']}  {d['order_id']}  {d['stage']}  {d['partner']}"
                f"  attempts={d['attempts']}  "
                + (d["error"] if len(d["error"]) <= 70 else d["error"][:67] + "...")
                for d in letters
            ]
            text.append(f"{len(letters)} dead letters shown")
            say({"dead_letters": letters}, "\n".join(text))
        case FulfilmentDlqShow(dead_id=dead_id):
            row = await conn.fetchrow(
                "SELECT * FROM stockcore.fulfilment_dead_letters WHERE id = $1", dead_id
            )
            if row is None:
                raise FulfilmentMissing(f"no fulfilment dead letter {dead_id}")
            letter = _letter(row, with_history=True)
            say(letter, _fields_text(letter, 12))
        case FulfilmentDlqReplay(dead_ids=dead_ids, by=by):
            done, missing = await _replay(conn, dead_ids, by)
            text = [f"{dead_id} replayed: order {order_id}" for dead_id, order_id in done.items()]
            text.append(f"{len(done)} replayed, {len(missing)} not found or replayed before")
            say({"replayed": done, "missing": missing}, "\n".join(text))
            if missing:
                listed = ", ".join(map(str, missing))
                raise FulfilmentMissing(f"no dead letter waiting with id {listed}")
        case _:
            assert_never(command)
