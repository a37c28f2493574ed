"""The order core: batches order requests and maps what the order functions in
PostgreSQL decided to answers.

Each batch is one statement (server/storage/orders_pg.py): it locks the orders, their
holds and their stock rows, decides every request by the status machine, writes the
order, history, outbox and ledger rows and commits. Races (two payments, one payment
for two orders, a cancel against a payment, expiry against a payment, a line refund
against a cancel) are decided there, under the locks, once. CreateOrder goes through the
Redis gate first, like Reserve.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from server.config import Settings
from server.domain.errors import (
    AlreadyExists,
    DomainError,
    InsufficientStock,
    LinesDiffer,
    NotFound,
)
from server.domain.inventory import not_held, not_held_for
from server.domain.order_queries import ListOrders, WatchFilter
from server.domain.orders import (
    CancelOrder,
    CarrierReport,
    ConfirmPayment,
    CreateOrder,
    Order,
    OrderStatus,
    RefundLine,
    RefundNote,
    ShipOrder,
    StatusChange,
    customer_cannot_cancel,
    exceeds_line,
    free_line,
    lines_text,
    mismatch,
    no_such_line,
    not_customers,
    not_refundable,
    paid_by_another,
    refusal,
    reported_before_creation,
    shipped_as_another,
)
from server.inventory import gating
from server.inventory.batching import Batcher
from server.inventory.expiry import EXPIRY_CALLER
from server.inventory.mirror import Mirror
from server.metrics import ORDER_PAID_MINOR, ORDER_REFUNDS_OWED_MINOR, ORDER_TRANSITIONS
from server.orders.watch import EventFeed
from server.queue_delay import Queues
from server.shares import Shares
from server.storage.orders_pg import (
    ChangeCode,
    Changed,
    CreateCode,
    Created,
    LineRefundCode,
    LineRefunded,
    OrderStore,
    TakenOver,
    TakeOverCode,
)

log = logging.getLogger(__name__)

Answer = Order | BaseException
Req = TypeVar("Req")


class OrderCore:
    """Orders, each change decided once by one statement per batch."""

    def __init__(
        self,
        settings: Settings,
        mirror: Mirror,
        store: OrderStore,
        feed: EventFeed[Any],
        queues: Queues,
        readers: Shares,
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        self.store = store
        self.feed = feed
        # Every status's series from the start, at 0, so that a rate sees the first order.
        for status in OrderStatus:
            ORDER_TRANSITIONS.labels(status.name)
        # Each reader's share of the reads in PostgreSQL at once (shared with InventoryCore).
        self.readers = readers
        options, reads = queues.batch_options(settings.batch_max, settings.batch_concurrency)
        self._creator: Batcher[CreateOrder, Order] = Batcher(
            "create_order", self._create_batch, **options
        )
        self._taker: Batcher[CreateOrder, Order] = Batcher(
            "create_order_from_reservation", self._take_over_batch, **options
        )
        self._payer: Batcher[ConfirmPayment, Order] = Batcher(
            "confirm_payment", self._pay_batch, **options
        )
        self._canceller: Batcher[CancelOrder, Order] = Batcher(
            "cancel_order", self._cancel_batch, **options
        )
        self._shipper: Batcher[ShipOrder, Order] = Batcher(
            "ship_order", self._ship_batch, **options
        )
        self._refunder: Batcher[RefundLine, tuple[Order, RefundNote]] = Batcher(
            "refund_line", self._refund_batch, **options
        )
        self._carrier: dict[OrderStatus, Batcher[CarrierReport, Order]] = {
            wanted: Batcher(
                f"record_{wanted.name.lower()}", partial(self._carrier_batch, wanted), **options
            )
            for wanted in (OrderStatus.IN_TRANSIT, OrderStatus.DELIVERED)
        }
        self._reader: Batcher[str, tuple[Order, list[StatusChange]]] = Batcher(
            "get_order", self._read_batch, **reads
        )
        self._lister: Batcher[ListOrders, tuple[list[Order], str]] = Batcher(
            "list_orders", self._list_batch, **reads
        )

    @property
    def _batchers(self) -> list[Batcher[Any, Any]]:
        return [
            self._creator,
            self._taker,
            self._payer,
            self._canceller,
            self._shipper,
            self._refunder,
            *self._carrier.values(),
            self._reader,
            self._lister,
        ]

    def start(self) -> None:
        """Start the batchers."""
        for batcher in self._batchers:
            batcher.start()

    async def stop(self) -> None:
        """Finish batches in flight; end watch streams."""
        for batcher in self._batchers:
            await batcher.stop()
        await self.feed.stop()

    # --- changes --------------------------------------------------------------------

    async def create_order(self, command: CreateOrder, deadline: float | None = None) -> Order:
        """Hold the order's stock (or take over its held reservation) and create it; a
        retry returns the order as it is now."""
        if command.from_reservation:
            return await self._taker.submit(command, deadline)
        return await self._creator.submit(command, deadline)

    async def confirm_payment(
        self, payment: ConfirmPayment, deadline: float | None = None
    ) -> Order:
        """Commit the order's hold and mark it PAID; a repeat of the payment that paid it
        returns the order."""
        return await self._payer.submit(payment, deadline)

    async def cancel_order(self, request: CancelOrder, deadline: float | None = None) -> Order:
        """Cancel an order that has not shipped: an unpaid one gives its hold back, a paid
        one returns its stock by an adjustment and owes its payment back."""
        return await self._canceller.submit(request, deadline)

    async def refund_line(
        self, request: RefundLine, deadline: float | None = None
    ) -> tuple[Order, RefundNote]:
        """Owe back some units of one line of a paid order (money only: no stock moves, the
        status stays); a repeat of the same request returns the order and its refund as
        they are now."""
        return await self._refunder.submit(request, deadline)

    async def ship_order(self, request: ShipOrder, deadline: float | None = None) -> Order:
        """PAID -> SHIPPED with the carrier's acknowledged tracking number."""
        return await self._shipper.submit(request, deadline)

    async def record_in_transit(
        self, report: CarrierReport, deadline: float | None = None
    ) -> Order:
        """SHIPPED -> IN_TRANSIT at the carrier's time."""
        return await self._carrier[OrderStatus.IN_TRANSIT].submit(report, deadline)

    async def record_delivery(self, report: CarrierReport, deadline: float | None = None) -> Order:
        """SHIPPED or IN_TRANSIT -> DELIVERED at the carrier's time."""
        return await self._carrier[OrderStatus.DELIVERED].submit(report, deadline)

    async def _create_batch(self, commands: Sequence[CreateOrder]) -> list[Answer]:
        async with gating.holding(
            self.mirror, self.store.stock, [c.reserve for c in commands]
        ) as batch:
            if batch.to_database:
                try:
                    created, batch.levels = await self.store.create(
                        [commands[i] for i in batch.to_database]
                    )
                except DomainError as exc:
                    batch.fail(exc)
                    created = []
                for i, outcome in zip(batch.to_database, created, strict=False):
                    batch.decide(i, *_created(commands[i], outcome))
        return batch.answers  # type: ignore[return-value]

    async def _take_over_batch(self, commands: Sequence[CreateOrder]) -> list[Answer]:
        """Orders of held reservations: one statement, no stock row and no gate (their
        units are held already)."""
        answers: list[Answer] = []
        for command, outcome in zip(commands, await self.store.take_over(commands), strict=True):
            answers.append(_taken_over(command, outcome))
        return answers

    async def _pay_batch(self, payments: Sequence[ConfirmPayment]) -> list[Answer]:
        changed, levels = await self.store.pay(payments, EXPIRY_CALLER)
        await self.mirror.settle(levels=levels)

        def refused(payment: ConfirmPayment, outcome: Changed, order: Order) -> DomainError:
            if outcome.code is ChangeCode.MISMATCH:
                return mismatch(order, payment)
            if outcome.code is ChangeCode.PAYMENT_TAKEN:
                return AlreadyExists("payment", payment.payment_id, f"order {outcome.detail}")
            if outcome.code is ChangeCode.PAID_BY_OTHER:
                return paid_by_another(order)
            return refusal(order, OrderStatus.PAID)

        return self._answers(payments, changed, OrderStatus.PAID, refused)

    async def _cancel_batch(self, requests: Sequence[CancelOrder]) -> list[Answer]:
        changed, levels = await self.store.cancel(requests, EXPIRY_CALLER)
        await self.mirror.settle(levels=levels)
        paid = {
            o.order.order_id
            for o in changed
            if o.code is ChangeCode.DONE and o.order and o.order.refund_owed_minor
        }
        for order_id in paid:
            log.info("paid order cancelled; refund owed", extra={"order_id": order_id})
        answers: list[Answer] = []
        for request, outcome in zip(requests, changed, strict=True):
            if outcome.code is ChangeCode.NOT_CUSTOMERS:
                answers.append(not_customers(request.customer_id or "", request.order_id))
            elif outcome.code is ChangeCode.PAID and outcome.order is not None:
                answers.append(customer_cannot_cancel(outcome.order))
            else:
                answers.extend(
                    self._answers(
                        [request],
                        [outcome],
                        OrderStatus.CANCELLED,
                        lambda _, __, order: refusal(order, OrderStatus.CANCELLED),
                    )
                )
        return answers

    async def _refund_batch(
        self, requests: Sequence[RefundLine]
    ) -> list[tuple[Order, RefundNote] | BaseException]:
        outcomes = await self.store.refund_lines(requests)
        return [_line_refunded(r, o) for r, o in zip(requests, outcomes, strict=True)]

    async def _ship_batch(self, requests: Sequence[ShipOrder]) -> list[Answer]:
        changed = await self.store.ship(requests)
        return self._answers(
            requests,
            changed,
            OrderStatus.SHIPPED,
            lambda _, outcome, order: (
                shipped_as_another(order)
                if outcome.code is ChangeCode.OTHER_PARCEL
                else refusal(order, OrderStatus.SHIPPED)
            ),
        )

    async def _carrier_batch(
        self, wanted: OrderStatus, reports: Sequence[CarrierReport]
    ) -> list[Answer]:
        changed = await self.store.record_carrier(wanted, reports)
        return self._answers(
            reports,
            changed,
            wanted,
            lambda report, outcome, order: (
                reported_before_creation(order, report)
                if outcome.code is ChangeCode.BEFORE_CREATION
                else refusal(order, wanted)
            ),
        )

    def _answers(
        self,
        requests: Sequence[Req],
        changed: Sequence[Changed],
        wanted: OrderStatus,
        refused: Callable[[Req, Changed, Order], DomainError],
    ) -> list[Answer]:
        """Map each request's outcome to its answer, counting the transitions made."""
        answers: list[Answer] = []
        for request, outcome in zip(requests, changed, strict=True):
            order = outcome.order
            if outcome.code is ChangeCode.UNKNOWN or order is None:
                answers.append(NotFound("order", [getattr(request, "order_id", "")]))
            elif outcome.code is ChangeCode.DONE:
                _count_done(wanted, order)
                answers.append(order)
            elif outcome.code is ChangeCode.REPEAT:
                answers.append(order)
            elif outcome.code is ChangeCode.DISAGREE:
                log.error(
                    "order and its hold disagree",
                    extra={"order_id": order.order_id, "hold": outcome.detail},
                )
                answers.append(RuntimeError(f"order {order.order_id!r} disagrees with its hold"))
            else:
                if outcome.code is ChangeCode.LAPSED:
                    ORDER_TRANSITIONS.labels(OrderStatus.EXPIRED.name).inc()
                answers.append(refused(request, outcome, order))
        return answers

    # --- reads ----------------------------------------------------------------------

    async def get_order(
        self, order_id: str, reader: str | None = None
    ) -> tuple[Order, list[StatusChange]]:
        """An order with its status history, read within `reader`'s share of reads in
        PostgreSQL (None: a reader without one)."""
        with self.readers.holding(reader):
            return await self._reader.submit(order_id)

    async def list_orders(
        self, query: ListOrders, reader: str | None = None
    ) -> tuple[list[Order], str]:
        """One page of a customer's orders and the token of the next ("" on the last),
        read within `reader`'s share of reads in PostgreSQL (a page costs the orders on
        it: one to start, the rest charged once read)."""
        with self.readers.holding(reader):
            page, token = await self._lister.submit(query)
        self.readers.charge(reader, len(page) - 1)
        return page, token

    def watch(self, wanted: WatchFilter) -> AsyncIterator[tuple[int, Any]]:
        """(cursor, wire event) of every event passing the filter after its cursor, then
        of each new one as it is sequenced."""
        return self.feed.stream(wanted)

    async def _read_batch(
        self, order_ids: Sequence[str]
    ) -> list[tuple[Order, list[StatusChange]] | BaseException]:
        found = await self.store.with_history(order_ids)
        return [found.get(oid) or NotFound("order", [oid]) for oid in order_ids]

    async def _list_batch(
        self, queries: Sequence[ListOrders]
    ) -> list[tuple[list[Order], str] | BaseException]:
        pages = await self.store.pages(queries)
        return [
            (orders, "" if last is None else query.token(last))
            for query, (orders, last) in zip(queries, pages, strict=True)
        ]


