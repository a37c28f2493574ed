"""stockctl: read and change stockcore inventory and orders, and a consumer group's dead
letters, from a shell. Its settings (clients/stockctl_config.py) come from the command line,
then STOCKCORE_* variables, then its config file; a failure is one line naming the fix
(clients/failures.py). `stockctl` itself starts in clients/stockctl.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TextIO, assert_never

import asyncpg
import redis.exceptions

from clients import stockctl_config
from clients.commands import Missing, OwnedCommand, added_groups, bounded_int, rfc3339, table
from clients.config_cli import CONFIG_COMMANDS, ConfigCommand, add_config_commands, execute_config
from clients.errors import StockcoreError
from clients.events_cli import EVENT_COMMANDS, EventCommand, add_event_commands, execute_events
from clients.failures import (
    ExitCode,
    Failure,
    call_failure,
    configuration_failure,
    exit_statuses_text,
)
from clients.inventory import InventoryClient, Reservation, StockLevel
from clients.order_cli import ORDER_COMMANDS, OrderCommand, add_order_commands, execute_order
from clients.orders import OrderClient
from clients.recon_cli import RECON_COMMANDS, ReconCommand, add_recon_commands, execute_recon
from clients.reconciliation import ReconciliationClient
from clients.stockctl_config import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    ConfigurationError,
    StockctlConfig,
)
from clients.token_cli import TOKEN_COMMANDS, TokenCommand, add_token_commands, execute_token

__all__ = ["DEFAULT_TARGET", "DEFAULT_TIMEOUT", "ExitCode", "main", "parse_args"]


@dataclass(frozen=True)
class GlobalOptions:
    """The options every command takes. Those left out (None) are taken from the
    environment, the config file or the defaults (clients/stockctl_config.py)."""

    json: bool = False
    target: str | None = None
    timeout: float | None = None
    token_file: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    plaintext: bool | None = None

    def flags(self) -> dict[str, object]:
        """The settings given on the command line, by setting name (None: not given)."""
        return {
            "target": self.target,
            "timeout": self.timeout,
            "token": self.token_file,
            "ca_file": self.ca_file,
            "client_cert": self.client_cert,
            "client_key": self.client_key,
            "plaintext": self.plaintext,
        }


@dataclass(frozen=True)
class GetStock:
    """`stock get`: read the stock of some SKUs."""

    skus: tuple[str, ...]


@dataclass(frozen=True)
class AdjustStock:
    """`stock adjust`: change a SKU's on_hand by a delta or to a counted value."""

    sku: str
    delta: int | None
    on_hand: int | None
    reason: str
    idempotency_key: str


@dataclass(frozen=True)
class Reserve:
    """`reserve`: hold stock under a reservation id."""

    reservation_id: str
    lines: tuple[tuple[str, int], ...]
    ttl: float | None


@dataclass(frozen=True)
class SetLine:
    """`set-line`: set one line of a held reservation (0 removes it)."""

    reservation_id: str
    sku: str
    quantity: int
    ttl: float | None
    change_id: str


@dataclass(frozen=True)
class Commit:
    """`commit`: turn a hold into a deduction."""

    reservation_id: str


@dataclass(frozen=True)
class Release:
    """`release`: give a hold back."""

    reservation_id: str


@dataclass(frozen=True)
class GetReservation:
    """`reservation get`: read one reservation."""

    reservation_id: str


StockCommand = GetStock | AdjustStock | Reserve | SetLine | Commit | Release | GetReservation
Command = (
    StockCommand
    | OrderCommand
    | ReconCommand
    | EventCommand
    | TokenCommand
    | ConfigCommand
    | OwnedCommand
)


def _parse_set_line(text: str) -> tuple[str, int]:
    """Parse set-line's SKU=QTY, where a QTY of 0 removes the line."""
    sku, sep, quantity = text.partition("=")
    if sep and quantity.strip() == "0":
        return parse_line(f"{sku}=1")[0], 0
    return parse_line(text)


def parse_line(text: str) -> tuple[str, int]:
    """Parse a SKU=QTY argument into (sku, quantity); quantity must be a positive integer."""
    sku, sep, quantity = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not SKU=QTY")
    if not sku.strip():
        raise argparse.ArgumentTypeError(f"{text!r} has no SKU before '='")
    try:
        amount = int(quantity)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: quantity must be an integer") from None
    if amount < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: quantity must be at least 1")
    return sku, amount


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    # The comparison also rejects NaN; inf has no deadline to give the server.
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 seconds")
    return seconds


