"""`stockctl payments ...`: what the webhook receiver recorded of the payment provider's
events. These commands read the receiver's tables in PostgreSQL through its store
(payments/store.py), not the stockcore server; stockctl offers them through the
`stockctl.commands` entry point (pyproject.toml, clients/commands.py).

    stockctl payments returns [--all]     captured charges that paid no order, to give back
    stockctl payments event EVENT_ID      one provider event: what it did, its deliveries
"""

from __future__ import annotations

import argparse
import enum
import getpass
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TextIO

from clients.commands import Leaf, Missing, Subcommands, rfc3339
from payments.store import PaymentEventStore, PaymentToReturn, RecordedEvent

#: Environment variable naming the database when --pg is not given.
PG_ENV = "STOCKCORE_PG_DSN"
_CONNECT_S = 10.0
_QUERY_S = 30.0


def default_pg() -> str:
    """The database `make run` starts."""
    user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    return f"postgresql://{user}@127.0.0.1:54329/stockcore"


class EventMissing(Missing):
    """No event of the provider with that id is recorded."""


@asynccontextmanager
async def _store(pg: str) -> AsyncIterator[PaymentEventStore]:
    store = await PaymentEventStore.connect(
        pg, pool_size=1, timeout=_QUERY_S, connect_timeout=_CONNECT_S, name="stockctl"
    )
    try:
        yield store
    finally:
        await store.close()


def _data(record: PaymentToReturn | RecordedEvent) -> dict[str, Any]:
    """A row as JSON-ready data: enums by name, times RFC 3339 UTC."""
    data = asdict(record)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = rfc3339(value)
        elif isinstance(value, enum.Enum):
            data[key] = value.name
    return data


def _say(out: TextIO, as_json: bool, data: object, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text, file=out)


@dataclass(frozen=True)
class PaymentsReturns:
    """`payments returns [--all]`."""

    pg: str
    returned: bool

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Print the charges to return, oldest first."""
        async with _store(self.pg) as store:
            found = [_data(r) for r in await store.payments_to_return(returned=self.returned)]
        text = [
            f"{r['charge_id']}  order {r['order_id']}  {r['amount_minor']} {r['currency']}"
            f"  {r['reason']}  recorded {r['recorded_at']}"
            + (f"  returned {r['returned_at']}" if r["returned_at"] else "")
            for r in found
        ]
        text.append(f"{len(found)} payments to return shown")
        _say(out, as_json, {"payments_to_return": found}, "\n".join(text))


@dataclass(frozen=True)
class PaymentsEvent:
    """`payments event EVENT_ID`."""

    pg: str
    event_id: str

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Print one recorded event."""
        async with _store(self.pg) as store:
            found = await store.event(self.event_id)
        if found is None:
            raise EventMissing(f"no provider event {self.event_id!r} is recorded")
        data = _data(found)
        _say(out, as_json, data, "\n".join(f"{k:<13} {v}" for k, v in data.items()))


PaymentsCommand = PaymentsReturns | PaymentsEvent


def add_commands(commands: Subcommands, leaf: Leaf) -> None:
    """Add `payments` and its subcommands to stockctl's parser (the entry point)."""
    top = commands.add_parser(
        "payments", help="the payment provider's events and the money to return"
    )
    sub = top.add_subparsers(dest="payments_command", required=True, metavar="COMMAND")

    def pg_leaf(name: str, summary: str) -> argparse.ArgumentParser:
        p = leaf(sub, name, summary)
        p.add_argument(
            "--pg",
            default=os.environ.get(PG_ENV) or default_pg(),
            help=f"PostgreSQL DSN (default: ${PG_ENV}, else make run's database)",
        )
        return p

    returns = pg_leaf("returns", "captured charges that paid no order, oldest first")
    returns.add_argument("--all", action="store_true", help="also those returned already")
    returns.set_defaults(make=lambda ns: PaymentsReturns(ns.pg, ns.all))
    event = pg_leaf("event", "one provider event: what it did and how often it came")
    event.add_argument("event_id", metavar="EVENT_ID")
    event.set_defaults(make=lambda ns: PaymentsEvent(ns.pg, ns.event_id))
