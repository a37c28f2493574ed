"""`stockctl fulfilment ...`: the fulfilment workers' state and their dead letters (steps
that failed past their retry budget, with the order's history). These commands read the
PostgreSQL database the workers keep their state in, through the workers' store
(fulfilment/store.py), not the stockcore server; stockctl offers them through the
`stockctl.commands` entry point (pyproject.toml, clients/commands.py).

    stockctl fulfilment status                 orders by stage, workers and their breakers
    stockctl fulfilment show ORDER             one order's fulfilment and history
    stockctl fulfilment dlq list               dead letters waiting for a replay
    stockctl fulfilment dlq show ID            one dead letter with its history
    stockctl fulfilment dlq replay ID... | --all
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from clients.commands import Leaf, Missing, Subcommands, bounded_int, rfc3339
from fulfilment.domain import Stage
from fulfilment.store import (
    DeadLetter,
    FulfilmentRecord,
    FulfilmentStore,
    HistoryLine,
    StoredTransition,
    WorkerReport,
)

#: Environment variable naming the database when --pg is not given.
PG_ENV = "STOCKCORE_PG_DSN"
# A worker whose last heartbeat is older than this is shown as silent.
_ALIVE_S = 10.0
# How many breaker transitions `status` shows.
_TRANSITIONS = 10
_CONNECT_S = 10.0
_QUERY_S = 30.0


def default_pg() -> str:
    """The database `make run` starts."""
    user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    return f"postgresql://{user}@127.0.0.1:54329/stockcore"


class FulfilmentMissing(Missing):
    """An order or dead letter named on the command line is not there."""


@asynccontextmanager
async def _store(pg: str) -> AsyncIterator[FulfilmentStore]:
    store = await FulfilmentStore.connect(
        pg, pool_size=1, timeout=_QUERY_S, connect_timeout=_CONNECT_S, name="stockctl"
    )
    try:
        yield store
    finally:
        await store.close()


def _say(out: TextIO, as_json: bool, data: object, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text, file=out)


@dataclass(frozen=True)
class FulfilmentStatus:
    """`fulfilment status`."""

    pg: str

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Print orders by stage, the dead letters waiting, workers and breaker moves."""
        async with _store(self.pg) as store:
            stages = await store.orders_by_stage()
            waiting = await store.dead_letters_waiting()
            workers = await store.workers()
            moves = await store.recent_transitions(_TRANSITIONS)
        data = status_data(stages, waiting, workers, moves)
        _say(out, as_json, data, _status_text(data))


@dataclass(frozen=True)
class FulfilmentShow:
    """`fulfilment show ORDER`."""

    pg: str
    order_id: str

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Print the order's fulfilment row and its history."""
        async with _store(self.pg) as store:
            record = await store.fulfilment(self.order_id)
            if record is None:
                raise FulfilmentMissing(f"no fulfilment of order {self.order_id!r}")
            history = await store.history(self.order_id)
        data = {**record_data(record), "history": [history_data(h) for h in history]}
        _say(out, as_json, data, _fields_text(data, 16))


@dataclass(frozen=True)
class FulfilmentDlqList:
    """`fulfilment dlq list`."""

    pg: str
    limit: int
    replayed: bool

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Print the dead letters, oldest first."""
        async with _store(self.pg) as store:
            letters = [
                letter_data(d) for d in await store.dead_letters(self.limit, replayed=self.replayed)
            ]
        text = [
            f"{d['id']}  {d['order_id']}  {d['stage']}  {d['partner']}"
            f"  attempts={d['attempts']}  "
            + (d["error"] if len(d["error"]) <= 70 else d["error"][:67] + "...")
            for d in letters
        ]
        text.append(f"{len(letters)} dead letters shown")
        _say(out, as_json, {"dead_letters": letters}, "\n".join(text))


@dataclass(frozen=True)
class FulfilmentDlqShow:
    """`fulfilment dlq show ID`."""

    pg: str
    dead_id: int

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Print a dead letter with the order's history when its step died."""
        async with _store(self.pg) as store:
            found = await store.dead_letter(self.dead_id)
        if found is None:
            raise FulfilmentMissing(f"no fulfilment dead letter {self.dead_id}")
        letter, history = found
        data = {**letter_data(letter), "history": [history_data(h) for h in history]}
        _say(out, as_json, data, _fields_text(data, 12))


