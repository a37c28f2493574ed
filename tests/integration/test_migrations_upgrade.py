"""A database made before the live SQL existed upgrades to it: one made by migrations
001-012 as migrate() applied them then, holding stock, holds in every status, orders in
every status, payments, events (sequenced, published and not), fulfilments, and a
caller's adjustment under the key a cancel of a paid order used to take, is migrated by
today's migrate(). Its data is untouched but for what a later migration changes on
purpose (014: a cancel's adjustments become the order's own rows; 015: reservations get
a customer, none for these; 022: orders get their lines' refunded units, none for
these), its functions are a fresh database's, every invariant holds, and the stock,
order, refund and outbox functions work on old rows and new."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from server.domain.inventory import AdjustCommand, Finish, Line, ReserveCommand
from server.domain.orders import (
    Actor,
    OrderStatus,
    cancel_order,
    carrier_report,
    confirm_payment,
    create_order,
    refund_line,
    ship_order,
)
from server.domain.sharding import shard_of
from server.storage.migrations import checksum, live_files, migrate, migration_files
from server.storage.migrations import sync_transitions as copy_status_machine
from server.storage.orders_pg import ChangeCode, CreateCode, LineRefundCode, OrderStore
from server.storage.outbox_pg import OutboxSession
from server.storage.postgres import AdjustCode, FinishCode, ReserveCode, StockStore
from tests.support import connected

SHARD_COUNT = 4
HOUR_MS = 3_600_000
# The numbered migrations databases were made by before the live SQL. A committed
# migration is never edited (databases made by it exist); these hold them to that.
BEFORE_LIVE_SQL = {
    "001_inventory.sql": "07a87b12111dc42a860e4c803cb00bf58c307e0691316245776a03c4fe70f1d9",
    "002_orders.sql": "61354dbaa13bd092b9c7aebe4cff6fa8a892a24e29f9f23c7a6f4835301a2b6c",
    "003_checkout.sql": "e3ac9eb5a6a535df9a3111afeeb03a4b4f69ab2147febc8acaf12ee97edac8e2",
    "004_hot_rows.sql": "72ccfa7c23b4c79529bae732d44f9165f88767772f6bbc20f9ab06a4f4002f6b",
    "005_outbox_watermark.sql": "9e8e0831c388c8b0a34b185fc7af26e0307c250dd5a7cecd7cd6a15f9b86d8f1",
    "006_invariants.sql": "c0e38e0ae31950b108f656c10c4990af4ce61f899079425424cf771def10b521",
    "007_no_jit.sql": "b246811e0b5c117a06b8c6a6d8be2137d416706d47fcdf2487b86b1bb6f96d9e",
    "008_compact_events.sql": "c34ee878209fce8e49ceef73f94f8274ae4d8dbd76f54954b573492f478e6d85",
    "009_outbox_rewind.sql": "64eecb2b97bfc39a4f1e14d3a47421d0157933302e609e8526f98ff25b7f8cea",
    "010_customer_cancel.sql": "729ea883666f24a9361b32caba162e119e7503cae8ce79b784c08b71df45762b",
    "011_fulfilment.sql": "1855f1ddb141e9867fc95123ee695eef5c32942be6db292aad91d5c5bda46c92",
    "012_unscanned_index.sql": "6eed4878c736dd9c8efd58e52e29c6a280b32da208b1de77723dbcf1c793ec5a",
}
ACTOR = Actor("tests", "after-upgrade")
LIMITS = {"default_ttl_s": 3600.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}
EXPIRY = "stockcore-expiry"


async def migrate_before_live_sql(conn: asyncpg.Connection) -> None:
    """What migrate() did before the live SQL: migrations 001-012 once each, then the stock
    shards and the status machine."""
    await conn.execute(
        "CREATE SCHEMA IF NOT EXISTS stockcore;"
        "CREATE TABLE IF NOT EXISTS stockcore.schema_migrations ("
        " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, sql in migration_files():
        if name not in BEFORE_LIVE_SQL:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO stockcore.schema_migrations (version, name) VALUES ($1, $2)",
                version,
                name,
            )
    await conn.execute("SELECT stockcore.ensure_stock_shards($1)", SHARD_COUNT)
    await copy_status_machine(conn)


# The data is written as the server of that time wrote it: through the functions 001-012
# made, with their arguments of that time, which later versions may change.


def _shard(sku: str) -> int:
    return shard_of(sku, SHARD_COUNT)


async def _one(conn: asyncpg.Connection, sql: str, *args: object) -> asyncpg.Record:
    row = await conn.fetchrow(sql, *args)
    assert row is not None
    return row


async def put_stock(conn: asyncpg.Connection, sku: str, units: int, key: str = "") -> None:
    row = await _one(
        conn,
        "SELECT * FROM stockcore.adjust($1, $2, $3, $4, $5, NULL, 'initial', 'before')",
        key or f"init-{sku}",
        sku.encode(),
        _shard(sku),
        sku,
        units,
    )
    assert row["code"] == 0


async def hold(conn: asyncpg.Connection, rid: str, sku: str, units: int, ttl_ms: int) -> None:
    row = await _one(
        conn,
        "SELECT * FROM stockcore.hold_stock($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [rid],
        [rid.encode()],
        [ttl_ms],
        ["before"],
        [1],
        [1],
        [_shard(sku)],
        [sku],
        [units],
    )
    assert [r["code"] for r in row["results"]] == [0]


async def finish(conn: asyncpg.Connection, rid: str, target: int) -> None:
    row = await _one(
        conn, "SELECT * FROM stockcore.finish_holds($1, $2, $3)", [rid], target, ["before"]
    )
    assert [r["code"] for r in row["results"]] == [0]


async def order(
    conn: asyncpg.Connection, oid: str, sku: str, customer: str = "c-1", ttl_ms: int = HOUR_MS
) -> None:
    """An order of 2 units of `sku` at 150 EUR cents each."""
    row = await _one(
        conn,
        "SELECT * FROM stockcore.create_orders("
        "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        [oid],
        [oid.encode()],
        [ttl_ms],
        ["before"],
        [1],
        [1],
        [_shard(sku)],
        [sku],
        [2],
        [150],
        [customer],
        ["EUR"],
        [300],
        [f"order-{oid}".encode()],
        [f"req-{oid}"],
    )
    assert [r["code"] for r in row["results"]] == [0]


async def pay(conn: asyncpg.Connection, oid: str) -> None:
    row = await _one(
        conn,
        "SELECT * FROM stockcore.pay_orders($1, $2, $3, $4, $5, $6, $7, $8)",
        [oid],
        [f"pay-{oid}"],
        [300],
        ["EUR"],
        ["before"],
        [f"pay-{oid}"],
        ["payment confirmed"],
        EXPIRY,
    )
    assert [r["code"] for r in row["results"]] == [0]


async def advance(conn: asyncpg.Connection, oid: str, target: OrderStatus) -> None:
    shipping = target is OrderStatus.SHIPPED
    row = await _one(
        conn,
        "SELECT * FROM stockcore.advance_orders($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        int(target),
        [oid],
        ["dhl" if shipping else None],
        [f"T-{oid}" if shipping else None],
        [f"ack-{oid}" if shipping else None],
        [None if shipping else datetime.now(UTC)],
        ["before"],
        [f"{target.name}-{oid}"],
        [target.name.lower()],
    )
    assert [r["code"] for r in row["results"]] == [0]


async def cancel(conn: asyncpg.Connection, oid: str, customer: str | None = None) -> None:
    row = await _one(
        conn,
        "SELECT * FROM stockcore.cancel_orders_as($1, $2, $3, $4, $5, $6)",
        [oid],
        ["changed my mind"],
        ["before"],
        [f"cancel-{oid}"],
        [customer],
        EXPIRY,
    )
    assert [r["code"] for r in row["results"]] == [0]


async def fill(conn: asyncpg.Connection) -> None:
    """Stock, holds and orders through every status, payments, events and fulfilments."""
    for sku, units in (("A", 100), ("B", 100), ("C", 10)):
        await put_stock(conn, sku, units)
    await hold(conn, "r-held", "A", 3, HOUR_MS)
    for rid in ("r-committed", "r-released"):
        await hold(conn, rid, "B", 2, HOUR_MS)
    await finish(conn, "r-committed", 2)
    await finish(conn, "r-released", 3)
    await hold(conn, "r-expired", "C", 1, 1)
    await order(conn, "o-expired", "C", ttl_ms=1)
    for oid in ("o-pending", "o-pending-2", "o-unpaid-cancelled", "o-shopper-cancelled"):
        await order(conn, oid, "A", customer="c-2" if "shopper" in oid else "c-1")
    for oid in ("o-paid", "o-shipped", "o-in-transit", "o-delivered", "o-refunded"):
        await order(conn, oid, "B")
        await pay(conn, oid)
    # A caller's adjustment under the key a cancel of o-paid would have taken (and failed
    # on, for good, before 014).
    await put_stock(conn, "B", 1, key="order-cancel:o-paid:B")
    for oid in ("o-shipped", "o-in-transit", "o-delivered"):
        await advance(conn, oid, OrderStatus.SHIPPED)
    for oid in ("o-in-transit", "o-delivered"):
        await advance(conn, oid, OrderStatus.IN_TRANSIT)
    await advance(conn, "o-delivered", OrderStatus.DELIVERED)
    await cancel(conn, "o-unpaid-cancelled")
    await cancel(conn, "o-refunded")
    await cancel(conn, "o-shopper-cancelled", customer="c-2")
    await asyncio.sleep(0.05)
    swept = await _one(conn, "SELECT * FROM stockcore.expire_due(100, $1, 'sweep')", EXPIRY)
    assert (swept["holds_expired"], swept["orders_expired"]) == (2, 1)

    # Every event so far sequenced, most published; then one more, not yet sequenced.
    sequenced = await conn.fetch("SELECT * FROM stockcore.relay_step(1000, 0)")
    await conn.execute("SELECT stockcore.record_published($1)", len(sequenced) - 3)
    await order(conn, "o-after-relay", "A")

    for oid in ("o-paid", "o-refunded"):
        paid = await conn.fetchval(
            "SELECT stockcore.fulfilment_paid($1, 'c-1', '{B}', '{2}', now(), 'w-1')", oid
        )
        assert paid
    assert await conn.fetchval("SELECT stockcore.fulfilment_cancelled('o-refunded', 'c-1', 'w-1')")
    assert len(await conn.fetch("SELECT * FROM stockcore.claim_fulfilments('w-1', 10, 60)")) == 2


ADJUSTMENTS = "stockcore.adjustments"
# A digest of every column of the adjustments but those 014 sets: who made each.
_ADJUSTMENTS_BUT_ORIGIN = (
    "SELECT md5(string_agg(concat_ws('|', encode(fingerprint, 'hex'), sku, applied_delta,"
    " on_hand_after, reserved_after, caller, created_at), ',' ORDER BY sku, applied_delta,"
    " created_at)) FROM stockcore.adjustments"
)
RESERVATIONS = "stockcore.reservations"
RESERVATION_CHANGES = "stockcore.reservation_changes"
# A digest of every column of the reservations but the one 015 adds: whose cart each is.
_RESERVATIONS_BUT_CUSTOMER = (
    "SELECT md5(string_agg(concat_ws('|', reservation_id, status, shards, skus, quantities,"
    " encode(fingerprint, 'hex'), caller, created_at, expires_at, finished_at), ','"
    " ORDER BY reservation_id)) FROM stockcore.reservations"
)
ORDERS = "stockcore.orders"
# A digest of every column of the orders but the one 022 adds: the lines' refunded units.
_ORDERS_BUT_REFUNDED = (
    "SELECT md5(string_agg(concat_ws('|', order_id, customer_id, status, path, version,"
    " currency, skus, quantities, unit_prices, total_minor, encode(fingerprint, 'hex'),"
    " created_at, payment_deadline, updated_at, payment_id, paid_minor, carrier, tracking_no,"
    " carrier_ack_id, shipped_at, in_transit_at, delivered_at, last_sync_at, refund_owed_minor,"
    " cancel_reason), ',' ORDER BY order_id)) FROM stockcore.orders"
)
PAYMENT_EVENTS = "stockcore.payment_events"
PAYMENTS_TO_RETURN = "stockcore.payments_to_return"
# Tables whose rows a later migration changes on purpose, or that it makes, compared apart.
LEDGER = ("stockcore.ledger_accounts", "stockcore.ledger_kinds", "stockcore.ledger_transfers")
RECONCILIATION = (
    "stockcore.settlement_cursor", "stockcore.settlement_transactions",
    "stockcore.reconciliation_statements", "stockcore.reconciliation_exceptions",
)  # fmt: skip
REFUNDS = "stockcore.refunds"
CLOSES = ("stockcore.daily_closes", "stockcore.daily_close_items")
_CHANGED = (
    ADJUSTMENTS, RESERVATIONS, RESERVATION_CHANGES, PAYMENT_EVENTS, PAYMENTS_TO_RETURN, *LEDGER,
    *RECONCILIATION, REFUNDS, *CLOSES, ORDERS,
)  # fmt: skip


async def adjustments(conn: asyncpg.Connection) -> list[tuple[str | None, str | None, str, int]]:
    """(idempotency key, order id, SKU, units) of every adjustment, keyed ones by key."""
    rows = await conn.fetch(
        "SELECT idempotency_key, order_id, sku, applied_delta FROM stockcore.adjustments"
        " ORDER BY idempotency_key NULLS FIRST, order_id, sku"
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def violations(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in await conn.fetch("SELECT * FROM stockcore.invariant_violations()")]


async def contents(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Every table's row count and a digest of its rows, but the migrator's records."""
    tables = await conn.fetch(
        "SELECT c.oid::regclass::text AS name FROM pg_class c"
        " WHERE c.relnamespace = 'stockcore'::regnamespace AND c.relkind IN ('r', 'p')"
        " AND NOT c.relispartition AND c.relname NOT IN ('schema_live_sql', 'schema_migrations')"
        " ORDER BY 1"
    )
    found = {}
    for t in tables:
        row = await _one(
            conn,
            f"SELECT count(*) AS n, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
            f" AS digest FROM {t['name']} x",
        )
        found[t["name"]] = (row["n"], row["digest"])
    return found


