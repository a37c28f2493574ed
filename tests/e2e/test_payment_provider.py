"""The simulated payment provider (simulators/payments.py) as a real HTTP server: charges
with their fee, refunds with an idempotency key, payouts, the settlement feed read by
cursor, signed webhooks retried until acknowledged, and each fault injected at the rate
asked and recorded."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from simulators.payments import Terms
from tests.e2e.payments_stack import (
    TERMS,
    Provider,
    StandInEndpoint,
    new_secret,
    running_provider,
    stand_in_endpoint,
)
from tests.waiting import until, until_true


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[StandInEndpoint, str]]:
    """A stand-in webhook endpoint."""
    async with stand_in_endpoint(new_secret()) as started:
        yield started


@pytest.fixture
async def provider(endpoint: tuple[StandInEndpoint, str]) -> AsyncIterator[Provider]:
    """The provider, sending its webhooks to the stand-in endpoint."""
    stand_in, url = endpoint
    async with running_provider(url, stand_in.secret) as started:
        yield started


def test_the_fee_is_fixed_plus_the_rate_rounded_half_up() -> None:
    terms = Terms(fee_fixed_minor=30, fee_rate_bp=290)
    assert terms.fee(5999) == 30 + 174  # 173.971
    assert terms.fee(50) == 30 + 1  # 1.45
    assert terms.fee(1000) == 30 + 29
    assert Terms(fee_fixed_minor=25, fee_rate_bp=140).fee(100_000) == 25 + 1400


async def test_a_captured_charge_and_its_fee_reach_the_feed_and_become_available(
    provider: Provider,
) -> None:
    charge = await provider.charge("order-1", 5999, key="k-1")
    assert (charge["status"], charge["captured"], charge["fee"]) == ("succeeded", True, 204)
    feed, _ = await provider.feed()
    assert [(t["type"], t["source"], t["order_id"], t["amount"], t["currency"]) for t in feed] == [
        ("charge", charge["id"], "order-1", 5999, "EUR"),
        ("fee", charge["id"], "order-1", -204, "EUR"),
    ]
    assert feed[0]["id"] == charge["balance_transaction"]
    assert [t["cursor"] for t in feed] == ["1", "2"]
    assert all(t["available_on"] >= t["created"] for t in feed)
    _, balance = await provider.call("GET", "/v1/balance")
    assert balance["pending"] == [{"currency": "EUR", "amount": 5999 - 204}]

    async def available() -> bool:
        _, now = await provider.call("GET", "/v1/balance")
        return bool(now["available"] == [{"currency": "EUR", "amount": 5795}])

    await until(available, "the capture available after settle_s", 5)


async def test_the_same_idempotency_key_answers_the_same_charge_and_another_body_409(
    provider: Provider,
) -> None:
    first = await provider.charge("order-1", 1000, key="k-1")
    again = await provider.charge("order-1", 1000, key="k-1")
    assert again == first
    await provider.charge("order-1", 1001, key="k-1", expect=409)
    other = await provider.charge("order-1", 1000, key="k-2")
    assert other["id"] != first["id"]
    feed, _ = await provider.feed()
    assert len(feed) == 4


async def test_a_refund_needs_a_key_and_the_same_key_refunds_once(
    provider: Provider, endpoint: tuple[StandInEndpoint, str]
) -> None:
    stand_in, _ = endpoint
    charge = await provider.charge("order-1", 5000)
    await provider.call("POST", "/v1/refunds", json={"charge": charge["id"]}, expect=400)
    refund = await provider.refund(charge["id"], "r-1", 2000)
    assert (refund["status"], refund["amount"], refund["charge"]) == ("pending", 2000, charge["id"])
    assert await provider.refund(charge["id"], "r-1", 2000) == refund
    await provider.refund(charge["id"], "r-1", 1999, expect=409)
    await provider.refund(charge["id"], "r-2", 3001, expect=400)  # 3000 is left
    rest = await provider.refund(charge["id"], "r-3")
    assert rest["amount"] == 3000

    await until_true(
        lambda: (
            {"refund.succeeded"} <= {d.event["type"] for d in stand_in.got}
            and len([d for d in stand_in.got if d.event["type"] == "refund.succeeded"]) == 2
        ),
        "both refunds settled",
        5,
    )
    _, settled = await provider.call("GET", f"/v1/refunds/{refund['id']}")
    assert settled["status"] == "succeeded"
    feed, _ = await provider.feed()
    assert [(t["type"], t["source"], t["amount"]) for t in feed if t["type"] == "refund"] == [
        ("refund", refund["id"], -2000),
        ("refund", rest["id"], -3000),
    ]


async def test_a_failed_refund_gives_its_money_back_in_the_feed(provider: Provider) -> None:
    charge = await provider.charge("order-1", 5000)
    await provider.faults(refund_fail_rate=1)
    refund = await provider.refund(charge["id"], "r-1")

    async def failed() -> bool:
        _, now = await provider.call("GET", f"/v1/refunds/{refund['id']}")
        return bool(now["status"] == "failed")

    await until(failed, "the refund failed", 5)
    feed, _ = await provider.feed()
    assert [(t["type"], t["amount"]) for t in feed if t["source"] == refund["id"]] == [
        ("refund", -5000),
        ("refund_failure", 5000),
    ]
    assert [f["object_id"] for f in await provider.injected("refund_failed")] == [refund["id"]]
    await until(
        lambda: _has_event(provider, refund["id"], "refund.failed"), "refund.failed sent", 5
    )


async def _has_event(provider: Provider, object_id: str, kind: str) -> bool:
    return any(e["type"] == kind for e in await provider.events_of(object_id))


async def test_a_payout_takes_the_whole_available_balance(provider: Provider) -> None:
    await provider.call("POST", "/v1/payouts", json={"currency": "EUR"}, expect=400)
    charges = [await provider.charge(f"order-{i}", 1000) for i in range(3)]
    await asyncio.sleep(TERMS.settle_s)
    _, payout = await provider.call("POST", "/v1/payouts", json={"currency": "EUR"})
    assert payout["amount"] == sum(c["amount"] - c["fee"] for c in charges)
    _, balance = await provider.call("GET", "/v1/balance")
    assert balance["available"] == [{"currency": "EUR", "amount": 0}]
    feed, _ = await provider.feed()
    assert feed[-1]["type"] == "payout" and feed[-1]["amount"] == -payout["amount"]


async def test_a_late_settlement_reaches_the_feed_behind_later_ones_and_a_cursor_misses_none(
    provider: Provider,
) -> None:
    await provider.faults(settlement_late_rate=1, settlement_late_s=3.0)
    late = await provider.charge("order-late", 1000)
    await provider.faults(settlement_late_rate=0)
    prompt = await provider.charge("order-prompt", 2000)
    first, cursor = await provider.feed(limit=1)
    assert [t["source"] for t in first] == [prompt["id"], prompt["id"]]
    rest: list[dict[str, Any]] = []

    async def arrived() -> bool:
        rest[:] = (await provider.feed(after=cursor, limit=1))[0]
        return len(rest) == 2

    await until(arrived, "the late settlement in the feed", 10)
    assert [(t["source"], t["type"]) for t in rest] == [(late["id"], "charge"), (late["id"], "fee")]
    # Created first, listed last: the feed's order is arrival's, and the cursor follows it.
    assert rest[0]["created"] <= first[0]["created"]
    assert [int(t["cursor"]) for t in first + rest] == [1, 2, 3, 4]
    assert {f["object_id"] for f in await provider.injected("settlement_late")} == {
        rest[0]["id"],
        rest[1]["id"],
    }


async def test_an_event_is_signed_afresh_and_sent_again_until_acknowledged(
    provider: Provider, endpoint: tuple[StandInEndpoint, str]
) -> None:
    stand_in, _ = endpoint
    stand_in.failures = [500, 503, 400]
    charge = await provider.charge("order-1", 1000)
    await until(lambda: _acknowledged(provider, charge["id"]), "the event acknowledged at last", 10)
    [delivery] = await provider.events_of(charge["id"])
    assert delivery["attempts"] == 4 and delivery["type"] == "charge.succeeded"
    assert [d.status for d in stand_in.got] == [500, 503, 400, 200]
    assert len(set(stand_in.event_ids())) == 1
    assert stand_in.got[-1].event["data"]["object"]["id"] == charge["id"]


async def _acknowledged(provider: Provider, object_id: str) -> bool:
    found = await provider.events_of(object_id)
    return bool(found) and all(e["acknowledged"] for e in found)


def _share(population: int, rate: float) -> int:
    """How many of `population` a rate spread evenly hits."""
    return int(population * rate + 1e-9)


async def test_each_fault_is_injected_at_its_rate_and_recorded(
    provider: Provider, endpoint: tuple[StandInEndpoint, str]
) -> None:
    stand_in, _ = endpoint
    # Rates whose hits never fall on the same event here, so each shows on its own.
    rates = {
        "decline_rate": 1 / 10,
        "amount_mismatch_rate": 1 / 7,
        "currency_mismatch_rate": 1 / 9,
        "confirmation_lost_rate": 1 / 11,
        "webhook_drop_rate": 1 / 10,
        "webhook_duplicate_rate": 1 / 7,
        "webhook_delay_rate": 1 / 9,
        "webhook_reorder_rate": 1 / 11,
        "settlement_late_rate": 1 / 13,
    }
    await provider.faults(
        **rates, webhook_delay_s=0.2, webhook_reorder_max_s=5.0, settlement_late_s=0.2
    )
    charges = [await provider.charge(f"order-{i}", 1000 + i, expect=None) for i in range(50)]
    injected = await provider.injected()
    counted = Counter(f["kind"] for f in injected)
    declined = _share(50, rates["decline_rate"])
    captured = 50 - declined
    lost = _share(captured, rates["confirmation_lost_rate"])
    events = captured - lost + declined  # charge.succeeded, or charge.failed
    assert counted == {
        "declined": declined,
        "amount_mismatch": _share(captured, rates["amount_mismatch_rate"]),
        "currency_mismatch": _share(captured, rates["currency_mismatch_rate"]),
        "confirmation_lost": lost,
        "webhook_dropped": _share(events, rates["webhook_drop_rate"]),
        "webhook_duplicated": _share(events, rates["webhook_duplicate_rate"]),
        "webhook_delayed": _share(events, rates["webhook_delay_rate"]),
        "webhook_reordered": _share(events, rates["webhook_reorder_rate"]),
        "settlement_late": _share(2 * captured, rates["settlement_late_rate"]),
    }, counted
    by_id = {c["id"]: c for c in charges}
    assert {f["object_id"] for f in injected if f["kind"] == "declined"} == {
        c["id"] for c in charges if c["status"] == "failed"
    }
    for fault in injected:
        charge = by_id.get(fault["object_id"])
        asked = 1000 + int(fault["order_id"].split("-")[1])
        if fault["kind"] == "amount_mismatch":
            assert charge is not None and charge["amount"] == asked + 1
        if fault["kind"] == "currency_mismatch":
            assert charge is not None and charge["currency"] == "USD"

    async def all_acknowledged() -> bool:
        return len(set(stand_in.event_ids(acknowledged_only=True))) == events

    await until(all_acknowledged, "every event acknowledged", 15)
    deliveries = await provider.deliveries()
    assert len(deliveries) == events
    for fault in injected:
        if fault["kind"] == "confirmation_lost":
            assert not await provider.events_of(fault["object_id"])
    got = Counter(stand_in.event_ids())
    created = list(deliveries)
    arrived = stand_in.event_ids()
    for fault in injected:
        event_id = fault["event_id"]
        if fault["kind"] == "webhook_duplicated":
            assert got[event_id] == 2
        elif fault["kind"] == "webhook_dropped":
            assert got[event_id] == 1 and deliveries[event_id]["attempts"] == 2
        elif fault["kind"] == "webhook_reordered":
            # It came after an event created after it.
            later = created[created.index(event_id) + 1 :]
            assert any(arrived.index(e) < arrived.index(event_id) for e in later)
    assert sum(got.values()) == events + counted["webhook_duplicated"]
