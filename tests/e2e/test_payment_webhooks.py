"""The payment provider's webhooks over the real stack: the simulated provider as a real
HTTP server, stockcore's webhook receiver (payments/) with a token that may only pay, the
server over TLS with token checks, PostgreSQL and Redis. A captured charge pays its order
once whatever happens to its deliveries; a forged, stale or replayed delivery changes
nothing; a charge that can pay nothing is money to return; the settlement feed lists the
charge and its fee."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from clients.cli import ExitCode
from clients.credentials import Credentials
from clients.inventory import InventoryClient
from clients.orders import Order, OrderClient, OrderStatus
from payments.endpoint import RunningReceiver
from payments.signature import SIGNATURE_HEADER, sign
from runtime.processes import free_port
from server.app import App
from server.config import Settings
from simulators.payments import Terms
from simulators.webhooks import Event
from tests.e2e.payments_stack import (
    PAYER,
    TERMS,
    Provider,
    new_secret,
    receiver_settings,
    running_provider,
    running_receiver,
)
from tests.e2e.test_refunds import cancel, paid_order, running_sender, sender_settings, settled
from tests.invariants import assert_invariants_hold
from tests.support import connected
from tests.waiting import until

SKU = "PAY-SKU-1"
PRICE = 5999
PENDING = OrderStatus.ORDER_STATUS_PENDING_PAYMENT
PAID = OrderStatus.ORDER_STATUS_PAID


async def new_order(app: App, order_id: str, window: float = 600.0) -> Order:
    """An order of one unit at PRICE, pending payment, its stock put on hand first."""
    target = f"127.0.0.1:{app.port}"
    async with InventoryClient(target) as inventory:
        await inventory.adjust_stock(SKU, delta=1, reason="payments", idempotency_key=order_id)
    async with OrderClient(target) as orders:
        return await orders.create_order(order_id, "cust-1", [(SKU, 1, PRICE)], "EUR", window)


async def order_of(app: App, order_id: str) -> tuple[Order, list[Any]]:
    """An order and its history."""
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        return await orders.get_order(order_id)


async def wait_status(app: App, order_id: str, wanted: OrderStatus.ValueType) -> Order:
    """Wait until the order has `wanted` status; the order."""
    seen: list[Order] = []

    async def reached() -> bool:
        seen.append((await order_of(app, order_id))[0])
        return seen[-1].status == wanted

    await until(reached, f"order {order_id} {OrderStatus.Name(wanted)}", 20)
    return seen[-1]


async def rows(dsn: str, query: str, *args: object) -> list[dict[str, Any]]:
    """The rows of a query, as dicts."""
    async with connected(dsn) as conn:
        return [dict(r) for r in await conn.fetch(query, *args)]


async def recorded(dsn: str, object_id: str) -> list[dict[str, Any]]:
    """The receiver's record of the events about a charge."""
    return await rows(dsn, "SELECT * FROM stockcore.payment_events WHERE object_id = $1", object_id)


async def to_return(dsn: str) -> list[dict[str, Any]]:
    """Every payment to return."""
    return await rows(dsn, "SELECT * FROM stockcore.payments_to_return ORDER BY charge_id")


async def wait_recorded(dsn: str, object_id: str) -> dict[str, Any]:
    """Wait until the receiver recorded the event about a charge; its row."""
    await until(lambda: _any(recorded(dsn, object_id)), f"the event of {object_id} recorded", 20)
    [row] = await recorded(dsn, object_id)
    return row


async def _any(found: Any) -> bool:
    return bool(await found)


async def acknowledged(provider: Provider, object_id: str) -> bool:
    """Whether the provider holds every event about the object acknowledged."""
    found = await provider.events_of(object_id)
    return bool(found) and all(e["acknowledged"] for e in found)


async def invariants_hold(dsn: str) -> None:
    """stockcore.invariant_violations() finds nothing."""
    async with connected(dsn) as conn:
        await assert_invariants_hold(conn)


async def post(url: str, body: bytes, header: str | None) -> tuple[int, dict[str, Any]]:
    """One delivery to the receiver, as an attacker or the provider would send it."""
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers[SIGNATURE_HEADER] = header
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, dict(await r.json())


def charge_event(order_id: str, charge_id: str, amount: int = PRICE) -> bytes:
    """A charge.succeeded event as the provider sends it."""
    charge = {
        "id": charge_id,
        "object": "charge",
        "order_id": order_id,
        "customer_id": "cust-1",
        "amount": amount,
        "currency": "EUR",
        "status": "succeeded",
        "captured": True,
    }
    return Event(f"evt_{charge_id}", "charge.succeeded", int(time.time()), charge).body()


