"""The reconciler over the real stack: the simulated provider as a real HTTP server, the
webhook receiver, the server over TLS, PostgreSQL. Each step is run by the test (the
program's loop runs the same step); the feed is posted in the ledger once whatever
happens, every charge is stated, and the invariants hold after each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from clients.credentials import Credentials
from clients.orders import OrderClient
from payments.reconciler.config import ReconcilerSettings
from payments.reconciler.feed import FeedError, FeedPage, SettlementFeed
from payments.reconciler.matching import Resolved
from payments.reconciler.metrics import REGISTRY as RECONCILER_METRICS
from payments.reconciler.reconciliation import Reconciler
from payments.reconciler.service import opened
from server.app import App
from server.config import Settings
from server.domain.reconciliation import Resolution
from tests.e2e.payments_stack import (
    Provider,
)
from tests.e2e.test_payment_webhooks import (
    PAID,
    PAYER,
    PRICE,
    invariants_hold,
    new_order,
    order_of,
    rows,
    wait_recorded,
    wait_status,
)
from tests.e2e.test_refunds import cancel, paid_order, running_sender, sender_settings, settled
from tests.waiting import until

# A fact waits this long for the other side in these tests: above a second, since the
# provider's times are whole seconds.
GRACE_S = 1.5
LATE_S = 3.0


def reconciler_settings(
    settings: Settings, app: App, provider: Provider, **changes: Any
) -> ReconcilerSettings:
    """The reconciler's settings against the test server, database and provider."""
    return ReconcilerSettings(
        pg_dsn=settings.pg_dsn,
        provider_url=provider.url,
        payments_target=f"127.0.0.1:{app.port}",
        grace_s=GRACE_S,
        log_json=False,
        **{"settle_deadline_s": 30.0, **changes},
    ).validate()


@pytest.fixture
async def reconciler(
    app: App,
    settings: Settings,
    provider: Provider,
    payer: Credentials,
) -> AsyncIterator[Reconciler]:
    """A reconciler that recovers lost webhooks with the receiver's token."""
    async with opened(reconciler_settings(settings, app, provider), payer) as started:
        yield started


async def statements(dsn: str) -> list[dict[str, Any]]:
    """Every statement line with its exception, oldest first."""
    return await rows(
        dsn,
        "SELECT s.*, e.exception_id, e.reason, e.resolution FROM"
        " stockcore.reconciliation_statements s LEFT JOIN stockcore.reconciliation_exceptions e"
        " USING (statement_id) ORDER BY s.statement_id",
    )


async def transfers(dsn: str, *kinds: int) -> list[tuple[int, str | None, int]]:
    """(kind, order, amount) of the transfers of some kinds, by kind and amount."""
    found = await rows(
        dsn,
        "SELECT kind, order_id, amount_minor FROM stockcore.ledger_transfers"
        " WHERE kind = ANY($1) ORDER BY kind, amount_minor, order_id",
        list(kinds),
    )
    return [(r["kind"], r["order_id"], r["amount_minor"]) for r in found]


def fee(amount: int) -> int:
    """The provider's fee of a charge, at its default terms."""
    return 30 + (amount * 290 + 5_000) // 10_000


