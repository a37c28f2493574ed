"""A simulated payment provider, shaped as card payment providers are: charges captured when
the shopper pays, refunds, a fee per charge, payouts of the available balance, a balance
transaction for every movement of money, and a signed webhook (simulators/webhooks.py) for
every charge, refund and payout outcome. Money is integer minor units with an ISO 4217
code, as stockcore's orders have it; times are Unix seconds.

    POST /v1/charges        {order_id, customer_id, amount, currency} (Idempotency-Key header:
                            the same key answers the same charge) -> the charge, captured
                            (402 with the charge when declined)
    GET  /v1/charges/{id}   a charge
    POST /v1/refunds        {charge, amount?, reason?} with an Idempotency-Key header
                            (required; the same key and body answer the same refund, another
                            body 409) -> the refund, pending until it settles
    GET  /v1/refunds/{id}   a refund
    POST /v1/payouts        {currency} -> a payout of the whole available balance (400 when
                            none is available)
    GET  /v1/balance        available and pending, per currency
    GET  /v1/balance_transactions?after=CURSOR&limit=N
                            the settlement feed (below)
    GET  /_webhooks         every event with its deliveries
    GET  /_faults/injected  every fault injected (simulators/payment_faults.py)

**Fees.** A captured charge costs `fee_fixed_minor` plus `fee_rate_bp` basis points of its
amount, rounded half up (30 + 2.9 % by default: a charge of 5999 pays 30 + 174, since 2.9 %
of 5999 is 173.97, so 204). A refund does not give the fee back.

**Balance transactions.** A captured charge makes two, `charge` (+amount) and `fee` (-fee),
both available `settle_s` after the capture; a refund makes `refund` (-amount) when it is
created, and a failed one `refund_failure` (+amount) when it fails; a payout makes `payout`
(-amount). Each has its id, type, source (the charge, refund or payout), the order, amount,
currency, created and available_on, and status (pending, then available). Money is
available once its available_on has passed; a payout takes all that is available.

**The settlement feed** lists balance transactions in the order they reached it, each with
its cursor; `after=` the last cursor read gives the next page (`has_more`, `next_cursor`),
and nothing is ever missed or listed twice by a reader that keeps its cursor. A settlement
that arrives late (the `settlement_late_*` knobs) reaches the feed, and takes its cursor,
that much after it was created, behind transactions created later.

**Payouts** are made on request, and every `payout_interval_s` (0: never) for each currency
with money available.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import re
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulators.faults import STATE_KEY, fault_app
from simulators.payment_faults import Injected, PaymentFaults
from simulators.webhooks import Event, WebhookEndpoint, WebhookSender

_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_AMOUNT = 10**12
_MAX_ID = 128
_PAGE_MAX = 100


@dataclass(frozen=True)
class Terms:
    """The provider's prices and timings."""

    fee_fixed_minor: int = 30
    fee_rate_bp: int = 290
    # Seconds from a capture until its money is available.
    settle_s: float = 2.0
    # Seconds from a refund's creation until it succeeds (or fails).
    refund_settle_s: float = 0.5
    payout_interval_s: float = 0.0

    def fee(self, amount: int) -> int:
        """The fee of a charge of `amount`: fixed plus the rate, rounded half up."""
        return self.fee_fixed_minor + (amount * self.fee_rate_bp + 5_000) // 10_000


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass
class Charge:
    """A charge: captured (succeeded) or declined (failed)."""

    charge_id: str
    order_id: str
    customer_id: str
    amount: int
    currency: str
    status: str
    created: float
    fee: int = 0
    balance_transaction: str = ""
    refunded: int = 0

    def view(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "id": self.charge_id,
            "object": "charge",
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "captured": self.status == "succeeded",
            "created": int(self.created),
            "fee": self.fee,
            "balance_transaction": self.balance_transaction,
            "amount_refunded": self.refunded,
            "failure_code": "card_declined" if self.status == "failed" else None,
        }


