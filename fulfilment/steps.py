"""What a worker does with the rows it leased, stage by stage; every step answers with an
Outcome per row, which the worker records in one statement per batch.

Idempotence, step by step: the warehouse is idempotent on the order id; a carrier on the
booking key, and an order is bound to a carrier (written before its first booking request)
until every request sent to that carrier provably applied nothing, so a crash anywhere
leads to the same booking, never to a second one; ShipOrder, RecordInTransit and
RecordDelivery repeat as no-ops. Every acknowledged exchange moves last_sync."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from clients.errors import EventBeforeOrder, FailedPrecondition, InvalidArgument, StockcoreError
from clients.orders import OrderClient, OrderStatus, status_name
from fulfilment.config import FulfilmentSettings
from fulfilment.domain import CANCELLABLE, Fulfilment, Outcome, Stage, step_backoff
from fulfilment.guard import CallFailed, PartnerGuard
from fulfilment.metrics import (
    FULFILMENT_DEAD_LETTERS,
    FULFILMENT_FALLBACK_BOOKINGS,
    FULFILMENT_STEPS,
    HANDOFF_TO_SHIP,
    PAID_TO_SHIP,
)
from fulfilment.partners import (
    BookingRequest,
    Carrier,
    HandOff,
    PackState,
    TrackingUpdate,
    Warehouse,
)
from fulfilment.store import FulfilmentStore
from runtime.breaker import BreakerState

log = logging.getLogger(__name__)

# The order server's own failures (unavailable, deadline) are waited out this long, without
# spending the retry budget: they are not the partner's.
_SERVER_RETRY_S = 1.0


@dataclass
class CarrierLink:
    """A carrier's adapter and guard."""

    carrier: Carrier
    guard: PartnerGuard


@dataclass
class Partners:
    """Who the worker works with."""

    warehouse: Warehouse
    warehouse_guard: PartnerGuard
    carriers: dict[str, CarrierLink]
    primary: str
    fallback: str | None

    def guards(self) -> list[PartnerGuard]:
        """Every partner's guard."""
        return [self.warehouse_guard, *(link.guard for link in self.carriers.values())]


def _now() -> datetime:
    return datetime.now(UTC)


def _would_allow(guard: PartnerGuard) -> bool:
    return guard.breaker.state is not BreakerState.OPEN