async def functions(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    """Each function of the schema as it is defined, and each trigger."""
    rows = await conn.fetch(
        "SELECT p.oid::regprocedure::text, p.prosrc, p.proconfig, p.provolatile, p.proretset,"
        " p.prorettype::regtype::text, p.proargnames, p.proargmodes, l.lanname"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.pronamespace = 'stockcore'::regnamespace ORDER BY 1"
    )
    triggers = await conn.fetch(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
        " AND tgrelid::regclass::text LIKE 'stockcore.%' ORDER BY 1"
    )
    return sorted(tuple(r) for r in rows) + sorted(tuple(r) for r in triggers)


@pytest.fixture
async def made_before_live_sql(conn: asyncpg.Connection) -> asyncpg.Connection:
    """The scratch database as migrations 001-012 left it, with data."""
    assert {
        name: checksum(sql) for _, name, sql in migration_files() if name in BEFORE_LIVE_SQL
    } == BEFORE_LIVE_SQL, "a committed numbered migration was edited"
    await migrate_before_live_sql(conn)
    await fill(conn)
    assert await violations(conn) == []
    return conn


@pytest.fixture
async def upgraded_stores(
    made_before_live_sql: asyncpg.Connection, scratch_dsn: str
) -> AsyncIterator[tuple[StockStore, OrderStore]]:
    """Today's stores on the database once migrated."""
    await migrate(made_before_live_sql, SHARD_COUNT)
    store = await StockStore.connect(scratch_dsn, shard_count=SHARD_COUNT, pool_size=2, timeout=10)
    try:
        yield store, OrderStore(store)
    finally:
        await store.close()


async def test_migrate_takes_the_live_sql_and_leaves_the_data_as_it_was(
    made_before_live_sql: asyncpg.Connection, migrated: str
) -> None:
    conn = made_before_live_sql
    before = await contents(conn)
    adjustments_but_origin = await conn.fetchval(_ADJUSTMENTS_BUT_ORIGIN)
    reservations_but_customer = await conn.fetchval(_RESERVATIONS_BUT_CUSTOMER)
    orders_but_refunded = await conn.fetchval(_ORDERS_BUT_REFUNDED)

    applied = await migrate(conn, SHARD_COUNT)

    since = [name for _, name, _ in migration_files() if name not in BEFORE_LIVE_SQL]
    assert applied == since + [name for name, _ in live_files()]
    recorded = await conn.fetch("SELECT name FROM stockcore.schema_migrations ORDER BY version")
    assert [r["name"] for r in recorded] == [name for _, name, _ in migration_files()]
    after = await contents(conn)
    assert {t: c for t, c in after.items() if t not in _CHANGED} == {
        t: c for t, c in before.items() if t not in _CHANGED
    }
    # 015: the reservations made before hold no customer (NULL), and no change was made yet.
    assert await conn.fetchval(_RESERVATIONS_BUT_CUSTOMER) == reservations_but_customer
    assert after[RESERVATIONS][0] == before[RESERVATIONS][0]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM stockcore.reservations WHERE customer_id IS NOT NULL"
        )
        == 0
    )
    assert after[RESERVATION_CHANGES][0] == 0 and RESERVATION_CHANGES not in before
    # 016: the payment provider's events and the money to return start empty.
    assert {t: after[t][0] for t in (PAYMENT_EVENTS, PAYMENTS_TO_RETURN)} == {
        PAYMENT_EVENTS: 0,
        PAYMENTS_TO_RETURN: 0,
    }
    assert PAYMENT_EVENTS not in before and PAYMENTS_TO_RETURN not in before
    # 017: the money ledger starts with what the orders already paid and owe back (the
    # invariants below check each transfer against its order).
    assert not set(LEDGER) & set(before)
    posted = await conn.fetch(
        "SELECT kind, count(*) AS n FROM stockcore.ledger_transfers GROUP BY kind ORDER BY kind"
    )
    paid, owed = [
        await conn.fetchval(f"SELECT count(*) FROM stockcore.orders WHERE {where}")
        for where in ("payment_id IS NOT NULL AND paid_minor > 0", "refund_owed_minor > 0")
    ]
    assert [(r["kind"], r["n"]) for r in posted] == [(1, paid), (2, owed)] and owed > 0
    # 018: the reconciler starts at the feed's beginning, with nothing read or stated, and
    # the ledger knows a failed refund's kind.
    assert not set(RECONCILIATION) & set(before)
    assert {t: after[t][0] for t in RECONCILIATION} == dict.fromkeys(RECONCILIATION, 0) | {
        "stockcore.settlement_cursor": 1
    }
    assert await conn.fetchval("SELECT cursor FROM stockcore.settlement_cursor") == 0
    assert await conn.fetchval("SELECT name FROM stockcore.ledger_kinds WHERE kind = 8") == (
        "PROVIDER_REFUND_FAILED"
    )
    # 019: every refund owed is a refund to make, due now (the invariants check each
    # against its order).
    assert REFUNDS not in before
    assert await conn.fetch(
        "SELECT reason, state, count(*) AS n FROM stockcore.refunds GROUP BY 1, 2"
    ) == [(1, 1, owed)]
    # 020: no day is closed yet; the reconciler closes the past days from the first.
    assert not set(CLOSES) & set(before)
    assert {t: after[t][0] for t in CLOSES} == dict.fromkeys(CLOSES, 0)
    # 022: no line of any order was refunded (no row rewritten), and the ledger knows a
    # line refund's kind.
    assert await conn.fetchval(_ORDERS_BUT_REFUNDED) == orders_but_refunded
    assert after[ORDERS][0] == before[ORDERS][0]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM stockcore.orders WHERE refunded_quantities IS NOT NULL"
        )
        == 0
    )
    assert await conn.fetchval("SELECT name FROM stockcore.ledger_kinds WHERE kind = 9") == (
        "LINE_REFUND_OWED"
    )
    # The cancel's row became o-refunded's own (no key); callers' rows kept their keys,
    # the one under a cancel's old key included; nothing else of any row changed.
    assert await adjustments(conn) == [
        (None, "o-refunded", "B", 2),
        ("init-A", None, "A", 100),
        ("init-B", None, "B", 100),
        ("init-C", None, "C", 10),
        ("order-cancel:o-paid:B", None, "B", 1),
    ]
    assert await conn.fetchval(_ADJUSTMENTS_BUT_ORIGIN) == adjustments_but_origin
    assert await violations(conn) == []
    async with connected(migrated) as fresh:
        assert await functions(conn) == await functions(fresh)
    assert await migrate(conn, SHARD_COUNT) == []