@dataclass
class Refund:
    """A refund of (part of) a charge: pending, then succeeded or failed."""

    refund_id: str
    charge_id: str
    order_id: str
    amount: int
    currency: str
    reason: str
    created: float
    request: tuple[str, int, str]
    status: str = "pending"

    def view(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "id": self.refund_id,
            "object": "refund",
            "charge": self.charge_id,
            "order_id": self.order_id,
            "amount": self.amount,
            "currency": self.currency,
            "reason": self.reason,
            "status": self.status,
            "created": int(self.created),
        }


@dataclass
class Payout:
    """A payout of the available balance of one currency."""

    payout_id: str
    amount: int
    currency: str
    created: float

    def view(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "id": self.payout_id,
            "object": "payout",
            "amount": self.amount,
            "currency": self.currency,
            "status": "paid",
            "created": int(self.created),
            "arrival_date": int(self.created),
        }


@dataclass
class BalanceTransaction:
    """One movement of the provider's balance."""

    txn_id: str
    type: str
    source: str
    order_id: str
    amount: int
    currency: str
    created: float
    available_on: float
    # When it reaches the settlement feed, and its cursor there once it has.
    reaches_feed_at: float
    cursor: int = 0

    def view(self, now: float) -> dict[str, Any]:
        """As the feed shows it."""
        return {
            "id": self.txn_id,
            "object": "balance_transaction",
            "cursor": str(self.cursor),
            "type": self.type,
            "source": self.source,
            "order_id": self.order_id,
            "amount": self.amount,
            "currency": self.currency,
            "created": int(self.created),
            "available_on": int(self.available_on),
            "status": "available" if now >= self.available_on else "pending",
        }