def _nonzero_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value == 0:
        raise argparse.ArgumentTypeError("a delta of 0 changes nothing")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Subcommands repeat the global options so they may also follow the command; there they
    # default to SUPPRESS, which leaves the top-level parser's value in place. An option left
    # out is None: the environment, the config file or the default gives it.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--target",
        default=default,
        help=f"server address (else $STOCKCORE_TARGET, the config file, {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=default,
        help=f"deadline per command in seconds, retries included (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--token-file",
        default=default,
        help="file holding the bearer token (else $STOCKCORE_TOKEN, $STOCKCORE_TOKEN_FILE,"
        " the config file's token_file)",
    )
    parser.add_argument(
        "--ca-file",
        default=default,
        help="CA of the server's certificate (else $STOCKCORE_CA_FILE, the config file,"
        " the system's CAs)",
    )
    parser.add_argument(
        "--client-cert", default=default, help="this client's certificate (mutual TLS)"
    )
    parser.add_argument("--client-key", default=default, help="its private key (mutual TLS)")
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=default,
        help="no TLS (a server started with STOCKCORE_PLAINTEXT=true)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print machine-readable JSON",
    )


def _version() -> str:
    try:
        return version("stockcore")
    except PackageNotFoundError:
        return "unknown (not installed)"


EPILOG = f"""\
settings: each option above, else its STOCKCORE_* variable, else the config file
($STOCKCORE_CONFIG, else $XDG_CONFIG_HOME/stockcore/config.toml, else
~/.config/stockcore/config.toml, which `make run` writes), else the default;
`stockctl config show` prints them and where each came from.

exit status:
{exit_statuses_text()}
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the stockctl argument parser."""
    parser = argparse.ArgumentParser(
        prog="stockctl",
        description="Read and change stockcore inventory and orders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stockctl {_version()}")
    _add_global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=summary, description=summary)
        _add_global_options(sub, top=False)
        return sub

    stock = commands.add_parser("stock", help="read or adjust stock levels")
    stock_commands = stock.add_subparsers(dest="stock_command", required=True, metavar="COMMAND")
    get = leaf(stock_commands, "get", "show on_hand, reserved and available of SKUs")
    get.add_argument("skus", nargs="+", metavar="SKU")
    get.set_defaults(make=lambda ns: GetStock(skus=tuple(ns.skus)))

    adjust = leaf(stock_commands, "adjust", "change a SKU's on_hand (creates unknown SKUs)")
    adjust.add_argument("sku", metavar="SKU")
    change = adjust.add_mutually_exclusive_group(required=True)
    change.add_argument("--delta", type=_nonzero_int, metavar="N", help="add N (or remove -N)")
    change.add_argument(
        "--set", dest="on_hand", type=bounded_int(0), metavar="N", help="set on_hand to N"
    )
    adjust.add_argument("--reason", required=True, help="why: restock, shrinkage, count ...")
    adjust.add_argument(
        "--key",
        metavar="K",
        help="idempotency key; reuse it to retry safely (default: a new random UUID)",
    )
    adjust.set_defaults(
        make=lambda ns: AdjustStock(
            sku=ns.sku,
            delta=ns.delta,
            on_hand=ns.on_hand,
            reason=ns.reason,
            idempotency_key=ns.key if ns.key is not None else str(uuid.uuid4()),
        )
    )

    reserve = leaf(commands, "reserve", "hold stock: every line or none")
    reserve.add_argument("reservation_id", metavar="ID")
    reserve.add_argument("lines", nargs="+", type=parse_line, metavar="SKU=QTY")
    reserve.add_argument(
        "--ttl", type=_positive_seconds, metavar="SECONDS", help="hold duration (server default)"
    )
    reserve.set_defaults(
        make=lambda ns: Reserve(reservation_id=ns.reservation_id, lines=tuple(ns.lines), ttl=ns.ttl)
    )

    set_line = leaf(
        commands, "set-line", "set one line of a held reservation (0 removes it); holds it anew"
    )
    set_line.add_argument("reservation_id", metavar="ID")
    set_line.add_argument("line", type=_parse_set_line, metavar="SKU=QTY")
    set_line.add_argument(
        "--ttl",
        type=_positive_seconds,
        metavar="SECONDS",
        help="hold duration from now (server default)",
    )
    set_line.add_argument(
        "--change-id", metavar="ID", help="idempotency id of the change (default: a new one)"
    )
    set_line.set_defaults(
        make=lambda ns: SetLine(
            reservation_id=ns.reservation_id,
            sku=ns.line[0],
            quantity=ns.line[1],
            ttl=ns.ttl,
            change_id=ns.change_id if ns.change_id is not None else str(uuid.uuid4()),
        )
    )

    commit = leaf(commands, "commit", "turn a held reservation into a deduction")
    commit.add_argument("reservation_id", metavar="ID")
    commit.set_defaults(make=lambda ns: Commit(reservation_id=ns.reservation_id))

    release = leaf(commands, "release", "give a held reservation back")
    release.add_argument("reservation_id", metavar="ID")
    release.set_defaults(make=lambda ns: Release(reservation_id=ns.reservation_id))

    reservation = commands.add_parser("reservation", help="read reservations")
    reservation_commands = reservation.add_subparsers(
        dest="reservation_command", required=True, metavar="COMMAND"
    )
    show = leaf(reservation_commands, "get", "show a reservation with its lines and times")
    show.add_argument("reservation_id", metavar="ID")
    show.set_defaults(make=lambda ns: GetReservation(reservation_id=ns.reservation_id))

    add_order_commands(commands, leaf)
    add_recon_commands(commands, leaf)
    add_event_commands(commands, leaf)
    add_token_commands(commands, leaf)
    add_config_commands(commands, leaf)
    # Commands over state another program owns (`stockctl fulfilment`): clients/commands.py.
    for add_commands in added_groups():
        add_commands(commands, leaf)
    return parser


