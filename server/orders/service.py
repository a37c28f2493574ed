"""The order core: every order status change happens here, each in one PostgreSQL
transaction with its stock change (if any), its history row and its outbox event.

Creation, payment and cancellation of unpaid orders ride the inventory core's batches:
their order rows are written by `within` work that joins the very transaction that
holds, commits or releases the stock. Row locks on the orders decide every race once:
two payments, a cancel against a payment, the expiry sweep against a payment.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from server.config import Settings
from server.domain.errors import AlreadyExists, DomainError, IllegalTransition, NotFound
from server.domain.inventory import AdjustCommand, Finish, ReservationStatus
from server.domain.order_queries import ListOrders, WatchFilter
from server.domain.orders import (
    Actor,
    CancelOrder,
    CarrierReport,
    ConfirmPayment,
    CreateOrder,
    Order,
    OrderStatus,
    ShipOrder,
    StatusChange,
    Step,
    cancel,
    expire,
    pay,
    record_delivery,
    record_in_transit,
    ship,
)
from server.domain.sharding import shard_of
from server.inventory.batching import Batcher
from server.inventory.core import Followup, InventoryCore
from server.inventory.expiry import EXPIRY_CALLER
from server.metrics import ORDER_TRANSITIONS
from server.orders.watch import EventFeed
from server.storage.orders_pg import OrderStore
from server.storage.postgres import (
    AdjustCode,
    FinishCode,
    FinishResult,
    MirrorLevel,
    ReserveCode,
    ReserveResult,
)

log = logging.getLogger(__name__)

Answer = Order | BaseException


class _PaidMeanwhile(Exception):
    """A cancel of an unpaid order found it paid: it is cancelled as a paid order."""


class OrderCore:
    """Orders over the inventory core, with the status machine deciding every change."""

    def __init__(self, settings: Settings, inventory: InventoryCore, store: OrderStore) -> None:
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self.feed = EventFeed(store, settings.watch_poll_interval_s)
        options: dict[str, Any] = {"max_batch": settings.batch_max, "concurrency": 2}
        self._creator: Batcher[CreateOrder, Order] = Batcher(
            "create_order", self._create_batch, **options
        )
        self._payer: Batcher[ConfirmPayment, Order] = Batcher(
            "confirm_payment", self._pay_batch, **options
        )
        self._canceller: Batcher[CancelOrder, Order] = Batcher(
            "cancel_order", self._cancel_batch, **options
        )
        inventory.expiry_hooks.append(self._expire_lapsed)
        inventory.finish_guards.append(self._refuse_owned)

    def start(self) -> None:
        """Start the batchers (the inventory core is started by its owner)."""
        for batcher in (self._creator, self._payer, self._canceller):
            batcher.start()

    async def stop(self) -> None:
        """Finish batches in flight; end watch streams."""
        for batcher in (self._creator, self._payer, self._canceller):
            await batcher.stop()
        await self.feed.stop()

    # --- creation -------------------------------------------------------------------

    async def create_order(self, command: CreateOrder, deadline: float | None = None) -> Order:
        """Hold the order's stock and create it, in one transaction; a retry returns the
        order as it is now."""
        return await self._creator.submit(command, deadline)

    async def _create_batch(self, commands: Sequence[CreateOrder]) -> tuple[list[Answer], Followup]:
        decided: list[Answer | None] = [None] * len(commands)
        made: list[int] = []

        async def within(conn: Any, results: list[ReserveResult]) -> None:
            answers: list[Answer | None] = [None] * len(commands)
            steps: list[Step] = []
            repeats: list[int] = []
            for i, result in enumerate(results):
                if result is None:
                    continue  # turned away by the Redis gate
                if result.code is ReserveCode.HELD:
                    assert result.reservation is not None
                    held = result.reservation
                    step = commands[i].created(held.created_at, held.expires_at)
                    steps.append(step)
                    answers[i] = step.order
                elif result.code is ReserveCode.REPEAT:
                    repeats.append(i)
            await self.store.insert_created(conn, steps)
            if repeats:
                found = await self.store.find([commands[i].order_id for i in repeats], conn)
                for i in repeats:
                    existing = found.get(commands[i].order_id)
                    same = existing is not None and existing.fingerprint == commands[i].fingerprint
                    answers[i] = existing if same else AlreadyExists("order", commands[i].order_id)
            decided[:] = answers
            made[:] = [i for i, r in enumerate(results) if r and r.code is ReserveCode.HELD]

        held, followup = await self.inventory.hold([c.reserve for c in commands], within)
        answers: list[Answer] = []
        for i, outcome in enumerate(held):
            if isinstance(outcome, AlreadyExists):
                answers.append(AlreadyExists("order", commands[i].order_id))
            elif isinstance(outcome, BaseException):
                answers.append(outcome)
            else:
                answers.append(decided[i] or RuntimeError("order hold without an order row"))
        fresh = sum(1 for i in made if isinstance(answers[i], Order))
        ORDER_TRANSITIONS.labels(OrderStatus.PENDING_PAYMENT.name).inc(fresh)
        return answers, followup

    # --- payment --------------------------------------------------------------------

    async def confirm_payment(
        self, payment: ConfirmPayment, deadline: float | None = None
    ) -> Order:
        """Commit the order's hold and mark it PAID. The amount is checked before any
        stock is touched; a repeat of the payment that paid it returns the order."""
        order, recorded = await self.store.find_with_payment(payment.order_id, payment.payment_id)
        if order is None:
            raise NotFound("order", [payment.order_id])
        if recorded is not None and (
            recorded.order_id,
            recorded.amount_minor,
            recorded.currency,
        ) != (payment.order_id, payment.amount_minor, payment.currency):
            raise AlreadyExists("payment", payment.payment_id)
        if pay(order, payment, order.updated_at) is None:
            return order
        return await self._payer.submit(payment, deadline)

    async def _pay_batch(self, payments: Sequence[ConfirmPayment]) -> tuple[list[Answer], Followup]:
        decided: list[Answer] = []
        written: list[Step] = []

        async def within(conn: Any, results: list[FinishResult]) -> None:
            orders, now = await self.store.lock(conn, [p.order_id for p in payments])
            answers: list[Answer] = []
            steps: list[Step] = []
            paid: list[ConfirmPayment] = []
            for payment, result in zip(payments, results, strict=True):
                order = orders.get(payment.order_id)
                if order is None or result.reservation is None:
                    answers.append(NotFound("order", [payment.order_id]))
                    continue
                try:
                    if _lapsed(result):
                        order = self._expire_one(order, now, _expiry_actor(), steps, orders)
                    step = pay(order, payment, now)
                except DomainError as exc:
                    answers.append(exc)
                    continue
                if step is None:
                    answers.append(order)
                elif _finished_as(result, ReservationStatus.COMMITTED):
                    steps.append(step)
                    orders[order.order_id] = step.order
                    paid.append(payment)
                    answers.append(step.order)
                else:
                    answers.append(_disagreement(order, result))
            await self.store.write_steps(conn, steps)
            await self.store.insert_payments(conn, paid, now)
            decided[:] = answers
            written[:] = steps

        _, followup = await self.inventory.finish(
            Finish.COMMIT, [(p.order_id, p.actor.caller) for p in payments], within
        )
        self._count(written)
        return decided, followup

    # --- cancellation ---------------------------------------------------------------

    async def cancel_order(self, request: CancelOrder, deadline: float | None = None) -> Order:
        """Cancel an order that has not shipped: an unpaid one gives its hold back, a paid
        one returns its stock by an adjustment and owes its payment back."""
        order = await self._get(request.order_id)
        if cancel(order, request, order.updated_at) is None:
            return order
        if order.status is OrderStatus.PENDING_PAYMENT:
            try:
                return await self._canceller.submit(request, deadline)
            except _PaidMeanwhile:
                pass
        return await self._cancel_paid(request)

    async def _cancel_batch(self, requests: Sequence[CancelOrder]) -> tuple[list[Answer], Followup]:
        decided: list[Answer] = []
        written: list[Step] = []

        async def within(conn: Any, results: list[FinishResult]) -> None:
            orders, now = await self.store.lock(conn, [r.order_id for r in requests])
            answers: list[Answer] = []
            steps: list[Step] = []
            for request, result in zip(requests, results, strict=True):
                order = orders.get(request.order_id)
                if order is None or result.reservation is None:
                    answers.append(NotFound("order", [request.order_id]))
                    continue
                try:
                    if _lapsed(result):
                        order = self._expire_one(order, now, _expiry_actor(), steps, orders)
                    if order.status is OrderStatus.PAID:
                        answers.append(_PaidMeanwhile())
                        continue
                    step = cancel(order, request, now)
                except DomainError as exc:
                    answers.append(exc)
                    continue
                if step is None:
                    answers.append(order)
                elif _finished_as(result, ReservationStatus.RELEASED):
                    steps.append(step)
                    orders[order.order_id] = step.order
                    answers.append(step.order)
                else:
                    answers.append(_disagreement(order, result))
            await self.store.write_steps(conn, steps)
            decided[:] = answers
            written[:] = steps

        _, followup = await self.inventory.finish(
            Finish.RELEASE, [(r.order_id, r.actor.caller) for r in requests], within
        )
        self._count(written)
        return decided, followup

    async def _cancel_paid(self, request: CancelOrder) -> Order:
        """Cancel a paid order: its units go back on hand by adjustments (one per SKU, in
        the global stock lock order) committed with the order change."""
        levels: list[MirrorLevel] = []
        steps: list[Step] = []

        async def work(conn: Any) -> Order:
            levels.clear()
            steps.clear()
            orders, now = await self.store.lock(conn, [request.order_id])
            order = orders.get(request.order_id)
            if order is None:
                raise NotFound("order", [request.order_id])
            step = cancel(order, request, now)
            if step is None:
                return order
            if order.status is not OrderStatus.PAID:
                raise RuntimeError(f"order {order.order_id!r} is {order.status.name}, not PAID")
            shards = self.inventory.store.shard_count
            for line in sorted(order.lines, key=lambda x: (shard_of(x.sku, shards), x.sku)):
                adjustment = AdjustCommand(
                    sku=line.sku,
                    delta=line.quantity,
                    on_hand=None,
                    reason=f"order {order.order_id} cancelled after payment",
                    idempotency_key=f"order-cancel:{order.order_id}:{line.sku}",
                    caller=request.actor.caller,
                )
                result = await self.inventory.store.adjust_on(conn, adjustment)
                if result.code is not AdjustCode.APPLIED or result.version is None:
                    raise RuntimeError(f"returning stock of {order.order_id!r}: {result.code.name}")
                level = result.level
                levels.append(MirrorLevel(level.sku, level.on_hand, level.reserved, result.version))
            await self.store.write_steps(conn, [step])
            steps.append(step)
            return step.order

        order = await self.inventory.store.transaction(work)
        self._count(steps)
        if steps:
            log.info(
                "paid order cancelled; refund owed",
                extra={"order_id": order.order_id, "refund_owed_minor": order.refund_owed_minor},
            )
        await self.inventory.mirror.settle(levels=levels)
        return order

    # --- shipping -------------------------------------------------------------------

    async def ship_order(self, request: ShipOrder) -> Order:
        """PAID -> SHIPPED with the carrier's acknowledged tracking number."""
        return await self._transition(
            request.order_id, lambda order, now: ship(order, request, now)
        )

    async def record_in_transit(self, report: CarrierReport) -> Order:
        """SHIPPED -> IN_TRANSIT at the carrier's time."""
        return await self._transition(
            report.order_id, lambda order, now: record_in_transit(order, report, now)
        )

    async def record_delivery(self, report: CarrierReport) -> Order:
        """SHIPPED or IN_TRANSIT -> DELIVERED at the carrier's time."""
        return await self._transition(
            report.order_id, lambda order, now: record_delivery(order, report, now)
        )

    async def _transition(
        self, order_id: str, make: Callable[[Order, datetime], Step | None]
    ) -> Order:
        steps: list[Step] = []

        async def work(conn: Any) -> Order:
            steps.clear()
            orders, now = await self.store.lock(conn, [order_id])
            order = orders.get(order_id)
            if order is None:
                raise NotFound("order", [order_id])
            step = make(order, now)
            if step is None:
                return order
            await self.store.write_steps(conn, [step])
            steps.append(step)
            return step.order

        order = await self.inventory.store.transaction(work)
        self._count(steps)
        return order

    # --- expiry ---------------------------------------------------------------------

    async def _expire_lapsed(self, conn: Any, results: list[FinishResult]) -> None:
        """Expiry hook: unpaid orders whose hold the sweep just expired expire with it,
        in the same transaction."""
        lapsed = [r.reservation.reservation_id for r in results if _lapsed(r) and r.reservation]
        if not lapsed:
            return
        orders, now = await self.store.lock(conn, lapsed)
        steps: list[Step] = []
        actor = _expiry_actor()
        for order in list(orders.values()):
            try:
                self._expire_one(order, now, actor, steps, orders)
            except IllegalTransition:
                # Raising would roll back the whole sweep, every other expiry with it.
                log.error(
                    "an expired hold's order cannot expire",
                    extra={"order_id": order.order_id, "status": order.status.name},
                )
        await self.store.write_steps(conn, steps)
        self._count(steps)

    @staticmethod
    def _expire_one(
        order: Order, now: datetime, actor: Actor, steps: list[Step], orders: dict[str, Order]
    ) -> Order:
        """Expire `order` unless it already is, noting the step; the order as it now is."""
        step = expire(order, now, actor)
        if step is None:
            return order
        steps.append(step)
        orders[order.order_id] = step.order
        return step.order

    async def _refuse_owned(self, reservation_ids: Sequence[str]) -> dict[str, IllegalTransition]:
        """Finish guard: an order's hold is committed or released only through the order."""
        owned = await self.store.find(reservation_ids)
        return {
            rid: IllegalTransition(
                rid,
                f"held by order {rid} ({order.status.name})",
                "finished",
                f"reservation {rid!r} is the hold of order {rid!r}: use ConfirmPayment or"
                " CancelOrder of OrderService",
            )
            for rid, order in owned.items()
        }

    # --- reads ----------------------------------------------------------------------

    async def _get(self, order_id: str) -> Order:
        found = (await self.store.find([order_id])).get(order_id)
        if found is None:
            raise NotFound("order", [order_id])
        return found

    async def get_order(self, order_id: str) -> tuple[Order, list[StatusChange]]:
        """An order with its status history."""
        found = await self.store.get_with_history(order_id)
        if found is None:
            raise NotFound("order", [order_id])
        return found

    async def list_orders(self, query: ListOrders) -> tuple[list[Order], str]:
        """One page of a customer's orders and the token of the next ("" on the last)."""
        orders, last = await self.store.page(query)
        return orders, "" if last is None else query.token(last)

    def watch(self, wanted: WatchFilter) -> AsyncIterator[tuple[int, bytes]]:
        """(cursor, stored event) of every event passing the filter after its cursor,
        then of each new one as it is sequenced."""
        return self.feed.stream(wanted)

    @staticmethod
    def _count(steps: Sequence[Step]) -> None:
        for step in steps:
            ORDER_TRANSITIONS.labels(step.order.status.name).inc()


def _lapsed(result: FinishResult) -> bool:
    """Whether this finish met a hold past its expiry and expired it."""
    return _finished_as(result, ReservationStatus.EXPIRED)


def _finished_as(result: FinishResult, status: ReservationStatus) -> bool:
    return (
        result.code is FinishCode.APPLIED
        and result.reservation is not None
        and result.reservation.status is status
    )


def _expiry_actor() -> Actor:
    return Actor(EXPIRY_CALLER, f"expiry-{uuid.uuid4().hex}")


def _disagreement(order: Order, result: FinishResult) -> RuntimeError:
    """An order whose hold was finished elsewhere: nothing is written for it."""
    held = result.reservation.status.name if result.reservation else "unknown"
    log.error(
        "order and its hold disagree",
        extra={"order_id": order.order_id, "status": order.status.name, "hold": held},
    )
    return RuntimeError(f"order {order.order_id!r} is {order.status.name} but its hold is {held}")