async def test_a_paid_charge_is_posted_and_matched(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    order = await new_order(app, "rc-matched")
    charge = await provider.charge(order.order_id, PRICE, key="rc-matched")
    await wait_status(app, order.order_id, PAID)

    done = await reconciler.step()

    assert (done.posted, done.recovered, done.stated) == (2, 0, 1)
    assert await transfers(dsn, 4, 6) == [
        (4, order.order_id, PRICE),
        (6, order.order_id, fee(PRICE)),
    ]
    [line] = await statements(dsn)
    assert (line["subject_id"], line["verdict"], line["exception_id"]) == (charge["id"], 1, None)
    assert (line["ours_amount"], line["theirs_amount"]) == (PRICE, PRICE)
    assert line["lag_s"] >= 0
    # Nothing new: nothing posted or stated again.
    assert await reconciler.step() == type(done)(0, 0, 0)
    await invariants_hold(dsn)


async def test_a_charge_whose_webhook_never_came_pays_its_order_from_the_feed(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    await provider.faults(confirmation_lost_rate=1)
    order = await new_order(app, "rc-lost")
    charge = await provider.charge(order.order_id, PRICE, key="rc-lost")
    assert [f["object_id"] for f in await provider.injected("confirmation_lost")] == [charge["id"]]
    # Within the grace period the webhook may still come: nothing is decided.
    assert (await reconciler.step()).recovered == 0
    await asyncio.sleep(GRACE_S + 0.1)

    done = await reconciler.step()

    assert (done.recovered, done.stated) == (1, 1)
    paid, history = await order_of(app, order.order_id)
    assert (paid.status, paid.payment_id) == (PAID, charge["id"])
    assert [(c.to_status, c.caller) for c in history][-1] == (PAID, PAYER)
    event = await wait_recorded(dsn, charge["id"])
    assert event["event_id"].startswith("feed:") and event["outcome"] == 1
    [line] = await statements(dsn)
    assert (line["verdict"], line["recovered"], line["exception_id"]) == (1, True, None)
    await invariants_hold(dsn)


async def test_a_charge_of_another_amount_is_a_discrepancy_resolved_once(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    await provider.faults(amount_mismatch_rate=1)
    order = await new_order(app, "rc-amount")
    charge = await provider.charge(order.order_id, PRICE, key="rc-amount")
    await wait_recorded(dsn, charge["id"])

    await reconciler.step()

    [line] = await statements(dsn)
    assert (line["subject_id"], line["verdict"], line["reason"]) == (charge["id"], 4, 4)
    assert (line["ours_amount"], line["theirs_amount"]) == (PRICE, PRICE + 1)
    # The charge paid nothing: its money is to return, and its refund is owed there.
    assert await transfers(dsn, 3, 4) == [
        (3, order.order_id, PRICE + 1),
        (4, order.order_id, PRICE + 1),
    ]
    resolve = reconciler.store.resolve
    assert await resolve(line["exception_id"], Resolution.REFUNDED, "", "why") is Resolved.REFUSED
    assert await resolve(line["exception_id"], Resolution.REFUNDED, "ops", "refunded") is (
        Resolved.RESOLVED
    )
    assert await resolve(line["exception_id"], Resolution.ACCEPTED, "ops", "again") is (
        Resolved.ALREADY_RESOLVED
    )
    assert await resolve(10**9, Resolution.ACCEPTED, "ops", "none") is Resolved.UNKNOWN
    [line] = await statements(dsn)
    assert line["resolution"] == Resolution.REFUNDED
    # Resolved by a person, it is not looked at again.
    assert (await reconciler.step()).stated == 0
    await invariants_hold(dsn)


def sample(name: str, **labels: str) -> float:
    """A sample of the reconciler's metrics (0 when it has none)."""
    return RECONCILER_METRICS.get_sample_value(name, labels) or 0.0


async def test_the_metrics_count_each_line_the_open_exceptions_and_the_ledger(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    lines = "stockcore_reconciliation_statement_lag_seconds_count"
    before = sample(lines, kind="charge", verdict="amount_differs")
    await provider.faults(amount_mismatch_rate=1)
    order = await new_order(app, "rc-metrics")
    charge = await provider.charge(order.order_id, PRICE, key="rc-metrics")
    await wait_recorded(dsn, charge["id"])

    await reconciler.step()
    await reconciler.count_open_exceptions()
    assert await reconciler.check_ledger() == {"EUR": 0}

    assert sample(lines, kind="charge", verdict="amount_differs") == before + 1
    assert sample("stockcore_reconciliation_open_exceptions", reason="amount_differs") == 1
    assert sample("stockcore_reconciliation_open_exceptions", reason="missing_here") == 0
    assert sample("stockcore_ledger_imbalance_minor", currency="EUR") == 0


async def test_a_second_charge_of_an_order_is_duplicated_and_the_order_paid_once(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    order = await new_order(app, "rc-twice")
    first = await provider.charge(order.order_id, PRICE, key="rc-twice-1")
    await wait_status(app, order.order_id, PAID)
    second = await provider.charge(order.order_id, PRICE, key="rc-twice-2")
    await wait_recorded(dsn, second["id"])

    await reconciler.step()

    verdicts = {line["subject_id"]: line["verdict"] for line in await statements(dsn)}
    assert verdicts == {first["id"]: 1, second["id"]: 6}
    assert await transfers(dsn, 1, 4) == [
        (1, order.order_id, PRICE),
        (4, order.order_id, PRICE),
        (4, order.order_id, PRICE),
    ]
    await invariants_hold(dsn)


async def test_a_charge_whose_fee_settles_late_is_missing_then_settled_late(
    app: App,
    settings: Settings,
    provider: Provider,
    payer: Credentials,
    dsn: str,
) -> None:
    # Every other transaction late, from the first: the charge in time, its fee late.
    await provider.faults(settlement_late_rate=0.5, settlement_late_s=LATE_S)
    order = await new_order(app, "rc-late-fee")
    charge = await provider.charge(order.order_id, PRICE, key="rc-late-fee")
    await wait_status(app, order.order_id, PAID)
    feed, _ = await provider.feed()
    [late] = await provider.injected("settlement_late")
    assert [t["type"] for t in feed] == ["charge"] and late["object_id"] != feed[0]["id"]
    config = reconciler_settings(settings, app, provider, settle_deadline_s=LATE_S - 1)
    async with opened(config, payer) as reconciler:
        # The charge is read, its fee not yet: within the grace period nothing is said.
        assert (await reconciler.step()).stated == 0
        await asyncio.sleep(GRACE_S + 0.1)
        await reconciler.step()
        [missing] = await statements(dsn)
        assert (missing["subject_id"], missing["verdict"], missing["reason"]) == (
            charge["id"],
            2,
            2,
        )
        assert (missing["ours_amount"], missing["theirs_amount"]) == (PRICE, PRICE)
        await invariants_hold(dsn)

        async def fee_stated() -> bool:
            await reconciler.step()
            return len(await statements(dsn)) == 2

        await until(fee_stated, "the late fee stated", 10)

    first, late_line = await statements(dsn)
    assert (late_line["subject_id"], late_line["verdict"], late_line["reason"]) == (
        charge["id"],
        7,
        7,
    )
    assert late_line["corrects"] == first["statement_id"] and late_line["resolution"] is None
    assert first["resolution"] == Resolution.CORRECTED
    assert await transfers(dsn, 6) == [(6, order.order_id, fee(PRICE))]
    await invariants_hold(dsn)


async def test_a_refund_the_provider_fails_after_a_match_is_refund_failed_and_owed(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    order, _ = await paid_order(app, provider, "rc-refund-fails")
    # The failure comes LATE_S after the refund: the refund is read and matched first.
    await provider.faults(refund_fail_rate=1, refund_late_rate=1, refund_late_s=LATE_S)
    await cancel(app, order.order_id)
    async with running_sender(sender_settings(dsn, provider)):
        sent = await settled(dsn, order.order_id, 2)
        await reconciler.step()
        refund_id = sent["provider_refund_id"]
        [matched] = [line for line in await statements(dsn) if line["subject_id"] == refund_id]
        assert (matched["verdict"], matched["exception_id"]) == (1, None)
        await invariants_hold(dsn)
        await settled(dsn, order.order_id, 4)

    async def failure_stated() -> bool:
        await reconciler.step()
        return any(line["verdict"] == 8 for line in await statements(dsn))

    await until(failure_stated, "the failed refund stated", 10)

    refund_lines = [line for line in await statements(dsn) if line["subject_id"] == refund_id]
    assert [(line["verdict"], line["reason"]) for line in refund_lines] == [(1, None), (8, 8)]
    failed = refund_lines[-1]
    assert (failed["subject_kind"], failed["order_id"], failed["corrects"]) == (
        2,
        order.order_id,
        matched["statement_id"],
    )
    assert (failed["ours_amount"], failed["theirs_amount"]) == (PRICE, PRICE)
    assert failed["resolution"] is None
    # The provider gave the money back to its balance: posted, and still owed.
    assert await transfers(dsn, 5, 8) == [
        (5, order.order_id, PRICE),
        (8, order.order_id, PRICE),
    ]
    await invariants_hold(dsn)
    # Nothing new: stated once. Finance refunds it by hand and resolves it.
    assert (await reconciler.step()).stated == 0
    resolved = await reconciler.store.resolve(
        failed["exception_id"], Resolution.REFUNDED, "finance", "refunded by bank transfer"
    )
    assert resolved is Resolved.RESOLVED
    assert (await reconciler.step()).stated == 0
    await invariants_hold(dsn)


async def test_a_payment_the_feed_lacks_is_missing_then_corrected_when_it_settles(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    await provider.faults(settlement_late_rate=1, settlement_late_s=LATE_S)
    order = await new_order(app, "rc-late")
    charge = await provider.charge(order.order_id, PRICE, key="rc-late")
    await wait_status(app, order.order_id, PAID)
    await asyncio.sleep(GRACE_S + 0.1)

    await reconciler.step()
    [missing] = await statements(dsn)
    assert (missing["verdict"], missing["theirs_amount"], missing["reason"]) == (2, None, 2)
    await invariants_hold(dsn)

    async def corrected_once() -> bool:
        await reconciler.step()
        return len(await statements(dsn)) == 2

    await until(corrected_once, "the late settlement stated", 10)

    first, corrected = await statements(dsn)
    assert (corrected["subject_id"], corrected["verdict"]) == (charge["id"], 1)
    assert corrected["corrects"] == first["statement_id"]
    assert first["resolution"] == Resolution.CORRECTED
    assert corrected["lag_s"] >= LATE_S - 1
    await invariants_hold(dsn)


@dataclass
class FailingFeed(SettlementFeed):
    """The provider's feed, failing after `pages` pages, as a crash mid-feed would stop."""

    pages: int = 1

    async def page(self, after: int, limit: int) -> FeedPage:
        if self.pages == 0:
            raise FeedError("gone")
        self.pages -= 1
        return await super().page(after, limit)


async def test_a_reconciler_stopped_mid_feed_resumes_without_posting_twice(
    app: App,
    settings: Settings,
    provider: Provider,
    payer: Credentials,
    dsn: str,
) -> None:
    paid = []
    for n in range(3):
        order = await new_order(app, f"rc-resume-{n}")
        await provider.charge(order.order_id, PRICE, key=f"rc-resume-{n}")
        paid.append(order.order_id)
    for order_id in paid:
        await wait_status(app, order_id, PAID)
    config = reconciler_settings(settings, app, provider, page_size=2)
    async with opened(config, payer) as stopped:
        stopped.feed = FailingFeed(stopped.feed.base_url, stopped.feed.http, pages=1)
        with pytest.raises(FeedError):
            await stopped.step()
        assert await stopped.store.cursor() == 2
        # A page recorded again after the cursor moved (a second reader, a retry) is
        # refused whole.
        again = await stopped.store.record_page(0, await provider_page(stopped, 0), {})
        assert (again.moved, again.cursor, again.posted) == (False, 2, 0)

    async with opened(config, payer) as resumed:
        done = await resumed.step()

    assert (done.posted, done.stated) == (4, 3)
    assert len(await transfers(dsn, 4)) == 3 and len(await transfers(dsn, 6)) == 3
    assert [
        r["cursor"] for r in await rows(dsn, "SELECT cursor FROM stockcore.settlement_cursor")
    ] == [6]
    await invariants_hold(dsn)


async def provider_page(reconciler: Reconciler, after: int) -> FeedPage:
    """A page of the provider's feed, read with the reconciler's own reader."""
    return await SettlementFeed(reconciler.feed.base_url, reconciler.feed.http).page(after, 2)


async def test_the_program_reconciles_until_stopped(
    app: App,
    settings: Settings,
    provider: Provider,
    payer: Credentials,
    dsn: str,
) -> None:
    order = await new_order(app, "rc-program")
    await provider.charge(order.order_id, PRICE, key="rc-program")
    await wait_status(app, order.order_id, PAID)
    stopping = asyncio.Event()
    passes = sample("stockcore_reconciliation_passes_total", outcome="ok")
    checks = sample("stockcore_ledger_checks_total", outcome="ok")
    async with opened(reconciler_settings(settings, app, provider), payer) as started:
        running = asyncio.create_task(started.run(stopping, 0.05))
        try:
            for _ in range(100):
                if await statements(dsn):
                    break
                await asyncio.sleep(0.05)
        finally:
            stopping.set()
            await running
    assert [line["verdict"] for line in await statements(dsn)] == [1]
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        assert (await orders.get_order(order.order_id))[0].status == PAID
    # Each pass counted and timed; the ledger checked once at the start, its period apart.
    assert sample("stockcore_reconciliation_passes_total", outcome="ok") > passes
    last = sample("stockcore_reconciliation_last_pass_timestamp_seconds")
    assert 0 <= time.time() - last < 10
    assert sample("stockcore_ledger_checks_total", outcome="ok") == checks + 1
    await invariants_hold(dsn)