async def test_a_captured_charge_makes_its_order_paid_through_the_webhook(
    app: App, provider: Provider, dsn: str
) -> None:
    order = await new_order(app, "wh-paid")
    charge = await provider.charge(order.order_id, order.total_minor, key="checkout-wh-paid")

    paid = await wait_status(app, order.order_id, PAID)
    assert (paid.payment_id, paid.paid_minor) == (charge["id"], PRICE)
    _, history = await order_of(app, order.order_id)
    assert [(c.to_status, c.caller) for c in history][-1] == (PAID, PAYER)
    event = await wait_recorded(dsn, charge["id"])
    assert (event["type"], event["order_id"], event["amount_minor"], event["currency"]) == (
        "charge.succeeded",
        order.order_id,
        PRICE,
        "EUR",
    )
    assert (event["outcome"], event["deliveries"]) == (1, 1)
    await until(lambda: acknowledged(provider, charge["id"]), "the provider acknowledged", 10)
    assert await to_return(dsn) == []
    await invariants_hold(dsn)


async def test_forged_tampered_stale_and_future_deliveries_are_refused_and_change_nothing(
    app: App, receiver: RunningReceiver, secret: tuple[bytes, Path], dsn: str
) -> None:
    order = await new_order(app, "wh-forged")
    body = charge_event(order.order_id, "ch_forged")
    now = int(time.time())
    key = secret[0]
    refused = [
        await post(receiver.url, body, None),
        await post(receiver.url, body, "t=1,v1=nonsense"),
        await post(receiver.url, body, sign(new_secret(), body, now)),
        await post(receiver.url, body.replace(b"5999", b"1"), sign(key, body, now)),
        # Well outside the 300 s window, however long the requests before took.
        await post(receiver.url, body, sign(key, body, now - 600)),
        await post(receiver.url, body, sign(key, body, now + 600)),
    ]
    assert [status for status, _ in refused] == [401] * 6
    assert [answer["error"] for _, answer in refused] == [
        "malformed signature header",
        "malformed signature header",
        "no matching signature",
        "no matching signature",
        "timestamp too old",
        "timestamp in the future",
    ]
    # A genuine body that is no event is refused too.
    assert (await post(receiver.url, b"[]", sign(key, b"[]", now)))[0] == 400
    found, _ = await order_of(app, order.order_id)
    assert (found.status, found.payment_id) == (PENDING, "")
    assert await rows(dsn, "SELECT * FROM stockcore.payment_events") == []
    await invariants_hold(dsn)


async def test_a_replayed_delivery_is_counted_once_also_after_the_receiver_restarts(
    app: App,
    settings: Settings,
    receiver: RunningReceiver,
    secret: tuple[bytes, Path],
    payer: Credentials,
    dsn: str,
) -> None:
    order = await new_order(app, "wh-replayed")
    body = charge_event(order.order_id, "ch_replayed")
    header = sign(secret[0], body, int(time.time()))
    assert await post(receiver.url, body, header) == (
        200,
        {"event_id": "evt_ch_replayed", "outcome": "PAID", "duplicate": False},
    )
    await receiver.stop()
    # What was acknowledged is in PostgreSQL: a receiver started anew knows the event.
    assert settings.pg_dsn is not None
    config = receiver_settings(settings.pg_dsn, app.port, secret[1])
    async with running_receiver(config, payer) as again:
        assert await post(again.url, body, header) == (
            200,
            {"event_id": "evt_ch_replayed", "outcome": "PAID", "duplicate": True},
        )
    [event] = await recorded(dsn, "ch_replayed")
    assert event["deliveries"] == 2
    _, history = await order_of(app, order.order_id)
    assert [c.to_status for c in history].count(PAID) == 1
    await invariants_hold(dsn)


async def test_a_payment_replayed_after_its_order_was_cancelled_stays_paid_and_owes_no_return(
    app: App, receiver: RunningReceiver, secret: tuple[bytes, Path], dsn: str
) -> None:
    # A delivery again is decided again (ConfirmPayment is idempotent on the charge id);
    # what the answer and the tables say is what the first delivery recorded.
    order = await new_order(app, "wh-replayed-late")
    body = charge_event(order.order_id, "ch_replayed_late")
    assert await post(receiver.url, body, sign(secret[0], body, int(time.time()))) == (
        200,
        {"event_id": "evt_ch_replayed_late", "outcome": "PAID", "duplicate": False},
    )
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        await orders.cancel_order(order.order_id, "changed their mind")

    assert await post(receiver.url, body, sign(secret[0], body, int(time.time()))) == (
        200,
        {"event_id": "evt_ch_replayed_late", "outcome": "PAID", "duplicate": True},
    )
    [event] = await recorded(dsn, "ch_replayed_late")
    assert (event["outcome"], event["deliveries"]) == (1, 2)
    assert await to_return(dsn) == []
    found, history = await order_of(app, order.order_id)
    assert (found.status, found.payment_id) == (
        OrderStatus.ORDER_STATUS_CANCELLED,
        "ch_replayed_late",
    )
    assert [c.to_status for c in history].count(PAID) == 1
    await invariants_hold(dsn)