def _taken_over(command: CreateOrder, outcome: TakenOver) -> Answer:
    """What PostgreSQL's outcome of one CreateOrder from a held reservation means to its
    caller."""
    rid = command.order_id
    code = outcome.code
    if code is TakeOverCode.CREATED or code is TakeOverCode.REPEAT:
        assert outcome.order is not None
        if code is TakeOverCode.CREATED:
            _count_done(OrderStatus.PENDING_PAYMENT, outcome.order)
        return outcome.order
    if code is TakeOverCode.UNKNOWN:
        return NotFound("reservation", [rid])
    if code is TakeOverCode.OTHER_CUSTOMER:
        return not_held_for(command.customer_id, rid)
    if code is TakeOverCode.CONFLICT:
        return AlreadyExists("order", rid)
    hold = outcome.hold
    assert hold is not None, code
    if code is TakeOverCode.NOT_HELD:
        return not_held(rid, hold.status, "become an order")
    return LinesDiffer(
        rid,
        lines_text((line.sku, line.quantity) for line in hold.lines),
        lines_text((line.sku, line.quantity) for line in command.lines),
    )


def _line_refunded(
    request: RefundLine, outcome: LineRefunded
) -> tuple[Order, RefundNote] | BaseException:
    """What PostgreSQL's outcome of one RefundLine means to its caller."""
    code, order = outcome.code, outcome.order
    if code is LineRefundCode.UNKNOWN:
        return NotFound("order", [request.order_id])
    if code is LineRefundCode.CONFLICT:
        return AlreadyExists("line refund", request.line_refund_id)
    assert order is not None, code
    if code is LineRefundCode.REFUNDED or code is LineRefundCode.REPEAT:
        assert outcome.refund is not None
        if code is LineRefundCode.REFUNDED:
            ORDER_REFUNDS_OWED_MINOR.labels(order.currency).inc(outcome.refund.amount_minor)
            log.info(
                "line refunded; refund owed",
                extra={"order_id": order.order_id, "refund_id": outcome.refund.refund_id},
            )
        return order, outcome.refund
    if code is LineRefundCode.NOT_REFUNDABLE:
        return not_refundable(order)
    if code is LineRefundCode.NO_SUCH_LINE:
        return no_such_line(order, request.sku)
    if code is LineRefundCode.FREE_LINE:
        return free_line(order, request.sku)
    return exceeds_line(request, outcome.bought, outcome.refunded)