class Steps:
    """The stage handlers of one worker."""

    def __init__(
        self,
        settings: FulfilmentSettings,
        partners: Partners,
        orders: OrderClient,
        store: FulfilmentStore,
        worker: str,
    ) -> None:
        self._s = settings
        self._p = partners
        self._orders = orders
        self._store = store
        self._worker = worker

    async def run(self, rows: Sequence[Fulfilment]) -> list[Outcome]:
        """Every row's outcome (rows of one stage are handled together where the partner
        takes batches)."""
        by_stage: dict[Stage, list[Fulfilment]] = defaultdict(list)
        for row in rows:
            stage = (
                Stage.CANCELLING if row.cancel_requested and row.stage in CANCELLABLE else row.stage
            )
            by_stage[stage].append(row)
        handlers: dict[Stage, Callable[[list[Fulfilment]], Awaitable[list[Outcome]]]] = {
            Stage.HAND_OFF: self._each(self.hand_off),
            Stage.PACKING: self.packing,
            Stage.BOOKING: self.booking,
            Stage.RECORDING: self._each(self.recording),
            Stage.TRACKING: self.tracking,
            Stage.CANCELLING: self._each(self.cancelling),
        }
        done = await asyncio.gather(
            *(handlers[stage](group) for stage, group in by_stage.items() if stage in handlers)
        )
        outcomes = [o for group in done for o in group]
        for o in outcomes:
            FULFILMENT_STEPS.labels(o.row.stage.name, _step_outcome(o)).inc()
            if o.dead_stage is not None:
                FULFILMENT_DEAD_LETTERS.labels(o.dead_stage.name, o.dead_partner or "").inc()
                log.error(
                    "a fulfilment step went to the dead letters",
                    extra={
                        "order_id": o.row.order_id,
                        "stage": o.dead_stage.name,
                        "error": o.last_error,
                    },
                )
        return outcomes

    @staticmethod
    def _each(
        step: Callable[[Fulfilment], Awaitable[Outcome]],
    ) -> Callable[[list[Fulfilment]], Awaitable[list[Outcome]]]:
        async def run_all(rows: list[Fulfilment]) -> list[Outcome]:
            return list(await asyncio.gather(*(step(row) for row in rows)))

        return run_all

    # --- outcomes of failures -------------------------------------------------------

    def _failed(self, row: Fulfilment, failure: CallFailed, **changes: object) -> Outcome:
        """A guarded call gave up: wait for the breaker (free), or spend one try of the
        budget; past the budget, the dead letters."""
        error = str(failure.error)[:2000]
        if failure.retry_at is not None:
            wait = max(0.05, failure.retry_at - time.monotonic()) + random.uniform(0, 0.5)
            outcome = Outcome(
                row, row.stage, due_in_s=wait, attempts=row.attempts, last_error=error
            )
        else:
            outcome = self._spend(row, failure.partner, error)
        for name, value in changes.items():
            setattr(outcome, name, value)
        return outcome

    def _spend(self, row: Fulfilment, partner: str, error: str) -> Outcome:
        attempts = row.attempts + 1
        if attempts >= self._s.step_max_attempts:
            return (
                Outcome(
                    row,
                    Stage.DEAD,
                    attempts=attempts,
                    last_error=error,
                    dead_stage=row.stage,
                    dead_partner=partner,
                )
                .note(partner, "failed", f"try {attempts}: {error}")
                .note(partner, "dead", f"{row.stage.name} failed {attempts} times")
            )
        wait = step_backoff(attempts, self._s.step_backoff_initial_s, self._s.step_backoff_max_s)
        return Outcome(row, row.stage, due_in_s=wait, attempts=attempts, last_error=error).note(
            partner, "failed", f"try {attempts}: {error}"
        )

    def _server_trouble(self, row: Fulfilment, stage: Stage, error: StockcoreError) -> Outcome:
        return Outcome(
            row,
            stage,
            due_in_s=_SERVER_RETRY_S * random.uniform(1, 2),
            attempts=row.attempts,
            last_error=f"order server: {error.code.name}: {error}"[:2000],
        )

    # --- the warehouse ------------------------------------------------------------

    async def hand_off(self, row: Fulfilment) -> Outcome:
        """Give the order to the warehouse; on its acknowledgement, wait for packing."""
        warehouse = self._p.warehouse
        order = HandOff(row.order_id, row.customer_id, row.lines, row.paid_at)
        try:
            ack = await self._p.warehouse_guard.call("hand_off", lambda: warehouse.hand_off(order))
        except CallFailed as failure:
            return self._failed(row, failure)
        return Outcome(
            row,
            Stage.PACKING,
            due_in_s=self._s.pack_poll_s,
            synced=True,
            warehouse_ref=ack.warehouse_ref,
            handed_off=True,
        ).note(warehouse.name, "handed off", f"warehouse ref {ack.warehouse_ref}")

    async def packing(self, rows: list[Fulfilment]) -> list[Outcome]:
        """Ask the warehouse about every order not yet packed, in one call."""
        warehouse = self._p.warehouse
        ids = [row.order_id for row in rows]
        try:
            found = await self._p.warehouse_guard.call("status", lambda: warehouse.statuses(ids))
        except CallFailed as failure:
            return [self._failed(row, failure) for row in rows]
        outcomes = []
        for row in rows:
            status = found[row.order_id]
            if status.state is PackState.PACKED:
                outcomes.append(
                    Outcome(row, Stage.BOOKING, synced=True, packed_at=status.packed_at).note(
                        warehouse.name, "packed"
                    )
                )
            elif status.state is PackState.ACCEPTED:
                outcomes.append(
                    Outcome(row, Stage.PACKING, due_in_s=self._s.pack_poll_s, synced=True)
                )
            elif status.state is PackState.UNKNOWN:
                outcomes.append(
                    Outcome(row, Stage.HAND_OFF, synced=True).note(
                        warehouse.name,
                        "lost",
                        "the warehouse does not know the order: handing it off again",
                    )
                )
            else:
                outcomes.append(
                    self._spend(
                        row, warehouse.name, "the warehouse cancelled an order that was not"
                    )
                )
        return outcomes

    # --- carriers -------------------------------------------------------------------

    def _route(self, row: Fulfilment) -> tuple[str | None, str]:
        """The carrier to book with now, and why (None: none will take it now)."""
        if row.carrier is not None:
            link = self._p.carriers.get(row.carrier)
            return (row.carrier if link and _would_allow(link.guard) else None), "bound"
        primary = self._p.carriers[self._p.primary]
        if _would_allow(primary.guard):
            return self._p.primary, "primary"
        fallback = self._p.fallback
        if fallback is not None and _would_allow(self._p.carriers[fallback].guard):
            return fallback, f"fallback: {self._p.primary}'s breaker is open"
        return None, "no carrier's breaker is closed"

    def _wait_for_carriers(self, row: Fulfilment) -> Outcome:
        names = [row.carrier] if row.carrier else list(self._p.carriers)
        retry_at = (
            min(
                self._p.carriers[n].guard.breaker.retry_at() for n in names if n in self._p.carriers
            )
            if any(n in self._p.carriers for n in names)
            else time.monotonic() + 1.0
        )
        wait = max(0.05, retry_at - time.monotonic()) + random.uniform(0, 0.5)
        return Outcome(
            row, Stage.BOOKING, due_in_s=wait, attempts=row.attempts, last_error=row.last_error
        )

    async def booking(self, rows: list[Fulfilment]) -> list[Outcome]:
        """Bind each order to a carrier (unless it is bound), then book and ship it."""
        routed: list[tuple[Fulfilment, str, str]] = []
        outcomes: list[Outcome] = []
        for row in rows:
            carrier, why = self._route(row)
            if carrier is None:
                if row.carrier is not None and row.carrier not in self._p.carriers:
                    outcomes.append(
                        self._spend(
                            row, row.carrier, "bound to a carrier this worker has no adapter for"
                        )
                    )
                else:
                    outcomes.append(self._wait_for_carriers(row))
                continue
            routed.append((row, carrier, why))
        to_bind = [
            (row, carrier, row.order_id) for row, carrier, _ in routed if row.carrier is None
        ]
        try:
            bound = await self._store.bind(to_bind, self._worker)
        except Exception:
            log.exception("binding orders to carriers failed; they are tried again later")
            return outcomes + [
                Outcome(row, Stage.BOOKING, due_in_s=1.0, attempts=row.attempts)
                for row, _, _ in routed
            ]
        ready = [
            (row, carrier, why)
            for row, carrier, why in routed
            if row.carrier is not None or row.order_id in bound
        ]
        # Rows whose binding was refused were taken over by another worker: nothing to record.
        booked = await asyncio.gather(*(self._book(row, c, why) for row, c, why in ready))
        return outcomes + list(booked)

    async def _book(self, row: Fulfilment, carrier: str, why: str) -> Outcome:
        link = self._p.carriers[carrier]
        key = row.booking_key or row.order_id
        request = BookingRequest(row.order_id, key, row.customer_id, row.lines)
        fallback = why.startswith("fallback")
        try:
            booking = await link.guard.call("book", lambda: link.carrier.book(request))
        except CallFailed as failure:
            # Free to go elsewhere only when nothing sent could have booked: this step bound
            # the order and every request of it provably applied nothing. An order that came
            # bound stays bound (an earlier try, or a worker that died mid-call, may have
            # booked it).
            keep = failure.maybe_applied or row.carrier is not None
            changes: dict[str, object] = (
                {} if keep else {"bind": True, "carrier": None, "booking_key": None}
            )
            outcome = self._failed(row, failure, **changes)
            if failure.retry_at is not None and not keep and self._p.fallback:
                outcome.due_in_s = random.uniform(
                    0.05, 0.3
                )  # the next router may pick the fallback
            return outcome
        if fallback:
            FULFILMENT_FALLBACK_BOOKINGS.inc()
        booked = Outcome(
            row,
            Stage.RECORDING,
            synced=True,
            bind=True,
            carrier=carrier,
            booking_key=key,
            tracking_no=booking.tracking_no,
            carrier_ack_id=booking.carrier_ack_id,
            booked=True,
        ).note(carrier, "booked", f"{booking.tracking_no} ack {booking.carrier_ack_id} ({why})")
        return await self._ship(row, booked, carrier, booking.tracking_no, booking.carrier_ack_id)

    async def recording(self, row: Fulfilment) -> Outcome:
        """ShipOrder a booking that was not recorded yet."""
        assert row.carrier and row.tracking_no and row.carrier_ack_id
        outcome = Outcome(row, Stage.RECORDING)
        return await self._ship(row, outcome, row.carrier, row.tracking_no, row.carrier_ack_id)

    async def _ship(
        self, row: Fulfilment, outcome: Outcome, carrier: str, tracking_no: str, ack: str
    ) -> Outcome:
        try:
            await self._orders.ship_order(row.order_id, carrier, tracking_no, ack)
        except FailedPrecondition:
            # Cancelled meanwhile, or shipped as another parcel: undo the booking.
            outcome.stage = Stage.CANCELLING
            outcome.due_in_s = 0.0
            return outcome.note(
                "", "not shipped", "ShipOrder refused: the order is cancelled or shipped otherwise"
            )
        except StockcoreError as error:
            if error.code.name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}:
                trouble = self._server_trouble(row, Stage.RECORDING, error)
                outcome.stage, outcome.due_in_s, outcome.last_error = (
                    Stage.RECORDING,
                    trouble.due_in_s,
                    trouble.last_error,
                )
                return outcome
            spent = self._spend(row, "stockcore", f"ShipOrder: {error.code.name}: {error}")
            outcome.stage, outcome.due_in_s, outcome.attempts, outcome.last_error = (
                spent.stage if spent.stage is Stage.DEAD else Stage.RECORDING,
                spent.due_in_s,
                spent.attempts,
                spent.last_error,
            )
            outcome.dead_stage, outcome.dead_partner = (
                (Stage.RECORDING, "stockcore") if spent.stage is Stage.DEAD else (None, None)
            )
            outcome.history += spent.history
            return outcome
        now = _now()
        PAID_TO_SHIP.observe(max(0.0, (now - row.paid_at).total_seconds()))
        if row.handed_off_at is not None:
            HANDOFF_TO_SHIP.observe(max(0.0, (now - row.handed_off_at).total_seconds()))
        outcome.stage = Stage.TRACKING
        outcome.due_in_s = self._s.track_poll_s
        outcome.attempts = 0
        outcome.last_error = None
        outcome.shipped = True
        return outcome.note(carrier, "shipped", tracking_no)

    async def tracking(self, rows: list[Fulfilment]) -> list[Outcome]:
        """Ask each carrier about its parcels, in one call per carrier."""
        by_carrier: dict[str, list[Fulfilment]] = defaultdict(list)
        for row in rows:
            by_carrier[row.carrier or ""].append(row)
        done = await asyncio.gather(*(self._track(c, group) for c, group in by_carrier.items()))
        return [o for group in done for o in group]

    async def _track(self, carrier: str, rows: list[Fulfilment]) -> list[Outcome]:
        link = self._p.carriers.get(carrier)
        if link is None:
            return [self._spend(row, carrier, "no adapter for this carrier") for row in rows]
        numbers = [row.tracking_no or "" for row in rows]
        try:
            found = await link.guard.call("track", lambda: link.carrier.track(numbers))
        except CallFailed as failure:
            return [self._failed(row, failure) for row in rows]
        return list(await asyncio.gather(*(self._scanned(row, carrier, found) for row in rows)))

    async def _scanned(
        self, row: Fulfilment, carrier: str, found: Mapping[str, TrackingUpdate]
    ) -> Outcome:
        update = found[row.tracking_no or ""]
        if not update.known:
            return self._spend(row, carrier, f"the carrier does not know parcel {row.tracking_no}")
        outcome = Outcome(row, Stage.TRACKING, due_in_s=self._s.track_poll_s, synced=True)
        try:
            if update.in_transit_at and row.in_transit_at is None:
                await self._record(
                    self._orders.record_in_transit, row.order_id, update.in_transit_at
                )
                outcome.in_transit_at = update.in_transit_at
                outcome.note(carrier, "in transit", update.in_transit_at.isoformat())
            if update.delivered_at and row.delivered_at is None:
                await self._record(self._orders.record_delivery, row.order_id, update.delivered_at)
                outcome.delivered_at = update.delivered_at
                outcome.stage = Stage.DELIVERED
                outcome.note(carrier, "delivered", update.delivered_at.isoformat())
        except (EventBeforeOrder, InvalidArgument) as error:
            # The order server refused the carrier's time (before the order, before 2000):
            # the carrier's report is unusable, and asking again brings the same one. It
            # spends the step's budget, as a partner's failure does.
            spent = self._spend(row, carrier, f"order server: {error.code.name}: {error}"[:2000])
            spent.in_transit_at, spent.synced = outcome.in_transit_at, True
            spent.history = outcome.history + spent.history
            return spent
        except StockcoreError as error:
            trouble = self._server_trouble(row, Stage.TRACKING, error)
            outcome.due_in_s, outcome.last_error = trouble.due_in_s, trouble.last_error
        return outcome

    async def _record(
        self, call: Callable[[str, datetime], Awaitable[object]], order_id: str, at: datetime
    ) -> None:
        try:
            await call(order_id, at)
        except EventBeforeOrder:
            raise
        except FailedPrecondition:
            # Already further along (recorded by an earlier try whose answer was lost, or
            # delivered before the transit scan was seen): what matters is where it is.
            order, _ = await self._orders.get_order(order_id)
            if order.status not in {
                OrderStatus.ORDER_STATUS_IN_TRANSIT,
                OrderStatus.ORDER_STATUS_DELIVERED,
            }:
                raise

    # --- cancellation ---------------------------------------------------------------

    async def cancelling(self, row: Fulfilment) -> Outcome:
        """Void the booking (if any could exist) and take the order back from the
        warehouse; then the fulfilment ends."""
        outcome = Outcome(row, Stage.CANCELLED)
        if row.carrier is not None and row.carrier in self._p.carriers:
            link = self._p.carriers[row.carrier]
            key = row.booking_key or row.order_id
            try:
                await link.guard.call("void", lambda: link.carrier.cancel(key))
            except CallFailed as failure:
                return self._failed(row, failure, stage=Stage.CANCELLING)
            outcome.synced = True
            outcome.note(row.carrier, "voided", key)
        warehouse = self._p.warehouse
        try:
            await self._p.warehouse_guard.call("cancel", lambda: warehouse.cancel(row.order_id))
        except CallFailed as failure:
            return self._failed(row, failure, stage=Stage.CANCELLING)
        outcome.synced = True
        outcome.note(warehouse.name, "taken back")
        try:
            order, _ = await self._orders.get_order(row.order_id)
        except StockcoreError as error:
            return self._server_trouble(row, Stage.CANCELLING, error)
        if order.status != OrderStatus.ORDER_STATUS_CANCELLED:
            outcome.stage = Stage.ELSEWHERE
            outcome.note(
                "",
                "shipped elsewhere",
                f"the order is {status_name(order.status)} as another parcel",
            )
        return outcome


def _step_outcome(outcome: Outcome) -> str:
    if outcome.dead_stage is not None:
        return "dead"
    if outcome.stage is not outcome.row.stage or outcome.row.cancel_requested:
        return "done"
    if outcome.attempts > outcome.row.attempts:
        return "failed"
    if outcome.synced:
        return "waiting"
    return "deferred"