async def test_the_stock_and_order_functions_work_on_the_upgraded_database(
    made_before_live_sql: asyncpg.Connection,
    upgraded_stores: tuple[StockStore, OrderStore],
    scratch_dsn: str,
) -> None:
    stock, orders = upgraded_stores
    conn = made_before_live_sql

    (held,), _ = await stock.reserve_batch([ReserveCommand("r-new", (Line("A", 1),), HOUR_MS, "t")])
    committed, _ = await stock.finish_batch(["r-held", "r-new"], Finish.COMMIT, ["t", "t"])
    adjusted = await stock.adjust(AdjustCommand("C", 5, None, "restock", "after-upgrade", "t"))
    (created,), _ = await orders.create(
        [create_order("o-new", "c-1", [("A", 1, 150)], "EUR", None, ACTOR, **LIMITS)]
    )
    paid, _ = await orders.pay(
        [
            confirm_payment("o-pending", "pay-o-pending", 300, "EUR", ACTOR),
            confirm_payment("o-new", "pay-o-new", 150, "EUR", ACTOR),
        ],
        EXPIRY,
    )
    cancelled, _ = await orders.cancel(
        [
            cancel_order("o-pending-2", "changed my mind", ACTOR),
            cancel_order("o-paid", "changed my mind", ACTOR, customer_id="c-1"),
        ],
        EXPIRY,
    )
    # A service may: its units come back although a caller holds the key they once took.
    (refunded,), _ = await orders.cancel([cancel_order("o-paid", "refund", ACTOR)], EXPIRY)
    shipped = await orders.ship(
        [ship_order("o-new", "dhl", "T-new", "ack-new", ACTOR, carriers=["dhl"])]
    )
    # A line of an order delivered before the upgrade, one unit of two, refunded.
    (line_refunded,) = await orders.refund_lines(
        [refund_line("o-delivered", "B", 1, "arrived broken", "lr-after-upgrade", ACTOR)]
    )
    now = datetime.now(UTC)
    delivered = await orders.record_carrier(
        OrderStatus.DELIVERED, [carrier_report("o-in-transit", now, ACTOR, now=now)]
    )
    sweep = await stock.expire_due(100, EXPIRY, "sweep-after")
    outbox = await OutboxSession.open(scratch_dsn, timeout=10)
    try:
        backlog = await outbox.backlog()
        published_upto = await outbox.published_upto()
        pending = await outbox.next_events(1000, published_upto)
        await outbox.record_published(pending[-1].event.cursor)
        left = await outbox.backlog()
    finally:
        await outbox.close()

    assert held.code is ReserveCode.HELD
    assert [c.code for c in committed] == [FinishCode.APPLIED, FinishCode.APPLIED]
    assert adjusted.code is AdjustCode.APPLIED and adjusted.level.on_hand == 15
    assert created.code is CreateCode.CREATED
    assert [(c.code, c.order and c.order.status) for c in paid] == [
        (ChangeCode.DONE, OrderStatus.PAID),
        (ChangeCode.DONE, OrderStatus.PAID),
    ]
    # A service cancels the unpaid order; the customer may not cancel a paid one.
    assert [c.code for c in cancelled] == [ChangeCode.DONE, ChangeCode.PAID]
    assert refunded.code is ChangeCode.DONE
    assert await adjustments(conn) == [
        (None, "o-paid", "B", 2),
        (None, "o-refunded", "B", 2),
        ("after-upgrade", None, "C", 5),
        ("init-A", None, "A", 100),
        ("init-B", None, "B", 100),
        ("init-C", None, "C", 10),
        ("order-cancel:o-paid:B", None, "B", 1),
    ]
    assert [(c.code, c.order and c.order.status) for c in shipped] == [
        (ChangeCode.DONE, OrderStatus.SHIPPED)
    ]
    assert [(c.code, c.order and c.order.status) for c in delivered] == [
        (ChangeCode.DONE, OrderStatus.DELIVERED)
    ]
    assert line_refunded.code is LineRefundCode.REFUNDED and line_refunded.refund is not None
    assert line_refunded.refund.amount_minor == 150
    assert line_refunded.order is not None and line_refunded.order.line_refunds_minor == 150
    assert sweep.due == 0
    # Events written before the upgrade and after it are published in one sequence.
    assert backlog == len(pending) and left == 0
    cursors = [p.event.cursor for p in pending]
    assert cursors == list(range(published_upto + 1, published_upto + len(pending) + 1))
    assert {"o-after-relay", "o-new"} <= {p.event.order_id for p in pending}
    assert await violations(conn) == []