@dataclass
class Provider:
    """The provider's books and what it does with them."""

    terms: Terms
    sender: WebhookSender
    knobs: PaymentFaults
    injected: Injected
    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    payouts: dict[str, Payout] = field(default_factory=dict)
    # The feed, in the order transactions reached it (cursor n is feed[n - 1]), and those
    # on their way to it, late.
    feed: list[BalanceTransaction] = field(default_factory=list)
    late: list[BalanceTransaction] = field(default_factory=list)
    # Money available per currency, and what is not yet: (available_on, n, currency,
    # amount) by when it will be; kept as it changes, so a balance costs no scan.
    available: dict[str, int] = field(default_factory=dict)
    not_yet: list[tuple[float, int, str, int]] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)
    charge_keys: dict[str, tuple[tuple[str, str, int, str], str]] = field(default_factory=dict)
    refund_keys: dict[str, str] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # --- money moving ---------------------------------------------------------------

    def _due(self, knob: str, rate: float) -> bool:
        return self.sender.state.due(knob, rate)

    def _transaction(
        self, kind: str, source: str, order_id: str, amount: int, currency: str, available_on: float
    ) -> BalanceTransaction:
        now = time.time()
        reaches = now
        txn_id = _new_id("txn")
        if self._due("settlement_late", self.knobs.settlement_late_rate):
            reaches = now + self.knobs.settlement_late_s
            self.injected.add(
                "settlement_late",
                txn_id,
                order_id=order_id,
                detail=f"{kind} of {source} reaches the feed {self.knobs.settlement_late_s:g} s late",
            )
        txn = BalanceTransaction(
            txn_id, kind, source, order_id, amount, currency, now, available_on, reaches
        )
        heapq.heappush(self.not_yet, (available_on, next(self._serial), currency, amount))
        self.publish(now)
        if reaches > now:
            self.late.append(txn)
        else:
            self._to_feed(txn)
        return txn

    def _to_feed(self, txn: BalanceTransaction) -> None:
        txn.cursor = len(self.feed) + 1
        self.feed.append(txn)

    def publish(self, now: float) -> None:
        """Put in the feed every late transaction whose time to reach it has come, in the
        order they reach it."""
        if not any(t.reaches_feed_at <= now for t in self.late):
            return
        due = sorted(
            (t for t in self.late if t.reaches_feed_at <= now), key=lambda t: t.reaches_feed_at
        )
        self.late = [t for t in self.late if t.reaches_feed_at > now]
        for txn in due:
            self._to_feed(txn)

    def charge(self, order_id: str, customer_id: str, amount: int, currency: str) -> Charge:
        """Charge `amount` and capture it at once (or decline it)."""
        now = time.time()
        charge_id = _new_id("ch")
        if self._due("decline", self.knobs.decline_rate):
            self.injected.add("declined", charge_id, order_id=order_id, detail="card declined")
            charge = Charge(charge_id, order_id, customer_id, amount, currency, "failed", now)
            self.charges[charge_id] = charge
            self.sender.send(Event.new("charge.failed", charge.view()))
            return charge
        if self._due("amount_mismatch", self.knobs.amount_mismatch_rate):
            self.injected.add(
                "amount_mismatch",
                charge_id,
                order_id=order_id,
                detail=f"asked {amount} {currency}, captured {amount + 1} {currency}",
            )
            amount += 1
        if self._due("currency_mismatch", self.knobs.currency_mismatch_rate):
            other = "USD" if currency == "EUR" else "EUR"
            self.injected.add(
                "currency_mismatch",
                charge_id,
                order_id=order_id,
                detail=f"asked {amount} {currency}, captured {amount} {other}",
            )
            currency = other
        fee = self.terms.fee(amount)
        available_on = now + self.terms.settle_s
        txn = self._transaction("charge", charge_id, order_id, amount, currency, available_on)
        self._transaction("fee", charge_id, order_id, -fee, currency, available_on)
        charge = Charge(
            charge_id, order_id, customer_id, amount, currency, "succeeded", now, fee, txn.txn_id
        )
        self.charges[charge_id] = charge
        if self._due("confirmation_lost", self.knobs.confirmation_lost_rate):
            self.injected.add(
                "confirmation_lost", charge_id, order_id=order_id, detail="no webhook sent"
            )
        else:
            self.sender.send(Event.new("charge.succeeded", charge.view()))
        return charge

    def refund(self, charge: Charge, amount: int, reason: str, key: str) -> Refund:
        """Start refunding `amount` of a captured charge; it settles in the background."""
        now = time.time()
        refund = Refund(
            _new_id("re"),
            charge.charge_id,
            charge.order_id,
            amount,
            charge.currency,
            reason,
            now,
            (charge.charge_id, amount, reason),
        )
        self.refunds[refund.refund_id] = refund
        self.refund_keys[key] = refund.refund_id
        charge.refunded += amount
        self._transaction(
            "refund", refund.refund_id, charge.order_id, -amount, refund.currency, now
        )
        fails = self._due("refund_fail", self.knobs.refund_fail_rate)
        wait = self.terms.refund_settle_s
        if self._due("refund_late", self.knobs.refund_late_rate):
            wait += self.knobs.refund_late_s
            self.injected.add(
                "refund_late",
                refund.refund_id,
                order_id=charge.order_id,
                detail=f"settles {self.knobs.refund_late_s:g} s late",
            )
        if fails:
            self.injected.add(
                "refund_failed", refund.refund_id, order_id=charge.order_id, detail="refund fails"
            )
        self.background(self._settle_refund(refund, charge, wait, fails))
        return refund

    async def _settle_refund(
        self, refund: Refund, charge: Charge, wait: float, fails: bool
    ) -> None:
        await asyncio.sleep(wait)
        if fails:
            refund.status = "failed"
            charge.refunded -= refund.amount
            self._transaction(
                "refund_failure",
                refund.refund_id,
                refund.order_id,
                refund.amount,
                refund.currency,
                time.time(),
            )
            self.sender.send(Event.new("refund.failed", refund.view()))
        else:
            refund.status = "succeeded"
            self.sender.send(Event.new("refund.succeeded", refund.view()))

    def balance(self, now: float) -> tuple[dict[str, int], dict[str, int]]:
        """(available, pending) per currency."""
        while self.not_yet and self.not_yet[0][0] <= now:
            _, _, currency, amount = heapq.heappop(self.not_yet)
            self.available[currency] = self.available.get(currency, 0) + amount
        pending: dict[str, int] = {}
        for _, _, currency, amount in self.not_yet:
            pending[currency] = pending.get(currency, 0) + amount
        return dict(self.available), pending

    def payout(self, currency: str) -> Payout | None:
        """Pay out all that is available in `currency` (None: nothing is)."""
        now = time.time()
        amount = self.balance(now)[0].get(currency, 0)
        if amount <= 0:
            return None
        payout = Payout(_new_id("po"), amount, currency, now)
        self.payouts[payout.payout_id] = payout
        self._transaction("payout", payout.payout_id, "", -amount, currency, now)
        self.sender.send(Event.new("payout.paid", payout.view()))
        return payout

    async def pay_out_every(self, interval_s: float) -> None:
        """Pay out every currency's available balance every `interval_s`."""
        while True:
            await asyncio.sleep(interval_s)
            for currency in sorted(self.balance(time.time())[0]):
                self.payout(currency)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` until it ends or the provider stops."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def page(self, after: int, limit: int, now: float) -> list[BalanceTransaction]:
        """Up to `limit` transactions of the feed after cursor `after`, late ones whose
        time has come put in first."""
        self.publish(now)
        return self.feed[after : after + limit]


PROVIDER_KEY: web.AppKey[Provider] = web.AppKey("provider", Provider)


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID and value.isprintable()


def _amount(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_AMOUNT


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def create_charge(request: web.Request) -> web.Response:
    """POST /v1/charges."""
    body = await _body(request)
    if body is None:
        return _bad("a JSON object is required")
    order_id, customer_id = body.get("order_id"), body.get("customer_id", "")
    amount, currency = body.get("amount"), body.get("currency")
    if not _id(order_id) or not (customer_id == "" or _id(customer_id)):
        return _bad("order_id (and customer_id, if any) must be 1-128 printable characters")
    if not _amount(amount) or not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        return _bad("amount must be a positive integer of minor units, currency an ISO 4217 code")
    assert isinstance(order_id, str) and isinstance(amount, int) and isinstance(customer_id, str)
    provider = request.app[PROVIDER_KEY]
    key = request.headers.get("Idempotency-Key")
    asked = (order_id, customer_id, amount, currency)
    if key:
        known = provider.charge_keys.get(key)
        if known is not None:
            if known[0] != asked:
                return _bad("the Idempotency-Key was used for another charge", 409)
            return _charged(provider.charges[known[1]])
    charge = provider.charge(order_id, customer_id, amount, currency)
    if key:
        provider.charge_keys[key] = (asked, charge.charge_id)
    return _charged(charge)


def _charged(charge: Charge) -> web.Response:
    # A declined card is 402, with the charge, as payment APIs answer it.
    return web.json_response(charge.view(), status=200 if charge.status == "succeeded" else 402)


async def get_charge(request: web.Request) -> web.Response:
    """GET /v1/charges/{charge_id}."""
    charge = request.app[PROVIDER_KEY].charges.get(request.match_info["charge_id"])
    return _bad("no such charge", 404) if charge is None else web.json_response(charge.view())


async def create_refund(request: web.Request) -> web.Response:
    """POST /v1/refunds."""
    key = request.headers.get("Idempotency-Key", "")
    if not _id(key):
        return _bad("an Idempotency-Key header (1-128 printable characters) is required")
    body = await _body(request)
    if body is None:
        return _bad("a JSON object is required")
    provider = request.app[PROVIDER_KEY]
    charge = provider.charges.get(str(body.get("charge", "")))
    if charge is None:
        return _bad("no such charge", 404)
    amount = body.get("amount", charge.amount - charge.refunded)
    reason = body.get("reason", "requested_by_customer")
    if not _amount(amount) or not isinstance(reason, str) or len(reason) > 200:
        return _bad("amount must be a positive integer of minor units, reason a short text")
    assert isinstance(amount, int)
    known = provider.refund_keys.get(key)
    if known is not None:
        refund = provider.refunds[known]
        if refund.request != (charge.charge_id, amount, reason):
            return _bad("the Idempotency-Key was used for another refund", 409)
        return web.json_response(refund.view())
    if charge.status != "succeeded":
        return _bad("the charge captured nothing")
    if amount > charge.amount - charge.refunded:
        return _bad(f"at most {charge.amount - charge.refunded} is left to refund")
    return web.json_response(provider.refund(charge, amount, reason, key).view())


async def get_refund(request: web.Request) -> web.Response:
    """GET /v1/refunds/{refund_id}."""
    refund = request.app[PROVIDER_KEY].refunds.get(request.match_info["refund_id"])
    return _bad("no such refund", 404) if refund is None else web.json_response(refund.view())


async def create_payout(request: web.Request) -> web.Response:
    """POST /v1/payouts."""
    body = await _body(request)
    currency = None if body is None else body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        return _bad("currency (an ISO 4217 code) is required")
    payout = request.app[PROVIDER_KEY].payout(currency)
    if payout is None:
        return _bad(f"no {currency} is available to pay out")
    return web.json_response(payout.view())


async def get_balance(request: web.Request) -> web.Response:
    """GET /v1/balance."""
    available, pending = request.app[PROVIDER_KEY].balance(time.time())
    return web.json_response(
        {
            "available": [{"currency": c, "amount": a} for c, a in sorted(available.items())],
            "pending": [{"currency": c, "amount": a} for c, a in sorted(pending.items())],
        }
    )


async def balance_transactions(request: web.Request) -> web.Response:
    """GET /v1/balance_transactions?after=CURSOR&limit=N."""
    try:
        after = int(request.query.get("after") or 0)
        limit = int(request.query.get("limit") or _PAGE_MAX)
        if after < 0 or not 1 <= limit <= _PAGE_MAX:
            raise ValueError
    except ValueError:
        return _bad(f"after must be a cursor (a number >= 0), limit 1-{_PAGE_MAX}")
    now = time.time()
    provider = request.app[PROVIDER_KEY]
    page = provider.page(after, limit, now)
    next_cursor = page[-1].cursor if page else after
    return web.json_response(
        {
            "data": [txn.view(now) for txn in page],
            "has_more": next_cursor < len(provider.feed),
            "next_cursor": str(next_cursor),
        }
    )


async def webhooks(request: web.Request) -> web.Response:
    """GET /_webhooks: every event with its deliveries, oldest first."""
    sender = request.app[PROVIDER_KEY].sender
    return web.json_response({"events": [d.view() for d in sender.deliveries.values()]})


async def injected_faults(request: web.Request) -> web.Response:
    """GET /_faults/injected[?kind=...]."""
    faults = request.app[PROVIDER_KEY].injected.of_kind(request.query.get("kind"))
    return web.json_response({"injected": [f.view() for f in faults]})


def payments_app(
    endpoint: WebhookEndpoint, terms: Terms | None = None, seed: int | None = None
) -> web.Application:
    """The provider's application, sending its webhooks to `endpoint`."""
    app = fault_app(seed)
    state = app[STATE_KEY]
    knobs = PaymentFaults()
    state.extra = knobs
    injected = Injected()
    provider = Provider(
        terms or Terms(), WebhookSender(endpoint, state, knobs, injected), knobs, injected
    )
    app[PROVIDER_KEY] = provider

    async def running(_: web.Application) -> Any:
        await provider.sender.start()
        if provider.terms.payout_interval_s > 0:
            provider.background(provider.pay_out_every(provider.terms.payout_interval_s))
        yield
        for task in list(provider.tasks):
            task.cancel()
        for task in list(provider.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await provider.sender.close()

    app.cleanup_ctx.append(running)
    app.router.add_post("/v1/charges", create_charge, name="charge")
    app.router.add_get("/v1/charges/{charge_id}", get_charge, name="get_charge")
    app.router.add_post("/v1/refunds", create_refund, name="refund")
    app.router.add_get("/v1/refunds/{refund_id}", get_refund, name="get_refund")
    app.router.add_post("/v1/payouts", create_payout, name="payout")
    app.router.add_get("/v1/balance", get_balance, name="balance")
    app.router.add_get(
        "/v1/balance_transactions", balance_transactions, name="balance_transactions"
    )
    app.router.add_get("/_webhooks", webhooks)
    app.router.add_get("/_faults/injected", injected_faults)
    return app


def read_secret(path: str) -> bytes:
    """The signing secret in a file: its first line that is not blank."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.strip().encode()
    raise ValueError(f"{path} holds no secret")
