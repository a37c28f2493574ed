"""The reconciler's work, one step after another (each step does all three, in this order):

1. **Follow the feed.** Read the settlement feed after the cursor kept in PostgreSQL, a
   page at a time, and record each page, post its ledger transfers and move the cursor in
   one transaction (stockcore.record_settlement_page), until it has nothing new. A crash
   before that commit reads the page again; after it, reads on: nothing is skipped, nothing
   posted twice (transfers are unique by the provider's transaction id as well).
2. **Recover lost webhooks.** A captured charge in the feed for which stockcore has
   neither a payment nor money to return, past the grace period, is decided as the webhook
   receiver decides a `charge.succeeded` event, by the same code (payments.receiver.decide:
   ConfirmPayment, idempotent on the charge id, so a webhook arriving after changes
   nothing), and recorded as an event `feed:<transaction id>`. Its order is paid, or the
   charge is money to return; a refusal (an unknown order) leaves it to its MISSING_HERE
   statement.
3. **State.** Compare both sides of every charge and refund still to be stated
   (payments/reconciler/matching.py decides) and write the new statement lines, their
   exceptions opened and the ones they correct closed (stockcore.record_statements).
4. **Close days.** Close each currency's provider balance of every UTC day that ended
   more than the close margin ago (stockcore.close_due_days): once, in order, each
   opening at the previous day's closing. A transfer of a closed day read after lands in
   the next open day.

The program's loop runs a step per pass, counts the open exceptions after it, and beside
the passes checks the ledger against its facts on a slower period (the metrics of
payments/reconciler/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from clients.orders import OrderClient
from payments.events import CHARGE_SUCCEEDED, ProviderEvent
from payments.receiver import Refused, decide
from payments.reconciler.feed import REFUND_TYPES, FeedError, SettlementFeed
from payments.reconciler.matching import Policy, charge_statement, refund_statement
from payments.reconciler.metrics import (
    LAST_PASS,
    LEDGER_CHECKS,
    LEDGER_IMBALANCE,
    OPEN_EXCEPTIONS,
    PASSES,
    REASONS,
    STATEMENT_LAG,
    label,
)
from payments.reconciler.store import ReconciliationStore, UnrecordedCharge
from payments.store import PaymentEventStore

log = logging.getLogger(__name__)

#: How a recovered charge's event id starts (stockcore.charges_to_state looks for it).
RECOVERED_PREFIX = "feed:"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StepDone:
    """What one step did: transactions posted, charges recovered, statement lines written."""

    posted: int
    recovered: int
    stated: int


@dataclass
class Reconciler:
    """Follows `feed` into `store`, recovers lost webhooks through `orders` (None: never)
    recording them in `events`, and states what it finds under `policy`."""

    store: ReconciliationStore
    feed: SettlementFeed
    events: PaymentEventStore
    orders: OrderClient | None
    policy: Policy
    page_size: int = 100
    close_margin_s: float = 3600.0
    ledger_check_s: float = 60.0
    clock: Callable[[], datetime] = field(default=_now)

    async def follow(self) -> int:
        """Read, record and post the feed until it has nothing new; transfers posted."""
        posted = 0
        while True:
            after = await self.store.cursor()
            page = await self.feed.page(after, self.page_size)
            if not page.transactions:
                return posted
            charges = {
                t.source_id: await self.feed.refunded_charge(t.source_id)
                for t in page.transactions
                if t.type in REFUND_TYPES
            }
            done = await self.store.record_page(after, page, charges)
            posted += done.posted
            if done.moved and done.posted:
                log.info(
                    "settlement feed posted",
                    extra={"cursor": done.cursor, "posted": done.posted},
                )
            if not page.has_more:
                return posted

    async def recover(self) -> int:
        """Decide the captured charges whose webhook never came; how many were."""
        if self.orders is None:
            return 0
        waited = self.clock() - timedelta(seconds=self.policy.grace_s)
        recovered = 0
        for charge in await self.store.unrecorded_charges(waited):
            event = _event(charge)
            decided = await decide(self.orders, event)
            if isinstance(decided, Refused):
                log.warning(
                    "a charge without webhook not recovered",
                    extra={
                        "charge_id": charge.charge_id,
                        "order_id": charge.order_id,
                        "why": decided.error,
                    },
                )
                continue
            await self.events.record(event, decided.outcome, decided.reason)
            recovered += 1
            log.info(
                "a charge without webhook recovered from the feed",
                extra={
                    "charge_id": charge.charge_id,
                    "order_id": charge.order_id,
                    "outcome": decided.outcome.name,
                },
            )
        return recovered

    async def state(self) -> int:
        """Write the statements of what changed; how many lines."""
        now = self.clock()
        found = [charge_statement(f, now, self.policy) for f in await self.store.charges_to_state()]
        found += [
            refund_statement(f, now, self.policy) for f in await self.store.refunds_to_state()
        ]
        statements = [s for s in found if s is not None]
        stated = await self.store.record_statements(statements)
        for line in stated:
            STATEMENT_LAG.labels(label(line.kind), label(line.verdict)).observe(line.lag_s)
        for s in statements:
            if s.verdict.name != "MATCHED":
                log.warning(
                    "reconciliation discrepancy",
                    extra={
                        "subject": s.subject_id,
                        "order_id": s.order_id,
                        "verdict": s.verdict.name,
                    },
                )
        return len(stated)

    async def close_days(self) -> int:
        """Close the days past the close margin; how many were."""
        closed = await self.store.close_due_days(
            self.clock() - timedelta(seconds=self.close_margin_s)
        )
        for currency, day in closed:
            log.info("daily close", extra={"currency": currency, "day": day.isoformat()})
        return len(closed)

    async def step(self) -> StepDone:
        """Follow the feed, recover, state, close the days due: once each."""
        posted = await self.follow()
        recovered = await self.recover()
        stated = await self.state()
        await self.close_days()
        return StepDone(posted, recovered, stated)

    async def count_open_exceptions(self) -> None:
        """Set the open exceptions gauge, every reason (0 when none has any)."""
        found = await self.store.open_exceptions()
        for reason in REASONS:
            OPEN_EXCEPTIONS.labels(label(reason)).set(found.get(reason, 0))

    async def check_ledger(self) -> dict[str, int]:
        """Set the ledger imbalance gauge of every currency; the imbalances."""
        imbalance = await self.store.ledger_imbalance()
        for currency, amount in imbalance.items():
            LEDGER_IMBALANCE.labels(currency).set(amount)
        broken = {currency: amount for currency, amount in imbalance.items() if amount}
        if broken:
            log.error(
                "the ledger differs from the facts it records; see"
                " stockcore.invariant_violations()",
                extra={"imbalance_minor": broken},
            )
        return imbalance

    async def run(self, stopping: asyncio.Event, interval_s: float) -> None:
        """Pass every `interval_s`, and check the ledger every `ledger_check_s`, until
        `stopping` is set."""
        async with asyncio.TaskGroup() as both:
            both.create_task(self._passes(stopping, interval_s))
            both.create_task(self._ledger_checks(stopping))

    async def _passes(self, stopping: asyncio.Event, interval_s: float) -> None:
        """A step and the open exceptions' count per pass; a provider or a database that
        fails is logged and tried again at the next pass."""
        while not stopping.is_set():
            try:
                await self.step()
                # One read of the open rows per pass, so the gauge follows each step.
                await self.count_open_exceptions()
            except (FeedError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                PASSES.labels("failed").inc()
                log.error(
                    "reconciliation step failed; tried again",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
                )
            else:
                PASSES.labels("ok").inc()
                LAST_PASS.set_to_current_time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)

    async def _ledger_checks(self, stopping: asyncio.Event) -> None:
        """The ledger checked every `ledger_check_s`, apart from the passes: the check reads
        whole tables (stockcore.ledger_imbalance), so it runs far less often than a pass,
        and a check that fails or outlasts the database timeout never fails a pass."""
        while not stopping.is_set():
            try:
                await self.check_ledger()
            # TimeoutError, a check past the pool's command timeout, is an OSError.
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                LEDGER_CHECKS.labels("failed").inc()
                log.error(
                    "ledger check failed; tried again",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
                )
            else:
                LEDGER_CHECKS.labels("ok").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.ledger_check_s)


def _event(charge: UnrecordedCharge) -> ProviderEvent:
    """The charge as the event its lost webhook would have been."""
    document = {
        "id": RECOVERED_PREFIX + charge.txn_id,
        "type": CHARGE_SUCCEEDED,
        "created": int(charge.created_at.timestamp()),
        "data": {
            "object": {
                "id": charge.charge_id,
                "object": "charge",
                "order_id": charge.order_id,
                "amount": charge.amount_minor,
                "currency": charge.currency,
                "balance_transaction": charge.txn_id,
            }
        },
    }
    return ProviderEvent(
        RECOVERED_PREFIX + charge.txn_id,
        CHARGE_SUCCEEDED,
        charge.created_at,
        charge.charge_id,
        charge.order_id,
        charge.amount_minor,
        charge.currency,
        document,
    )
