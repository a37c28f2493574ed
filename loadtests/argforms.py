"""How CreateOrder's batch goes into SQL, compared in one run on one database.

Three forms of the same call of `stockcore.create_step` (sql/live/orders.sql), each given
the same kind of batch in turn (shuffled per round, so drift falls on all alike):

- `arrays`: fifteen positional arrays, the lines flattened with first/count offsets (the
  form create_orders had until migration 013);
- `composite`: one `stockcore.order_request[]` with each order's lines inside it (today's
  `stockcore.create_orders`);
- `json`: one jsonb document, unpacked with `jsonb_to_recordset`.

For each it prints the Python time to build the arguments (the server's CPU) and the
whole call's time from one connection (build, encode, round trip, PostgreSQL's work),
with the ratio to `arrays`. It starts its own PostgreSQL (devstack/servers.py) in a
temporary folder, with `synchronous_commit = off` for the session so that the WAL flush,
the same for every form, does not hide their difference.

    python -m loadtests.argforms [--rounds 1500] [--batch 2 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg

from devstack.servers import LocalPostgres
from runtime.processes import free_port
from server.domain.inventory import AdjustCommand
from server.domain.orders import Actor, CreateOrder, OrderLine
from server.domain.sharding import shard_of
from server.storage.migrations import migrate
from server.storage.orders_pg import order_request
from server.storage.postgres import HoldArrays, StockStore

SHARDS = 8
SKUS = [f"sku-{i:03d}" for i in range(200)]

# The two forms that are not the live function: wrappers of create_step, as create_orders
# is, created in the bench's scratch database only.
_SCRATCH_SQL = """
CREATE FUNCTION stockcore.bench_create_arrays(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    p_prices bigint[], p_customers text[], p_currencies text[], p_totals bigint[],
    p_order_fingerprints bytea[], p_request_ids text[],
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[])
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE c record;
BEGIN
    SELECT * INTO c FROM stockcore.create_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
        p_first, p_count, p_shards, p_skus, p_qtys, p_prices, p_customers, p_currencies,
        p_totals, p_order_fingerprints, p_request_ids, false);
    results := c.results;
    levels := c.levels;
END $$;

CREATE FUNCTION stockcore.bench_create_json(p jsonb,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[])
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE a record; ln record; c record; first int[] := '{}'; at int := 1; n int;
BEGIN
    SELECT array_agg(r.id ORDER BY r.i) AS ids,
           array_agg(decode(r.hold_fp, 'base64') ORDER BY r.i) AS hold_fps,
           array_agg(r.ttl ORDER BY r.i) AS ttls, array_agg(r.caller ORDER BY r.i) AS callers,
           array_agg(r.rid ORDER BY r.i) AS rids, array_agg(r.customer ORDER BY r.i) AS customers,
           array_agg(r.currency ORDER BY r.i) AS currencies,
           array_agg(r.total ORDER BY r.i) AS totals,
           array_agg(decode(r.fp, 'base64') ORDER BY r.i) AS fps,
           array_agg(jsonb_array_length(r.lines) ORDER BY r.i) AS counts
      INTO a
      FROM ROWS FROM (jsonb_to_recordset(p) AS (id text, hold_fp text, ttl bigint,
           caller text, rid text, customer text, currency text, total bigint, fp text,
           lines jsonb))
           WITH ORDINALITY AS r(id, hold_fp, ttl, caller, rid, customer, currency, total,
           fp, lines, i);
    SELECT array_agg((l.v->>0)::smallint ORDER BY r.i, l.j) AS shards,
           array_agg(l.v->>1 ORDER BY r.i, l.j) AS skus,
           array_agg((l.v->>2)::bigint ORDER BY r.i, l.j) AS qtys,
           array_agg((l.v->>3)::bigint ORDER BY r.i, l.j) AS prices
      INTO ln
      FROM ROWS FROM (jsonb_to_recordset(p) AS (lines jsonb)) WITH ORDINALITY AS r(lines, i)
     CROSS JOIN LATERAL jsonb_array_elements(r.lines) WITH ORDINALITY AS l(v, j);
    FOREACH n IN ARRAY a.counts LOOP
        first := first || at;
        at := at + n;
    END LOOP;
    SELECT * INTO c FROM stockcore.create_step(a.ids, a.hold_fps, a.ttls, a.callers, first,
        a.counts, ln.shards, ln.skus, ln.qtys, ln.prices, a.customers, a.currencies,
        a.totals, a.fps, a.rids, false);
    results := c.results;
    levels := c.levels;
END $$;
"""


def _sorted(commands: Sequence[CreateOrder]) -> list[CreateOrder]:
    return sorted(commands, key=lambda c: c.order_id)


def arrays_form(commands: Sequence[CreateOrder]) -> tuple[object, ...]:
    """The fifteen arrays of create_orders before migration 013."""
    arrays = HoldArrays.of([c.reserve for c in commands], SHARDS)
    ordered = [commands[i] for i in arrays.order]
    return (
        arrays.ids,
        arrays.fingerprints,
        arrays.ttls,
        arrays.callers,
        arrays.first,
        arrays.count,
        arrays.shards,
        arrays.skus,
        arrays.quantities,
        [line.unit_price_minor for c in ordered for line in c.lines],
        [c.customer_id for c in ordered],
        [c.currency for c in ordered],
        [c.total_minor for c in ordered],
        [c.fingerprint for c in ordered],
        [c.actor.request_id for c in ordered],
    )


def composite_form(commands: Sequence[CreateOrder]) -> tuple[object, ...]:
    """One stockcore.order_request[], as the server passes it."""
    return ([order_request(c, SHARDS) for c in _sorted(commands)],)


def json_form(commands: Sequence[CreateOrder]) -> tuple[object, ...]:
    """One jsonb document."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    document = [
        {
            "id": c.order_id,
            "hold_fp": b64(c.reserve.fingerprint),
            "ttl": c.ttl_ms,
            "caller": c.actor.caller,
            "rid": c.actor.request_id,
            "customer": c.customer_id,
            "currency": c.currency,
            "total": c.total_minor,
            "fp": b64(c.fingerprint),
            "lines": [
                [shard_of(x.sku, SHARDS), x.sku, x.quantity, x.unit_price_minor] for x in c.lines
            ],
        }
        for c in _sorted(commands)
    ]
    return (json.dumps(document),)