def _count_done(entered: OrderStatus, order: Order) -> None:
    """Count a transition made: the order rate, and the money it moved."""
    ORDER_TRANSITIONS.labels(entered.name).inc()
    if entered is OrderStatus.PAID:
        ORDER_PAID_MINOR.labels(order.currency).inc(order.paid_minor)
    elif entered is OrderStatus.CANCELLED and order.refund_owed_minor:
        ORDER_REFUNDS_OWED_MINOR.labels(order.currency).inc(order.refund_owed_minor)


def _created(command: CreateOrder, outcome: Created) -> tuple[Answer, tuple[str, datetime] | None]:
    """What PostgreSQL's outcome of one CreateOrder means to its caller, and the hold it
    made (order id, expiry), if any."""
    if outcome.code is CreateCode.REJECTED:
        if outcome.unknown_skus:
            return NotFound("sku", outcome.unknown_skus), None
        return InsufficientStock(outcome.shortages), None
    if outcome.code is CreateCode.RESERVATION:
        # Order ids and reservation ids are one namespace (an order's hold has its id).
        return AlreadyExists("order", command.order_id, f"reservation {command.order_id}"), None
    if outcome.code is CreateCode.CONFLICT or outcome.order is None:
        return AlreadyExists("order", command.order_id), None
    if outcome.code is CreateCode.CREATED:
        ORDER_TRANSITIONS.labels(OrderStatus.PENDING_PAYMENT.name).inc()
    return outcome.order, (command.order_id, outcome.order.payment_deadline)