@dataclass(frozen=True)
class FulfilmentDlqReplay:
    """`fulfilment dlq replay ID... | --all` (no ids: every letter waiting)."""

    pg: str
    dead_ids: tuple[int, ...]
    by: str

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Replay each letter; FulfilmentMissing, after the others, for those not waiting."""
        done: dict[int, str] = {}
        missing: list[int] = []
        async with _store(self.pg) as store:
            for dead_id in self.dead_ids or await store.waiting_dead_letter_ids():
                order_id = await store.replay_dead_letter(dead_id, self.by)
                if order_id is None:
                    missing.append(dead_id)
                else:
                    done[dead_id] = order_id
        text = [f"{dead_id} replayed: order {order_id}" for dead_id, order_id in done.items()]
        text.append(f"{len(done)} replayed, {len(missing)} not found or replayed before")
        _say(out, as_json, {"replayed": done, "missing": missing}, "\n".join(text))
        if missing:
            listed = ", ".join(map(str, missing))
            raise FulfilmentMissing(f"no dead letter waiting with id {listed}")


FulfilmentCommand = (
    FulfilmentStatus | FulfilmentShow | FulfilmentDlqList | FulfilmentDlqShow | FulfilmentDlqReplay
)


# Dead letter ids are a sequence from 1.
_dead_id = bounded_int(1)


def add_commands(commands: Subcommands, leaf: Leaf) -> None:
    """Add `fulfilment` and its subcommands to stockctl's parser (the entry point)."""
    top = commands.add_parser(
        "fulfilment", help="fulfilment workers, their breakers and dead letters"
    )
    sub = top.add_subparsers(dest="fulfilment_command", required=True, metavar="COMMAND")

    def pg_leaf(parent: Subcommands, name: str, summary: str) -> argparse.ArgumentParser:
        p = leaf(parent, name, summary)
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
    listing.add_argument(
        "--limit", type=bounded_int(1, 10_000), default=100, help="at most this many (100)"
    )
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
    return None if value is None else rfc3339(value)


def status_data(
    stages: dict[Stage, int],
    waiting: int,
    workers: Sequence[WorkerReport],
    moves: Sequence[StoredTransition],
) -> dict[str, Any]:
    """What `fulfilment status` prints, as JSON-ready data."""
    return {
        "stages": {stage.name: n for stage, n in stages.items()},
        "dead_letters_waiting": waiting,
        "workers": [
            {
                "worker": w.worker,
                "seen_at": _time(w.seen_at),
                "alive": w.silent_s < _ALIVE_S,
                "in_flight": w.in_flight,
                "breakers": w.breakers,
            }
            for w in workers
        ],
        "recent_transitions": [
            {
                "at": _time(m.at),
                "worker": m.worker,
                "partner": m.partner,
                "from": m.from_state,
                "to": m.to_state,
                "reason": m.reason,
            }
            for m in moves
        ],
    }


def record_data(record: FulfilmentRecord) -> dict[str, Any]:
    """An order's fulfilment row as JSON-ready data (stage by name, times RFC 3339 UTC)."""
    data: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, datetime):
            value = _time(value)
        data[field.name] = value
    data["stage"] = record.stage.name
    data["lines"] = [list(line) for line in record.lines]
    return data


def history_data(line: HistoryLine) -> dict[str, Any]:
    """A history line as JSON-ready data."""
    return {
        "at": _time(line.at),
        "stage": line.stage.name,
        "partner": line.partner,
        "what": line.what,
        "detail": line.detail,
        "worker": line.worker,
    }


def letter_data(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-ready data."""
    return {
        "id": letter.dead_id,
        "order_id": letter.order_id,
        "stage": letter.stage.name,
        "partner": letter.partner,
        "attempts": letter.attempts,
        "error": letter.error,
        "dead_at": _time(letter.dead_at),
        "worker": letter.worker,
        "replayed_at": _time(letter.replayed_at),
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


def _history_lines(history: list[dict[str, Any]]) -> list[str]:
    return [
        f"  {h['at']} {h['stage']:<10} {h['partner'] or '-':<13} {h['what']}  {h['detail']}"
        for h in history
    ]


def _fields_text(data: dict[str, Any], width: int) -> str:
    lines = [f"{key:<{width}} {value}" for key, value in data.items() if key != "history"]
    return "\n".join([*lines, "history:", *_history_lines(data["history"])])
