"""One batch function of the live SQL before and after a change, in one run.

The function as it stood at git revision BEFORE (read from
`server/storage/sql/live/<file>` there) is created beside today's under the name
`<name>_before`, in one scratch PostgreSQL (devstack/servers.py) migrated to today's
schema; then batches of the same kind go to both in turn (shuffled per round), from one
connection, with `synchronous_commit = off` for the session so that the WAL flush, the
same for both, does not hide the difference. It prints each form's mean and median call
time and the ratio after/before.

Scenarios (what a batch is):
- `pay`: `stockcore.pay_orders` on batches of fresh PENDING_PAYMENT orders (created for
  the run, 1-3 SKUs each), each paid with a fresh payment id.

    python -m loadtests.sqlab pay --before REV [--rounds 1500] [--batch 2 8]
    python -m loadtests.sqlab pay --before REV --changed record_changes

(--before may also name a .sql file holding the function.) With --changed, the change
measured is in a function the scenario's calls (in the same file): that function as it
stood at BEFORE is created as `<changed>_before`, and today's scenario function as
`<name>_before` calling it, so both forms differ only in the changed function.

BEFORE's function must take today's arguments and return today's result type (the
change measured is in its body).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from devstack.servers import LocalPostgres
from loadtests.argforms import Orders, composite_form, prepare
from runtime.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"pay": ("orders.sql", "pay_orders")}


def function_at(revision: str, file: str, name: str) -> str:
    """The CREATE of stockcore.<name> in live/<file> at `revision` (a git revision, the
    path of a .sql file that holds the function, or "" for the working tree), renamed
    <name>_before."""
    if revision.endswith(".sql"):
        text = Path(revision).read_text()
    elif not revision:
        text = (ROOT / "server/storage/sql/live" / file).read_text()
    else:
        text = subprocess.run(
            ["git", "show", f"{revision}:server/storage/sql/live/{file}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    start = text.index(f"CREATE OR REPLACE FUNCTION stockcore.{name}(")
    end = text.index("END $$;", start) + len("END $$;")
    body = text[start:end]
    return re.sub(rf"stockcore\.{name}\(", f"stockcore.{name}_before(", body, count=1)


def before_forms(revision: str, file: str, name: str, changed: str) -> str:
    """The SQL that creates `<name>_before`: the function as it was at `revision`, or, when
    the change is in `changed`, which it calls, today's function calling `changed` as it
    was."""
    if changed == name:
        return function_at(revision, file, name)
    helper = function_at(revision, file, changed)
    today = function_at("", file, name).replace(
        f"stockcore.{changed}(", f"stockcore.{changed}_before("
    )
    if f"stockcore.{changed}_before(" not in today:
        raise SystemExit(f"stockcore.{name} does not call stockcore.{changed}")
    return helper + "\n\n" + today


async def pay_round(conn: asyncpg.Connection, function: str, orders: Orders, size: int) -> float:
    """Create `size` orders (not timed), then pay them with `function` (timed)."""
    commands = orders.batch(size)
    created = await conn.fetchrow(
        "SELECT * FROM stockcore.create_orders($1)", *composite_form(commands)
    )
    assert created is not None and [r["code"] for r in created["results"]] == [0] * size
    batch = sorted(commands, key=lambda c: c.order_id)
    started = time.perf_counter()
    row = await conn.fetchrow(
        f"SELECT * FROM stockcore.{function}($1, $2, $3, $4, $5, $6, $7, $8)",
        [c.order_id for c in batch],
        [f"pay-{c.order_id}" for c in batch],
        [c.total_minor for c in batch],
        [c.currency for c in batch],
        ["bench"] * size,
        [f"req-pay-{c.order_id}" for c in batch],
        ["payment"] * size,
        "bench-expiry",
    )
    took = time.perf_counter() - started
    assert row is not None
    codes = [r["code"] for r in row["results"]]
    if codes != [0] * size:
        raise RuntimeError(f"{function}: orders not paid: codes {codes}")
    return took


async def measure(
    dsn: str, before: str, rounds: int, sizes: Sequence[int], changed: str | None = None
) -> str:
    """Prepare the database, create the function as it was, compare for each batch size."""
    await prepare(dsn)
    file, name = SCENARIOS["pay"]
    conn = await asyncpg.connect(dsn, server_settings={"jit": "off", "synchronous_commit": "off"})
    try:
        await conn.execute(before_forms(before, file, name, changed or name))
        lines = []
        for size in sizes:
            orders = Orders(seed=1000 + size)
            shuffle = random.Random(rounds)
            kept: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(rounds):
                forms = [("before", f"{name}_before"), ("after", name)]
                shuffle.shuffle(forms)
                for label, function in forms:
                    took = await pay_round(conn, function, orders, size)
                    if r >= rounds // 10:
                        kept[label].append(took)
            base = statistics.mean(kept["before"])
            lines.append(
                f"{name}, batches of {size} orders, {rounds} rounds (first tenth not kept)"
            )
            for label, values in kept.items():
                lines.append(
                    f"  {label:<7} mean {statistics.mean(values) * 1e6:8.1f} us"
                    f"  median {statistics.median(values) * 1e6:8.1f} us"
                    f"  ratio {statistics.mean(values) / base:6.3f}"
                )
        return "\n".join(lines)
    finally:
        await conn.close()


def run(before: str, rounds: int, sizes: Sequence[int], changed: str | None = None) -> str:
    """Start a scratch PostgreSQL, measure, stop it."""
    with tempfile.TemporaryDirectory(prefix="sqlab-") as folder:
        Path(folder).chmod(0o755)  # PostgreSQL runs as its own user when we are root
        pg = LocalPostgres(Path(folder) / "pg", free_port())
        pg.start()
        try:
            return asyncio.run(measure(pg.dsn, before, rounds, sizes, changed))
        finally:
            pg.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--before", required=True, help="git revision of the function before, or a .sql file"
    )
    parser.add_argument("--rounds", type=int, default=1500, help="batches of each form")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8], help="orders a batch")
    parser.add_argument(
        "--changed", help="the function the change is in, when the scenario's calls it"
    )
    args = parser.parse_args(argv)
    if args.rounds < 10 or min(args.batch) < 1:
        parser.error("--rounds must be at least 10 and --batch at least 1")
    print(run(args.before, args.rounds, args.batch, args.changed))


if __name__ == "__main__":
    main()