FORMS: dict[str, tuple[str, Callable[[Sequence[CreateOrder]], tuple[object, ...]]]] = {
    "arrays": (
        "SELECT * FROM stockcore.bench_create_arrays"
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        arrays_form,
    ),
    "composite": ("SELECT * FROM stockcore.create_orders($1)", composite_form),
    "json": ("SELECT * FROM stockcore.bench_create_json($1::jsonb)", json_form),
}


class Orders:
    """Fresh CreateOrders of one to three SKUs, reproducibly."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.prefix = f"o-{seed}-"
        self.made = 0

    def batch(self, size: int) -> list[CreateOrder]:
        """`size` new orders."""
        found = []
        for _ in range(size):
            self.made += 1
            skus = sorted(self.random.sample(SKUS, self.random.randint(1, 3)))
            lines = tuple(OrderLine(s, self.random.randint(1, 3), 1999) for s in skus)
            actor = Actor("bench", f"req-{self.made}")
            found.append(
                CreateOrder(
                    f"{self.prefix}{self.made:09d}",
                    f"c-{self.made % 997}",
                    "EUR",
                    lines,
                    300_000,
                    actor,
                )
            )
        return found


async def compare(dsn: str, rounds: int, size: int) -> dict[str, tuple[list[float], list[float]]]:
    """(build seconds, call seconds) of each form, over `rounds` interleaved batches of
    `size` orders; the first tenth is warm-up and not kept."""
    orders = Orders(seed=size)
    shuffle = random.Random(rounds)
    kept: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in FORMS}
    conn = await asyncpg.connect(dsn, server_settings={"jit": "off", "synchronous_commit": "off"})
    try:
        for r in range(rounds):
            names = list(FORMS)
            shuffle.shuffle(names)
            for name in names:
                sql, build = FORMS[name]
                commands = orders.batch(size)
                started = time.perf_counter()
                args = build(commands)
                built = time.perf_counter()
                row = await conn.fetchrow(sql, *args)
                done = time.perf_counter()
                assert row is not None
                codes = [x["code"] for x in row["results"]]
                if codes != [0] * size:
                    raise RuntimeError(f"{name}: orders not created: codes {codes}")
                if r >= rounds // 10:
                    kept[name][0].append(built - started)
                    kept[name][1].append(done - started)
    finally:
        await conn.close()
    return kept


async def prepare(dsn: str) -> None:
    """Today's schema, the scratch forms, and stock enough for every order."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, SHARDS)
        await conn.execute(_SCRATCH_SQL)
    finally:
        await conn.close()
    store = await StockStore.connect(dsn, shard_count=SHARDS, pool_size=2, timeout=30)
    try:
        for sku in SKUS:
            await store.adjust(AdjustCommand(sku, None, 10**12, "restock", f"bench-{sku}", "bench"))
    finally:
        await store.close()


def report(size: int, rounds: int, kept: dict[str, tuple[list[float], list[float]]]) -> str:
    """One table: per form, build and call time in microseconds and the ratio to arrays."""
    base = statistics.mean(kept["arrays"][1])
    lines = [f"batches of {size} orders, {rounds} rounds (first tenth not kept)"]
    lines.append(
        f"  {'form':<10} {'build us':>9} {'call mean us':>13} {'median us':>10} {'ratio':>6}"
    )
    for name, (build, call) in kept.items():
        lines.append(
            f"  {name:<10} {statistics.mean(build) * 1e6:9.1f} {statistics.mean(call) * 1e6:13.1f}"
            f" {statistics.median(call) * 1e6:10.1f} {statistics.mean(call) / base:6.3f}"
        )
    return "\n".join(lines)


async def measure(dsn: str, rounds: int, sizes: Sequence[int]) -> str:
    """Prepare the database and compare the forms for each batch size."""
    await prepare(dsn)
    return "\n".join([report(size, rounds, await compare(dsn, rounds, size)) for size in sizes])


def run(rounds: int, sizes: Sequence[int]) -> str:
    """Start a scratch PostgreSQL, measure, stop it."""
    with tempfile.TemporaryDirectory(prefix="argforms-") as folder:
        Path(folder).chmod(0o755)  # PostgreSQL runs as its own user when we are root
        pg = LocalPostgres(Path(folder) / "pg", free_port())
        pg.start()
        try:
            return asyncio.run(measure(pg.dsn, rounds, sizes))
        finally:
            pg.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1500, help="batches of each form")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8], help="orders a batch")
    args = parser.parse_args(argv)
    if args.rounds < 10 or min(args.batch) < 1:
        parser.error("--rounds must be at least 10 and --batch at least 1")
    print(run(args.rounds, args.batch))


if __name__ == "__main__":
    main()