async def test_a_duplicated_webhook_is_counted_once(app: App, provider: Provider, dsn: str) -> None:
    await provider.faults(webhook_duplicate_rate=1)
    order = await new_order(app, "wh-twice")
    charge = await provider.charge(order.order_id, order.total_minor)

    await wait_status(app, order.order_id, PAID)
    [delivery] = await provider.events_of(charge["id"])
    [injected] = await provider.injected("webhook_duplicated")
    assert injected["event_id"] == delivery["event_id"]
    await until(lambda: acknowledged(provider, charge["id"]), "both deliveries answered", 10)
    assert (await provider.events_of(charge["id"]))[0]["sent"] == 2
    [event] = await recorded(dsn, charge["id"])
    assert (event["event_id"], event["deliveries"], event["outcome"]) == (
        delivery["event_id"],
        2,
        1,
    )
    _, history = await order_of(app, order.order_id)
    assert [c.to_status for c in history].count(PAID) == 1
    await invariants_hold(dsn)


async def test_a_dropped_webhook_is_sent_again_and_pays_once(
    app: App, provider: Provider, dsn: str
) -> None:
    await provider.faults(webhook_drop_rate=1)
    order = await new_order(app, "wh-dropped")
    charge = await provider.charge(order.order_id, order.total_minor)

    await wait_status(app, order.order_id, PAID)
    await until(lambda: acknowledged(provider, charge["id"]), "the retry acknowledged", 10)
    [delivery] = await provider.events_of(charge["id"])
    assert (delivery["attempts"], delivery["sent"]) == (2, 1)
    assert [f["object_id"] for f in await provider.injected("webhook_dropped")] == [charge["id"]]
    assert (await wait_recorded(dsn, charge["id"]))["deliveries"] == 1
    await invariants_hold(dsn)


