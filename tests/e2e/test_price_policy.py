"""With a price catalogue, a CreateOrder's prices are the catalogue's unless its caller is
a trusted price source: a checkout page's token cannot buy at a price of its choosing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc

from devstack.credentials import DevCredentials
from server.app import create_server
from server.auth import scopes
from server.config import Settings, SettingsError
from tests import callers
from tests.servers import serving
from tests.support import create_request, details_of, put_stock, rpc_error


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"currency": "EUR", "products": [{"sku": "A", "price_minor": 150}]}))
    return path


@pytest.fixture
async def stubs(
    settings: Settings, credentials: DevCredentials, catalogue: Path
) -> AsyncIterator[dict[str, orders_pb2_grpc.OrderServiceStub]]:
    """Order stubs of a page token, a pricing service and another service, on a server
    that checks prices against `catalogue` and trusts 'pricing' to set its own."""
    priced = settings.with_overrides(
        price_catalogue_file=str(catalogue), price_sources=("pricing",)
    )
    async with serving(priced) as app:
        target = f"127.0.0.1:{app.port}"
        channels = {
            subject: callers.secure_channel(
                target,
                credentials,
                callers.token(credentials, subject, [scopes.ORDERS_WRITE, scopes.STOCK_ADJUST]),
            )
            for subject in ("checkout-page", "pricing", "warehouse")
        }
        try:
            inventory = inventory_pb2_grpc.InventoryServiceStub(channels["warehouse"])
            await put_stock(inventory, "A", 100)
            yield {s: orders_pb2_grpc.OrderServiceStub(c) for s, c in channels.items()}
        finally:
            for channel in channels.values():
                await channel.close()


async def test_a_caller_pays_the_catalogue_price_or_is_refused(
    stubs: dict[str, orders_pb2_grpc.OrderServiceStub],
) -> None:
    page = stubs["checkout-page"]
    listed = await page.CreateOrder(create_request("o-list", ("A", 2, 150)))
    free = await rpc_error(page.CreateOrder(create_request("o-free", ("A", 2, 0))))
    dear = await rpc_error(stubs["warehouse"].CreateOrder(create_request("o-x", ("A", 1, 10**9))))
    other = await rpc_error(page.CreateOrder(create_request("o-usd", currency="USD")))

    assert listed.order.total_minor == 300
    for refused in (free, dear, other):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(free, error_details_pb2.BadRequest)
    assert [v.description for v in bad.field_violations] == ["A costs 150 in the catalogue, not 0"]
    (bad,) = details_of(other, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "currency_code"


async def test_a_trusted_price_source_sets_its_own_prices(
    stubs: dict[str, orders_pb2_grpc.OrderServiceStub],
) -> None:
    discounted = await stubs["pricing"].CreateOrder(create_request("o-sale", ("A", 2, 99)))
    assert discounted.order.total_minor == 198


async def test_a_catalogue_that_cannot_be_read_stops_the_server_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SettingsError, match="STOCKCORE_PRICE_CATALOGUE"):
        await create_server(settings.with_overrides(price_catalogue_file=str(broken)))
