"""What stockctl's groups of commands share, and how a program outside clients/ adds a group
over state it owns (the fulfilment worker's `stockctl fulfilment`, fulfilment/admin.py).

Such a group is named under the `stockctl.commands` entry points in pyproject.toml: a
function that adds its subcommands to stockctl's parser, whose commands perform themselves.
stockctl finds it through the installed package's metadata, so clients/ never imports the
program, which is itself a client of clients/."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Protocol, TextIO, TypeAlias, runtime_checkable

#: The entry point group of the command groups other programs add.
ENTRY_POINTS = "stockctl.commands"

# The runtime class is not subscriptable; the alias is for the type checker.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Adds one subcommand to a group with stockctl's global options; (group, name, summary).
Leaf = Callable[[Subcommands, str, str], argparse.ArgumentParser]

#: Adds a group of commands to stockctl's subcommands; what an entry point names.
AddCommands = Callable[[Subcommands, Leaf], None]


class Missing(Exception):
    """What a command names (an order, a dead letter) is not there: stockctl exits with
    NOT_FOUND."""


@runtime_checkable
class OwnedCommand(Protocol):
    """A parsed command of a group another program adds: it performs itself."""

    async def run(self, *, out: TextIO, as_json: bool) -> None:
        """Perform the command and print its result to `out`; Missing when what it names
        is not there."""


def added_groups() -> list[AddCommands]:
    """The command groups installed programs add, by entry point name."""
    found = sorted(entry_points(group=ENTRY_POINTS), key=lambda point: point.name)
    return [point.load() for point in found]


def bounded_int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`, either end open when None."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"an empty range: {low} > {high}")
    if low is not None and high is not None:
        span = f"{low}-{high}"
    elif low is not None:
        span = f"at least {low}"
    elif high is not None:
        span = f"at most {high}"
    else:
        span = "any integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {span}")
        return value

    return parse


def rfc3339(moment: datetime) -> str:
    """A time as every stockctl command prints it: RFC 3339 in UTC with milliseconds and
    a `Z` (2026-01-02T03:04:05.678Z); a naive time is taken to be UTC already."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under a header, columns aligned: text left, numbers right."""
    cells = [list(header), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    # Text left, numbers right, so columns of quantities line up by digit.
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    )