async def test_webhooks_are_sent_again_until_the_receiver_is_back(
    app: App,
    settings: Settings,
    secret: tuple[bytes, Path],
    payer: Credentials,
    dsn: str,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/payments"
    async with running_provider(url, secret[0]) as provider:
        order = await new_order(app, "wh-down")
        charge = await provider.charge(order.order_id, order.total_minor)

        async def tried_while_down() -> bool:
            found = await provider.events_of(charge["id"])
            return bool(found) and found[0]["attempts"] >= 3

        await until(tried_while_down, "three attempts while the receiver is down", 10)
        [delivery] = await provider.events_of(charge["id"])
        assert not delivery["acknowledged"] and delivery["sent"] == 0
        assert (await order_of(app, order.order_id))[0].status == PENDING

        assert settings.pg_dsn is not None
        config = receiver_settings(settings.pg_dsn, app.port, secret[1], port=port)
        async with running_receiver(config, payer):
            paid = await wait_status(app, order.order_id, PAID)
            await until(lambda: acknowledged(provider, charge["id"]), "acknowledged", 10)
        assert paid.payment_id == charge["id"]
        [delivery] = await provider.events_of(charge["id"])
        assert delivery["attempts"] >= 4 and delivery["sent"] == 1
    await invariants_hold(dsn)


async def test_a_charge_for_a_cancelled_order_is_money_to_return(
    app: App, provider: Provider, dsn: str
) -> None:
    order = await new_order(app, "wh-cancelled")
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        await orders.cancel_order(order.order_id, "changed their mind")
    charge = await provider.charge(order.order_id, order.total_minor)

    event = await wait_recorded(dsn, charge["id"])
    assert event["outcome"] == 2
    assert [
        (r["charge_id"], r["order_id"], r["amount_minor"], r["currency"], r["reason"])
        for r in await to_return(dsn)
    ] == [(charge["id"], order.order_id, PRICE, "EUR", 1)]
    await until(lambda: acknowledged(provider, charge["id"]), "acknowledged", 10)
    found, _ = await order_of(app, order.order_id)
    assert (found.status, found.payment_id) == (OrderStatus.ORDER_STATUS_CANCELLED, "")
    await invariants_hold(dsn)
    # What operators see of it.
    listed = await stockctl(dsn, "returns", "--json")
    [shown] = json.loads(listed.stdout)["payments_to_return"]
    assert (shown["charge_id"], shown["reason"], shown["returned_at"]) == (
        charge["id"],
        "ORDER_NOT_PAYABLE",
        None,
    )
    one = await stockctl(dsn, "event", event["event_id"], "--json")
    assert json.loads(one.stdout)["outcome"] == "TO_RETURN"
    assert (await stockctl(dsn, "event", "evt_none")).returncode == ExitCode.NOT_FOUND


async def stockctl(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`stockctl payments ...` against the test database."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "clients.cli", "payments", *args, "--pg", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_charge_for_an_expired_order_is_money_to_return(
    app: App, provider: Provider, dsn: str
) -> None:
    order = await new_order(app, "wh-expired", window=1.0)
    await wait_status(app, order.order_id, OrderStatus.ORDER_STATUS_EXPIRED)
    charge = await provider.charge(order.order_id, order.total_minor)

    assert (await wait_recorded(dsn, charge["id"]))["outcome"] == 2
    assert [(r["charge_id"], r["reason"]) for r in await to_return(dsn)] == [(charge["id"], 1)]
    await invariants_hold(dsn)


async def test_a_charge_of_another_amount_is_money_to_return_and_pays_nothing(
    app: App, provider: Provider, dsn: str
) -> None:
    await provider.faults(amount_mismatch_rate=1)
    order = await new_order(app, "wh-differs")
    charge = await provider.charge(order.order_id, order.total_minor)
    assert charge["amount"] == PRICE + 1

    assert (await wait_recorded(dsn, charge["id"]))["outcome"] == 2
    assert [(r["charge_id"], r["amount_minor"], r["reason"]) for r in await to_return(dsn)] == [
        (charge["id"], PRICE + 1, 2)
    ]
    assert [f["object_id"] for f in await provider.injected("amount_mismatch")] == [charge["id"]]
    assert (await order_of(app, order.order_id))[0].status == PENDING
    await invariants_hold(dsn)


async def test_a_charge_for_an_unknown_order_is_refused_and_recorded_nowhere(
    provider: Provider, dsn: str
) -> None:
    charge = await provider.charge("wh-no-such-order", PRICE)

    async def refused_twice() -> bool:
        found = await provider.events_of(charge["id"])
        return bool(found) and found[0]["sent"] >= 2

    await until(refused_twice, "two deliveries refused", 10)
    [delivery] = await provider.events_of(charge["id"])
    assert (delivery["acknowledged"], delivery["last_outcome"]) == (False, "400")
    assert await rows(dsn, "SELECT * FROM stockcore.payment_events") == []
    assert await to_return(dsn) == []


async def test_the_settlement_feed_lists_the_charge_and_its_fee(
    app: App, provider: Provider, dsn: str
) -> None:
    order = await new_order(app, "wh-feed")
    charge = await provider.charge(order.order_id, order.total_minor)
    await wait_status(app, order.order_id, PAID)

    feed, _ = await provider.feed()
    fee = Terms().fee(PRICE)
    assert charge["fee"] == fee == 30 + 174
    assert [(t["type"], t["source"], t["order_id"], t["amount"], t["currency"]) for t in feed] == [
        ("charge", charge["id"], order.order_id, PRICE, "EUR"),
        ("fee", charge["id"], order.order_id, -fee, "EUR"),
    ]
    assert all(t["available_on"] - t["created"] <= TERMS.settle_s + 1 for t in feed)
    event = await wait_recorded(dsn, charge["id"])
    assert event["amount_minor"] == feed[0]["amount"]
    assert json.loads(event["body"])["data"]["object"]["balance_transaction"] == feed[0]["id"]


async def test_a_refunds_outcome_delivered_again_is_answered_as_a_repeat_and_counted(
    app: App, provider: Provider, receiver: RunningReceiver, secret: tuple[bytes, Path], dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "wh-refund-again")
    await cancel(app, order.order_id)
    async with running_sender(sender_settings(dsn, provider)):
        refund = await settled(dsn, order.order_id, 3)
    [delivered] = await provider.events_of(refund["provider_refund_id"])
    await until(lambda: acknowledged(provider, refund["provider_refund_id"]), "acknowledged", 10)
    body = Event(
        delivered["event_id"],
        "refund.succeeded",
        int(time.time()),
        {
            "id": refund["provider_refund_id"],
            "object": "refund",
            "charge": charge_id,
            "order_id": order.order_id,
            "amount": PRICE,
            "currency": "EUR",
            "status": "succeeded",
        },
    ).body()

    answer = await post(receiver.url, body, sign(secret[0], body, int(time.time())))

    assert answer == (
        200,
        {"event_id": delivered["event_id"], "outcome": "REFUND_SETTLED", "duplicate": True},
    )
    event = await wait_recorded(dsn, refund["provider_refund_id"])
    assert (event["outcome"], event["deliveries"]) == (4, 2)
    await invariants_hold(dsn)