def parse_args(argv: Sequence[str]) -> tuple[GlobalOptions, Command]:
    """Parse a command line; exits with status 2 and a usage message when it is invalid."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    options = GlobalOptions(
        json=ns.json,
        target=ns.target,
        timeout=ns.timeout,
        token_file=ns.token_file,
        ca_file=ns.ca_file,
        client_cert=ns.client_cert,
        client_key=ns.client_key,
        plaintext=ns.plaintext,
    )
    try:
        command: Command = ns.make(ns)
    except ValueError as exc:
        # Arguments that parse but do not go together: one line saying what to change.
        parser.exit(ExitCode.USAGE, f"stockctl: USAGE: {exc}\n")
    return options, command


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _level_data(level: StockLevel) -> dict[str, object]:
    return {
        "sku": level.sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
    }


def _reservation_data(reservation: Reservation) -> dict[str, object]:
    return {
        "reservation_id": reservation.reservation_id,
        "status": reservation.status.name,
        "lines": [{"sku": line.sku, "quantity": line.quantity} for line in reservation.lines],
        "create_time": _time(reservation.create_time),
        "expire_time": _time(reservation.expire_time),
        "finish_time": _time(reservation.finish_time),
    }


def format_levels(levels: Sequence[StockLevel]) -> str:
    """Stock levels as a table."""
    return table(
        ("SKU", "ON_HAND", "RESERVED", "AVAILABLE"),
        [(lv.sku, lv.on_hand, lv.reserved, lv.available) for lv in levels],
    )


def format_reservation(reservation: Reservation) -> str:
    """A reservation as a block of fields followed by a table of its lines."""
    fields = table(
        ("reservation", reservation.reservation_id),
        [
            ("status", reservation.status.name),
            ("created", _time(reservation.create_time)),
            ("expires", _time(reservation.expire_time)),
            ("finished", _time(reservation.finish_time) or "-"),
        ],
    )
    lines = table(("SKU", "QUANTITY"), [(line.sku, line.quantity) for line in reservation.lines])
    return f"{fields}\n\n{lines}"


async def execute(client: InventoryClient, command: StockCommand) -> tuple[object, str]:
    """Perform a command; return its result as JSON-ready data and as readable text."""
    match command:
        case GetStock(skus=skus):
            levels = await client.get_stock(skus)
            return [_level_data(level) for level in levels], format_levels(levels)
        case AdjustStock():
            outcome = await client.adjust_stock(
                command.sku,
                delta=command.delta,
                on_hand=command.on_hand,
                reason=command.reason,
                idempotency_key=command.idempotency_key,
            )
            data = {
                "level": _level_data(outcome.level),
                "applied_delta": outcome.applied_delta,
                "idempotency_key": command.idempotency_key,
            }
            text = (
                f"{format_levels([outcome.level])}\n\n"
                f"applied delta    {outcome.applied_delta:+d}\n"
                f"idempotency key  {command.idempotency_key}"
            )
            return data, text
        case Reserve(reservation_id=reservation_id, lines=lines, ttl=ttl):
            reservation = await client.reserve(reservation_id, lines, ttl)
        case SetLine(reservation_id, sku, quantity, ttl, change_id):
            reservation = await client.set_reservation_line(
                reservation_id, sku, quantity, change_id, ttl
            )
        case Commit(reservation_id=reservation_id):
            reservation = await client.commit(reservation_id)
        case Release(reservation_id=reservation_id):
            reservation = await client.release(reservation_id)
        case GetReservation(reservation_id=reservation_id):
            reservation = await client.get_reservation(reservation_id)
        case _:
            assert_never(command)
    return _reservation_data(reservation), format_reservation(reservation)


async def run(
    options: GlobalOptions, config: StockctlConfig, command: Command, *, out: TextIO
) -> None:
    """Perform `command` with `config`'s settings and print its result to `out`."""
    if isinstance(command, TOKEN_COMMANDS):
        execute_token(command, out=out, config=config)
        return
    if isinstance(command, CONFIG_COMMANDS):
        execute_config(command, out=out, config=config, as_json=options.json)
        return
    if isinstance(command, EVENT_COMMANDS):
        await execute_events(command, out=out, as_json=options.json)
        return
    if isinstance(command, OwnedCommand):
        await command.run(out=out, as_json=options.json)
        return
    credentials = stockctl_config.credentials(config)
    target, timeout = config.target.value, config.timeout.value
    if isinstance(command, ORDER_COMMANDS):
        async with OrderClient(target, credentials=credentials, default_timeout=timeout) as orders:
            await execute_order(orders, command, out=out, as_json=options.json)
        return
    if isinstance(command, RECON_COMMANDS):
        async with ReconciliationClient(
            target, credentials=credentials, default_timeout=timeout
        ) as recon:
            await execute_recon(recon, command, out=out, as_json=options.json)
        return
    async with InventoryClient(target, credentials=credentials, default_timeout=timeout) as client:
        data, text = await execute(client, command)
    print(json.dumps(data, indent=2) if options.json else text, file=out)


