"""The order status machine, its guards, and the validation of every order request."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import (
    IllegalTransition,
    InvalidArgument,
    LineRefundExceeded,
    NoSuchLine,
    NotRefundable,
    PaymentMismatch,
)
from server.domain.inventory import MAX_LINES, MAX_QUANTITY
from server.domain.orders import (
    CREATED_EVENT,
    INITIAL_STATUS,
    MAX_TOTAL,
    MAX_UNIT_PRICE,
    REFUND_EVENTS,
    TRANSITIONS,
    Actor,
    EventType,
    Order,
    OrderLine,
    OrderStatus,
    Shipment,
    allowed_next,
    cancel_order,
    carrier_report,
    confirm_payment,
    create_order,
    decide,
    exceeds_line,
    free_line,
    mismatch,
    no_such_line,
    not_refundable,
    paid_by_another,
    refund_line,
    refusal,
    ship_order,
    shipped_as_another,
    status_diagram,
)

ACTOR = Actor("tests", "req-1")
NOW = datetime(2030, 1, 1, tzinfo=UTC)
CARRIERS = ("dhl", "ups")
LIMITS = {"default_ttl_s": 300.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}


def paths_to_every_status() -> dict[OrderStatus, tuple[OrderStatus, ...]]:
    """A shortest path from creation to each status, found through the table itself."""
    paths = {INITIAL_STATUS: (INITIAL_STATUS,)}
    queue = deque([INITIAL_STATUS])
    while queue:
        status = queue.popleft()
        for target in TRANSITIONS[status]:
            if target not in paths:
                paths[target] = (*paths[status], target)
                queue.append(target)
    return paths


PATHS = paths_to_every_status()
PAIRS = [(a, b) for a in OrderStatus for b in OrderStatus]


def make_order(**changes: object) -> Order:
    command = create_order(
        "o-1", "c-1", [("A", 2, 150), ("B", 1, 1000)], "EUR", None, ACTOR, **LIMITS
    )
    order = Order(
        order_id=command.order_id,
        customer_id=command.customer_id,
        status=INITIAL_STATUS,
        currency=command.currency,
        lines=command.lines,
        total_minor=command.total_minor,
        created_at=NOW,
        payment_deadline=NOW + timedelta(minutes=5),
        updated_at=NOW,
        path=(INITIAL_STATUS,),
        fingerprint=command.fingerprint,
    )
    return replace(order, **changes)  # type: ignore[arg-type]


# --- the table ------------------------------------------------------------------------


def test_every_status_is_reachable_from_creation() -> None:
    assert set(PATHS) == set(OrderStatus)


def test_every_event_type_is_emitted_by_creation_or_some_transition() -> None:
    # Refund events are no transition (sql/live/refunds.sql writes them).
    emitted = {CREATED_EVENT} | {e for targets in TRANSITIONS.values() for e in targets.values()}
    assert emitted == set(EventType) - REFUND_EVENTS and not emitted & REFUND_EVENTS


def test_the_machine_has_no_backward_moves() -> None:
    # Acyclic: repeatedly removing statuses nothing leads into empties the table.
    remaining = set(OrderStatus)
    while remaining:
        sources = {s for s in remaining if not any(s in TRANSITIONS[o] for o in remaining)}
        assert sources, f"a cycle among {sorted(s.name for s in remaining)}"
        remaining -= sources
    assert all(INITIAL_STATUS not in targets for targets in TRANSITIONS.values())


def test_the_issue_statuses_move_as_specified() -> None:
    s = OrderStatus
    assert {k: set(v) for k, v in TRANSITIONS.items()} == {
        s.PENDING_PAYMENT: {s.PAID, s.CANCELLED, s.EXPIRED},
        s.PAID: {s.SHIPPED, s.CANCELLED},
        s.SHIPPED: {s.IN_TRANSIT, s.DELIVERED},
        s.IN_TRANSIT: {s.DELIVERED},
        s.DELIVERED: set(),
        s.CANCELLED: set(),
        s.EXPIRED: set(),
    }


@pytest.mark.parametrize(
    ("current", "wanted"), PAIRS, ids=[f"{a.name}->{b.name}" for a, b in PAIRS]
)
def test_decide_follows_the_table_for_every_pair(current: OrderStatus, wanted: OrderStatus) -> None:
    path = PATHS[current]
    if wanted in path:
        assert decide("o-1", path, wanted) is None
    elif wanted in TRANSITIONS[current]:
        assert decide("o-1", path, wanted) is TRANSITIONS[current][wanted]
    else:
        with pytest.raises(IllegalTransition) as raised:
            decide("o-1", path, wanted)
        assert raised.value.current == current.name
        assert raised.value.allowed == tuple(s.name for s in allowed_next(current))
        assert current.name in str(raised.value)
        for name in raised.value.allowed:
            assert name in str(raised.value)


def test_a_final_status_says_nothing_may_follow() -> None:
    with pytest.raises(IllegalTransition, match=r"allowed next: none \(final\)"):
        decide("o-1", PATHS[OrderStatus.EXPIRED], OrderStatus.PAID)


def test_the_diagram_has_one_arrow_per_transition_and_marks_start_and_finals() -> None:
    lines = status_diagram().splitlines()
    assert lines[0] == "stateDiagram-v2"
    arrows = [line.strip() for line in lines[1:]]
    assert "[*] --> PENDING_PAYMENT: ORDER_CREATED" in arrows
    for source, targets in TRANSITIONS.items():
        for target, event in targets.items():
            assert f"{source.name} --> {target.name}: {event.name}" in arrows
        if not targets:
            assert f"{source.name} --> [*]" in arrows
    assert len(arrows) == 1 + sum(len(t) or 1 for t in TRANSITIONS.values())


# --- refusals ---------------------------------------------------------------------------
# The moves themselves are made under the order's lock by the order functions in
# PostgreSQL (tests/integration/test_orders_store.py); these say why one was refused.


def test_creation_starts_pending_with_version_one() -> None:
    order = make_order()
    assert (order.status, order.version, order.total_minor) == (INITIAL_STATUS, 1, 1300)
    assert [line.total_minor for line in order.lines] == [300, 1000]


@pytest.mark.parametrize(("current", "wanted"), PAIRS)
def test_a_refusal_names_the_status_and_what_may_follow(
    current: OrderStatus, wanted: OrderStatus
) -> None:
    order = make_order(path=PATHS[current], status=current)
    if wanted in PATHS[current] or wanted in TRANSITIONS[current]:
        # The database refusing a move the table allows is a bug, not an answer.
        with pytest.raises(RuntimeError, match="status machine allows"):
            refusal(order, wanted)
        return
    error = refusal(order, wanted)
    assert (error.current, error.wanted) == (current.name, wanted.name)
    assert error.allowed == tuple(s.name for s in allowed_next(current))


def test_another_payment_and_another_parcel_are_named_in_the_refusal() -> None:
    paid = make_order(
        path=PATHS[OrderStatus.PAID], status=OrderStatus.PAID, payment_id="p-1", paid_minor=1300
    )
    assert "already paid by another payment" in str(paid_by_another(paid))
    shipped = replace(
        paid,
        path=PATHS[OrderStatus.SHIPPED],
        status=OrderStatus.SHIPPED,
        shipment=Shipment("dhl", "T-1", "ack", NOW),
    )
    assert "already shipped as dhl T-1" in str(shipped_as_another(shipped))


@pytest.mark.parametrize(("amount", "currency"), [(1299, "EUR"), (1301, "EUR"), (1300, "USD")])
def test_a_payment_that_differs_from_the_order_is_a_mismatch(amount: int, currency: str) -> None:
    error = mismatch(make_order(), confirm_payment("o-1", "p-1", amount, currency, ACTOR))
    assert isinstance(error, PaymentMismatch)
    assert (error.expected, error.paid) == ("1300 EUR", f"{amount} {currency}")


def test_history_reasons_say_what_happened() -> None:
    assert confirm_payment("o-1", "p-1", 1, "EUR", ACTOR).reason == "payment p-1"
    ship = ship_order("o-1", "dhl", "T-1", "a", ACTOR, carriers=CARRIERS)
    assert ship.reason == "picked up by dhl"
    report = carrier_report("o-1", NOW, ACTOR, now=NOW)
    assert report.reason(OrderStatus.DELIVERED) == (
        f"carrier reported DELIVERED at {NOW.isoformat()}"
    )


# --- validation ------------------------------------------------------------------------


def fields_of(raised: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in raised.value.violations]


def test_create_order_reports_every_violation_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        create_order(
            "",
            "bad customer",
            [("A", 0, 1), ("-bad", 1, -1), ("C", 1, MAX_UNIT_PRICE + 1)],
            "eur",
            0.5,
            ACTOR,
            **LIMITS,
        )
    assert fields_of(raised) == [
        "order_id",
        "customer_id",
        "lines[0].quantity",
        "lines[1].sku",
        "lines[1].unit_price_minor",
        "lines[2].unit_price_minor",
        "currency_code",
        "payment_window",
    ]


def test_create_order_needs_lines_and_at_most_the_line_limit() -> None:
    with pytest.raises(InvalidArgument) as raised:
        create_order("o", "c", [], "EUR", None, ACTOR, **LIMITS)
    assert fields_of(raised) == ["lines"]
    many = [(f"S{i}", 1, 1) for i in range(MAX_LINES + 1)]
    with pytest.raises(InvalidArgument) as raised:
        create_order("o", "c", many, "EUR", None, ACTOR, **LIMITS)
    assert "lines" in fields_of(raised)


def test_duplicate_skus_merge_when_priced_alike_and_are_refused_otherwise() -> None:
    merged = create_order(
        "o", "c", [("B", 1, 5), ("A", 2, 7), ("B", 3, 5)], "EUR", 60, ACTOR, **LIMITS
    )
    assert [(x.sku, x.quantity, x.unit_price_minor) for x in merged.lines] == [
        ("A", 2, 7),
        ("B", 4, 5),
    ]
    assert (merged.total_minor, merged.ttl_ms) == (34, 60_000)
    with pytest.raises(InvalidArgument) as raised:
        create_order("o", "c", [("B", 1, 5), ("B", 1, 6)], "EUR", None, ACTOR, **LIMITS)
    assert fields_of(raised) == ["lines[1].unit_price_minor"]


def test_the_fingerprint_covers_prices_customer_currency_and_window_but_not_line_order() -> None:
    def fingerprint(
        *lines: tuple[str, int, int],
        customer: str = "c",
        currency: str = "EUR",
        window: float | None = None,
    ) -> bytes:
        return create_order(
            "o", customer, list(lines), currency, window, ACTOR, **LIMITS
        ).fingerprint

    base = fingerprint(("A", 1, 5), ("B", 2, 6))
    assert fingerprint(("B", 2, 6), ("A", 1, 5)) == base
    assert fingerprint(("A", 1, 5), ("B", 2, 7)) != base
    assert fingerprint(("A", 1, 5), ("B", 2, 6), customer="d") != base
    assert fingerprint(("A", 1, 5), ("B", 2, 6), currency="USD") != base
    assert fingerprint(("A", 1, 5), ("B", 2, 6), window=60) != base


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C", "D"]),
            st.integers(1, 10_000),
            st.integers(0, MAX_UNIT_PRICE),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_totals_are_exact_integers_within_the_bound(lines: list[tuple[str, int, int]]) -> None:
    prices = {sku: price for sku, _, price in reversed(lines)}
    priced = [(sku, qty, prices[sku]) for sku, qty, _ in lines]
    command = create_order("o", "c", priced, "EUR", None, ACTOR, **LIMITS)
    assert command.total_minor == sum(qty * price for _, qty, price in priced)
    assert 0 <= command.total_minor <= MAX_TOTAL


def test_the_largest_possible_order_still_fits_its_total() -> None:
    lines = [(f"S{i}", MAX_QUANTITY, MAX_UNIT_PRICE) for i in range(MAX_LINES)]
    command = create_order("o", "c", lines, "EUR", None, ACTOR, **LIMITS)
    assert command.total_minor == MAX_LINES * MAX_QUANTITY * MAX_UNIT_PRICE <= MAX_TOTAL


def test_confirm_payment_validates_ids_amount_and_currency() -> None:
    with pytest.raises(InvalidArgument) as raised:
        confirm_payment("", "has space", -1, "EURO", ACTOR)
    assert fields_of(raised) == ["order_id", "payment_id", "amount_minor", "currency_code"]


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201])
def test_cancel_needs_a_reason_of_sensible_length(reason: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        cancel_order("o", reason, ACTOR)
    assert fields_of(raised) == ["reason"]


def test_refund_line_reports_every_violation_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        refund_line("", "-bad", 0, "", "has space", ACTOR)
    assert fields_of(raised) == ["order_id", "sku", "reason", "line_refund_id", "quantity"]


@pytest.mark.parametrize("quantity", [0, -1, MAX_QUANTITY + 1])
def test_refund_line_quantity_is_at_least_one_unit_and_at_most_the_line_limit(
    quantity: int,
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        refund_line("o", "A", quantity, "torn", "lr-1", ACTOR)
    assert fields_of(raised) == ["quantity"]


def test_refund_line_needs_its_idempotency_id() -> None:
    with pytest.raises(InvalidArgument) as raised:
        refund_line("o", "A", 1, "torn", "", ACTOR)
    assert fields_of(raised) == ["line_refund_id"]
    made = refund_line("o", "A", MAX_QUANTITY, "arrived torn", "lr/1", ACTOR)
    assert (made.quantity, made.line_refund_id, made.actor) == (MAX_QUANTITY, "lr/1", ACTOR)


@pytest.mark.parametrize(
    "status",
    [OrderStatus.PENDING_PAYMENT, OrderStatus.EXPIRED, OrderStatus.CANCELLED],
)
def test_an_order_unpaid_or_cancelled_is_not_refundable_and_says_why(
    status: OrderStatus,
) -> None:
    refused = not_refundable(make_order(status=status))
    assert isinstance(refused, NotRefundable)
    assert (refused.check, refused.subject) == ("STATUS", "o-1")
    assert refused.description.startswith(f"status is {status.name}: ")
    assert "PAID, SHIPPED, IN_TRANSIT, DELIVERED" in str(refused)


def test_a_line_refund_refusal_names_the_line_and_the_units_left() -> None:
    order = make_order(lines=(OrderLine("A", 2, 150, 1), OrderLine("B", 1, 0)))
    assert order.line_refunds_minor == 150
    missing = no_such_line(order, "C")
    assert isinstance(missing, NoSuchLine) and (missing.kind, missing.names) == (
        "order line",
        ("C",),
    )
    assert (free_line(order, "B").check, free_line(order, "B").subject) == ("PRICE", "B")
    beyond = exceeds_line(refund_line("o-1", "A", 2, "torn", "lr-1", ACTOR), 2, 1)
    assert isinstance(beyond, LineRefundExceeded)
    assert (beyond.bought, beyond.refunded, beyond.left, beyond.asked) == (2, 1, 1, 2)
    assert "1 of 2 units of 'A' left to refund" in str(beyond)


def test_ship_order_requires_an_allowed_carrier_a_tracking_number_and_an_ack() -> None:
    with pytest.raises(InvalidArgument) as raised:
        ship_order("o", "pigeon", "", "", ACTOR, carriers=CARRIERS)
    assert fields_of(raised) == ["carrier", "tracking_no", "carrier_ack_id"]
    with pytest.raises(InvalidArgument) as raised:
        ship_order("o", "dhl", "has space", "a" * 129, ACTOR, carriers=CARRIERS)
    assert fields_of(raised) == ["tracking_no", "carrier_ack_id"]
    assert ship_order("o", "dhl", "JD-0001", "ack 1", ACTOR, carriers=CARRIERS).carrier == "dhl"


def test_carrier_times_are_required_and_not_far_in_the_future() -> None:
    with pytest.raises(InvalidArgument) as raised:
        carrier_report("o", None, ACTOR, now=NOW)
    assert fields_of(raised) == ["event_time"]
    with pytest.raises(InvalidArgument):
        carrier_report("o", NOW + timedelta(minutes=5, seconds=1), ACTOR, now=NOW)
    assert carrier_report("o", NOW + timedelta(minutes=4), ACTOR, now=NOW).event_time > NOW


@pytest.mark.parametrize(
    "event_time",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2000, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
    ],
)
def test_a_carrier_time_before_2000_is_refused(event_time: datetime) -> None:
    with pytest.raises(InvalidArgument) as raised:
        carrier_report("o", event_time, ACTOR, now=NOW)
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("event_time", "must not be before 2000-01-01T00:00:00Z")
    ]
    assert carrier_report("o", datetime(2000, 1, 1, tzinfo=UTC), ACTOR, now=NOW)
