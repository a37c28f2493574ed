"""The typed order client and `stockctl order` against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from clients.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from clients.inventory import InventoryClient
from clients.orders import EventType, OrderClient, OrderEvent, OrderStatus
from devstack.credentials import DevCredentials
from runtime.processes import free_port
from server.app import App
from server.config import Settings
from tests.servers import serving
from tests.waiting import until_true


@pytest.fixture
async def client(app: App, credentials_for):
    async with OrderClient(f"127.0.0.1:{app.port}", credentials=credentials_for("shop-test")) as c:
        yield c


@pytest.fixture
async def inventory(app: App, credentials_for):
    async with InventoryClient(
        f"127.0.0.1:{app.port}", credentials=credentials_for("shop-test")
    ) as c:
        await c.adjust_stock("A", on_hand=100, reason="restock", idempotency_key="k-a")
        yield c


async def test_client_walks_an_order_to_delivery_with_typed_values(
    client: OrderClient, inventory
) -> None:
    order = await client.create_order("o-1", "cust-1", [("A", 2, 150)], "EUR", payment_window=60)
    assert (order.status, order.total_minor, order.lines[0].line_total_minor) == (
        OrderStatus.ORDER_STATUS_PENDING_PAYMENT,
        300,
        300,
    )
    assert order.payment_deadline - order.create_time == timedelta(seconds=60)
    paid = await client.confirm_payment("o-1", "p-1", 300, "EUR")
    shipped = await client.ship_order("o-1", "ups", "1Z999", "ack-7")
    assert shipped.shipment is not None and shipped.shipment.tracking_no == "1Z999"
    scanned = order.create_time  # the earliest a carrier may report
    moving = await client.record_in_transit("o-1", scanned)
    assert moving.shipment is not None and moving.shipment.in_transit_time is not None
    assert abs(moving.shipment.in_transit_time - scanned) < timedelta(milliseconds=1)
    done = await client.record_delivery("o-1", datetime.now(UTC))
    assert (paid.status, done.status, done.version) == (
        OrderStatus.ORDER_STATUS_PAID,
        OrderStatus.ORDER_STATUS_DELIVERED,
        5,
    )
    order, history = await client.get_order("o-1")
    assert [c.to_status for c in history] == [
        OrderStatus.ORDER_STATUS_PENDING_PAYMENT,
        OrderStatus.ORDER_STATUS_PAID,
        OrderStatus.ORDER_STATUS_SHIPPED,
        OrderStatus.ORDER_STATUS_IN_TRANSIT,
        OrderStatus.ORDER_STATUS_DELIVERED,
    ]
    assert history[0].from_status is None and {c.caller for c in history} == {"shop-test"}
    assert len({c.request_id for c in history}) == 5


async def test_client_pages_orders(client: OrderClient, inventory) -> None:
    for i in range(7):
        await client.create_order(f"o-{i}", "cust-1", [("A", 1, 10)], "EUR")
    await client.cancel_order("o-3", "no longer wanted")
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_orders("cust-1", page_size=3, page_token=token)
        seen += [o.order_id for o in page.orders]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"o-{i}" for i in reversed(range(7))]
    cancelled = await client.list_orders("cust-1", status=OrderStatus.ORDER_STATUS_CANCELLED)
    assert [o.order_id for o in cancelled.orders] == ["o-3"]


async def test_client_raises_typed_errors(client: OrderClient, inventory) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await client.create_order("o-1", "", [("A", 0, -1)], "eur")
    assert {v.field for v in bad.value.field_violations} == {
        "customer_id",
        "lines[0].quantity",
        "lines[0].unit_price_minor",
        "currency_code",
    }
    with pytest.raises(NotFound):
        await client.get_order("nope")
    await client.create_order("o-1", "cust-1", [("A", 1, 10)], "EUR")
    with pytest.raises(AlreadyExists):
        await client.create_order("o-1", "cust-1", [("A", 1, 11)], "EUR")
    with pytest.raises(FailedPrecondition) as mismatch:
        await client.confirm_payment("o-1", "p-1", 9, "EUR")
    assert mismatch.value.error_info is not None
    assert mismatch.value.error_info.reason == "PAYMENT_MISMATCH"
    with pytest.raises(FailedPrecondition) as illegal:
        await client.ship_order("o-1", "dhl", "T1", "ack")
    assert "PENDING_PAYMENT" in illegal.value.message and "allowed next" in illegal.value.message


async def test_a_client_watch_resumes_across_a_server_restart_missing_nothing(
    settings: Settings, credentials_for
) -> None:
    port = free_port()
    fixed = settings.with_overrides(grpc_port=port)
    seen: list[OrderEvent] = []

    def shop_at(where: int) -> OrderClient:
        return OrderClient(
            f"127.0.0.1:{where}", credentials=credentials_for("shop"), default_timeout=15
        )

    async with (
        OrderClient(f"127.0.0.1:{port}", credentials=credentials_for("watcher")) as watcher,
        InventoryClient(f"127.0.0.1:{port}", credentials=credentials_for("shop")) as inventory,
    ):

        async def watch() -> None:
            async for event in watcher.watch(types=[EventType.EVENT_TYPE_ORDER_CREATED]):
                seen.append(event)

        task: asyncio.Task[None] | None = None
        try:
            async with serving(fixed, grace=0.2):
                await inventory.adjust_stock(
                    "A", on_hand=100, reason="restock", idempotency_key="k"
                )
                task = asyncio.create_task(watch())
                async with shop_at(port) as shop:
                    for i in range(5):
                        await shop.create_order(f"before-{i}", "cust-1", [("A", 1, 10)], "EUR")
                await until_true(lambda: len(seen) == 5, "5 events seen")
            # While the watched server is down, another one takes orders.
            async with serving(settings, grace=0.2) as other, shop_at(other.port) as shop:
                for i in range(5):
                    await shop.create_order(f"during-{i}", "cust-1", [("A", 1, 10)], "EUR")
            async with serving(fixed, grace=0.2):
                async with shop_at(port) as shop:
                    for i in range(5):
                        await shop.create_order(f"after-{i}", "cust-1", [("A", 1, 10)], "EUR")
                await until_true(lambda: len(seen) >= 15, "15 events seen", timeout=20)
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    assert [e.order_id for e in seen] == [
        f"{phase}-{i}" for phase in ("before", "during", "after") for i in range(5)
    ]
    assert [e.cursor for e in seen] == sorted({e.cursor for e in seen})


async def test_stockctl_creates_pays_lists_and_watches_orders(
    app: App, inventory, credentials: DevCredentials, service_token: str
) -> None:
    target = f"127.0.0.1:{app.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKCORE_")} | {
        "STOCKCORE_CA_FILE": str(credentials.ca_cert),
        # Not the user's own config file: this test names every setting it uses.
        "STOCKCORE_CONFIG": "none",
        "STOCKCORE_TOKEN": service_token,
    }

    async def stockctl(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clients.cli", "--target", target, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=env,
        )

    done = await stockctl(
        "order", "create", "o-1", "A=2@150", "--customer", "c-1", "--currency", "EUR"
    )
    assert done.returncode == 0, done.stderr
    assert "PENDING_PAYMENT" in done.stdout and "300 EUR" in done.stdout
    done = await stockctl(
        "order", "pay", "o-1", "--payment", "p-1", "--amount", "299", "--currency", "EUR"
    )
    assert done.returncode == 4 and "FAILED_PRECONDITION" in done.stderr
    done = await stockctl(
        "order", "pay", "o-1", "--payment", "p-1", "--amount", "300", "--currency", "EUR"
    )
    assert done.returncode == 0, done.stderr
    done = await stockctl(
        "order", "ship", "o-1", "--carrier", "dhl", "--tracking", "T-1", "--ack", "a", "--json"
    )
    assert json.loads(done.stdout)["status"] == "SHIPPED"
    done = await stockctl("order", "transit", "o-1")
    assert done.returncode == 0, done.stderr
    done = await stockctl("order", "deliver", "o-1", "--at", datetime.now(UTC).isoformat())
    assert done.returncode == 0, done.stderr
    done = await stockctl("order", "get", "o-1", "--json")
    data = json.loads(done.stdout)
    assert data["status"] == "DELIVERED" and [h["to"] for h in data["history"]][-1] == "DELIVERED"
    done = await stockctl("order", "list", "--customer", "c-1", "--json")
    assert [o["order_id"] for o in json.loads(done.stdout)["orders"]] == ["o-1"]
    done = await stockctl("order", "watch", "--limit", "5", "--json")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["type"] for e in events] == [
        "ORDER_CREATED",
        "ORDER_PAID",
        "ORDER_SHIPPED",
        "ORDER_IN_TRANSIT",
        "ORDER_DELIVERED",
    ]
    done = await stockctl("order", "cancel", "o-1", "--reason", "too late")
    assert done.returncode == 4 and "DELIVERED" in done.stderr
    done = await stockctl("order", "get", "nope")
    assert done.returncode == 3


async def test_stockctl_makes_a_held_cart_into_its_order(
    app: App, inventory, credentials: DevCredentials, service_token: str
) -> None:
    target = f"127.0.0.1:{app.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKCORE_")} | {
        "STOCKCORE_CA_FILE": str(credentials.ca_cert),
        "STOCKCORE_CONFIG": "none",
        "STOCKCORE_TOKEN": service_token,
    }

    async def stockctl(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clients.cli", "--target", target, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=env,
        )

    for args in (("reserve", "cart-9", "A=1", "--ttl", "120"), ("set-line", "cart-9", "A=2")):
        done = await stockctl(*args)
        assert done.returncode == 0, done.stderr
    create = ("order", "create", "cart-9", "A=2@150", "--customer", "c-9", "--currency", "EUR")
    done = await stockctl(*create, "--from-reservation", "--json")
    assert done.returncode == 0, done.stderr
    order = json.loads(done.stdout)
    assert (order["order_id"], order["status"]) == ("cart-9", "PENDING_PAYMENT")
    # The cart's hold became the order's: nothing more is held than the cart held.
    levels = await stockctl("stock", "get", "A", "--json")
    assert levels.returncode == 0, levels.stderr
    assert [(x["sku"], x["reserved"]) for x in json.loads(levels.stdout)] == [("A", 2)]