def invoked_as(argv0: str) -> str:
    """How the user ran stockctl, for the commands a message suggests: `stockctl` when
    that name finds this program on PATH, else the path it was run by."""
    path = Path(argv0)
    if path.name != "stockctl":
        return "stockctl"  # python -m ...
    found = shutil.which("stockctl")
    if found is not None and Path(found).resolve() == path.resolve():
        return "stockctl"
    return argv0


def _report(failure: Failure, as_json: bool) -> ExitCode:
    print(failure.json() if as_json else failure.text(), file=sys.stderr)
    return failure.exit_code


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of stockctl; returns the process exit status."""
    # The environment is read here only; everything below gets its settings as arguments.
    env = os.environ if environ is None else environ
    options, command = parse_args(sys.argv[1:] if argv is None else argv)
    prog = invoked_as(sys.argv[0])
    try:
        config = stockctl_config.load(options.flags(), env)
    except ConfigurationError as problem:
        return _report(configuration_failure(problem), options.json)
    try:
        asyncio.run(run(options, config, command, out=sys.stdout))
    except ConfigurationError as problem:
        return _report(configuration_failure(problem), options.json)
    except StockcoreError as error:
        return _report(call_failure(error, config, prog=prog), options.json)
    except Missing as missing:
        print(f"stockctl: NOT_FOUND: {missing}", file=sys.stderr)
        return ExitCode.NOT_FOUND
    except asyncpg.PostgresError as error:
        print(f"stockctl: PostgreSQL: {type(error).__name__}: {error}", file=sys.stderr)
        return ExitCode.ERROR
    except redis.exceptions.RedisError as error:
        print(f"stockctl: Redis: {type(error).__name__}: {error}", file=sys.stderr)
        return ExitCode.ERROR
    except (OSError, ValueError) as error:
        print(f"stockctl: {type(error).__name__}: {error}", file=sys.stderr)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
