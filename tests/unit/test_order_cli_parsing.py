"""`stockctl order ...`: what each subcommand parses into and what it rejects."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from clients.cli import ExitCode, parse_args
from clients.order_cli import (
    CancelOrder,
    CreateOrder,
    GetOrder,
    ListOrders,
    PayOrder,
    RecordDelivery,
    RecordInTransit,
    RefundLine,
    ShipOrder,
    WatchOrders,
    parse_priced_line,
)
from clients.orders import EventType, OrderStatus, event_type_name, status_name


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == ExitCode.USAGE
    return capsys.readouterr().err


def test_a_priced_line_parses_into_sku_quantity_and_price() -> None:
    assert parse_priced_line("DRESS-RED-M=2@4999") == ("DRESS-RED-M", 2, 4999)
    assert parse_priced_line("FREEBIE=1@0") == ("FREEBIE", 1, 0)


@pytest.mark.parametrize("text", ["A=2", "A@3", "=2@3", "A=0@3", "A=2@-1", "A=x@3", "A=2@1.5"])
def test_a_malformed_priced_line_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_priced_line(text)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["order", "create", "o-1", "A=2@150", "B=1@99", "--customer", "c", "--currency", "EUR"],
            CreateOrder("o-1", "c", "EUR", (("A", 2, 150), ("B", 1, 99)), None),
        ),
        (
            [
                "order",
                "create",
                "o-1",
                "A=1@1",
                "--customer",
                "c",
                "--currency",
                "EUR",
                "--window",
                "90",
            ],
            CreateOrder("o-1", "c", "EUR", (("A", 1, 1),), 90.0),
        ),
        (
            [
                "order",
                "create",
                "cart-1",
                "A=1@1",
                "--customer",
                "c",
                "--currency",
                "EUR",
                "--from-reservation",
            ],
            CreateOrder("cart-1", "c", "EUR", (("A", 1, 1),), None, True),
        ),
        (["order", "get", "o-1"], GetOrder("o-1")),
        (["order", "list", "--customer", "c"], ListOrders("c", None, 0, "")),
        (
            [
                "order",
                "list",
                "--customer",
                "c",
                "--status",
                "paid",
                "--page-size",
                "5",
                "--page-token",
                "t",
            ],
            ListOrders("c", OrderStatus.ORDER_STATUS_PAID, 5, "t"),
        ),
        (
            ["order", "pay", "o-1", "--payment", "p", "--amount", "300", "--currency", "EUR"],
            PayOrder("o-1", "p", 300, "EUR"),
        ),
        (["order", "cancel", "o-1", "--reason", "r"], CancelOrder("o-1", "r")),
        (
            ["order", "refund", "o-1", "--sku", "A", "--quantity", "2", "--reason", "torn"],
            RefundLine("o-1", "A", 2, "torn", None),
        ),
        (
            [
                "order",
                "refund",
                "o-1",
                "--sku",
                "A",
                "--quantity",
                "1",
                "--reason",
                "torn",
                "--id",
                "lr-1",
            ],
            RefundLine("o-1", "A", 1, "torn", "lr-1"),
        ),
        (
            ["order", "ship", "o-1", "--carrier", "dhl", "--tracking", "T", "--ack", "a"],
            ShipOrder("o-1", "dhl", "T", "a"),
        ),
        (["order", "transit", "o-1"], RecordInTransit("o-1", None)),
        (
            ["order", "deliver", "o-1", "--at", "2030-01-02T03:04:05Z"],
            RecordDelivery("o-1", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ),
        (["order", "watch"], WatchOrders("", "", (), 0, None)),
        (
            [
                "order",
                "watch",
                "--customer",
                "c",
                "--type",
                "paid",
                "--type",
                "ORDER_SHIPPED",
                "--after",
                "7",
                "--limit",
                "3",
            ],
            WatchOrders(
                "c", "", (EventType.EVENT_TYPE_ORDER_PAID, EventType.EVENT_TYPE_ORDER_SHIPPED), 7, 3
            ),
        ),
    ],
)
def test_order_commands_parse_into_their_requests(argv: list[str], expected: object) -> None:
    assert parse_args(argv)[1] == expected


@pytest.mark.parametrize("status", [s for s in OrderStatus.values() if s], ids=status_name)
def test_every_status_of_the_contract_filters_a_listing_by_its_short_name(
    status: OrderStatus.ValueType,
) -> None:
    argv = ["order", "list", "--customer", "c", "--status", status_name(status).lower()]
    assert parse_args(argv)[1] == ListOrders("c", status, 0, "")


@pytest.mark.parametrize("kind", [t for t in EventType.values() if t], ids=event_type_name)
def test_every_event_type_of_the_contract_is_watchable_by_its_short_name(
    kind: EventType.ValueType,
) -> None:
    argv = ["order", "watch", "--type", event_type_name(kind).removeprefix("ORDER_")]
    assert parse_args(argv)[1] == WatchOrders("", "", (kind,), 0, None)


def test_a_status_or_event_type_newer_than_the_client_is_shown_by_its_number() -> None:
    assert status_name(OrderStatus.ORDER_STATUS_IN_TRANSIT) == "IN_TRANSIT"
    assert status_name(OrderStatus.ValueType(99)) == "99"
    assert event_type_name(EventType.EVENT_TYPE_ORDER_PAID) == "ORDER_PAID"
    assert event_type_name(EventType.ValueType(99)) == "99"


def test_carrier_times_keep_their_zone() -> None:
    _, command = parse_args(["order", "transit", "o-1", "--at", "2030-01-02T11:00:00+08:00"])
    assert isinstance(command, RecordInTransit)
    assert command.event_time == datetime(2030, 1, 2, 11, tzinfo=timezone(timedelta(hours=8)))


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["order", "create", "o-1", "A=1@1", "--currency", "EUR"], "--customer"),
        (["order", "pay", "o-1", "--payment", "p", "--currency", "EUR"], "--amount"),
        (
            ["order", "pay", "o-1", "--payment", "p", "--amount", "-1", "--currency", "EUR"],
            "must be at least 0",
        ),
        (["order", "transit", "o-1", "--at", "2030-01-02T03:04:05"], "time zone"),
        (["order", "refund", "o-1", "--quantity", "1", "--reason", "r"], "--sku"),
        (
            ["order", "refund", "o-1", "--sku", "A", "--quantity", "0", "--reason", "r"],
            "must be 1-1000000",
        ),
        (["order", "list", "--customer", "c", "--status", "lost"], "not one of"),
        (["order", "watch", "--type", "teleported"], "not an order event type"),
        (["order"], "usage:"),
    ],
)
def test_bad_order_arguments_are_usage_errors(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert complaint in _usage_error(argv, capsys)
