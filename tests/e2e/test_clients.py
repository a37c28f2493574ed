"""The typed client and stockctl against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from clients.errors import (
    AlreadyExists,
    FailedPrecondition,
    InsufficientStock,
    InvalidArgument,
    NotFound,
)
from clients.inventory import InventoryClient, ReservationStatus
from devstack.credentials import DevCredentials
from server.app import App


@pytest.fixture
async def client(app: App, credentials_for):
    async with InventoryClient(
        f"127.0.0.1:{app.port}", credentials=credentials_for("checkout-test")
    ) as c:
        yield c


async def test_client_round_trip_returns_typed_values(client: InventoryClient) -> None:
    adjusted = await client.adjust_stock("SKU-1", on_hand=5, reason="restock", idempotency_key="k1")
    assert adjusted.level.available == 5
    held = await client.reserve("r1", {"SKU-1": 2}, ttl=60)
    assert held.status is ReservationStatus.HELD and held.quantities == {"SKU-1": 2}
    done = await client.commit("r1")
    assert done.status is ReservationStatus.COMMITTED and done.finish_time is not None
    (level,) = await client.get_stock(["SKU-1"])
    assert (level.on_hand, level.reserved, level.available) == (3, 0, 3)


async def test_client_raises_typed_errors_with_details(client: InventoryClient) -> None:
    await client.adjust_stock("SKU-1", on_hand=1, reason="restock", idempotency_key="k1")
    with pytest.raises(InsufficientStock) as short:
        await client.reserve("r1", {"SKU-1": 3})
    assert short.value.shortages == {"SKU-1": 1}
    with pytest.raises(NotFound):
        await client.get_reservation("nope")
    with pytest.raises(InvalidArgument) as bad:
        await client.reserve("r2", {"SKU-1": 0})
    assert any(v.field == "lines[0].quantity" for v in bad.value.field_violations)
    await client.reserve("r3", {"SKU-1": 1})
    with pytest.raises(AlreadyExists):
        await client.reserve("r3", {"SKU-1": 1}, ttl=10)
    await client.release("r3")
    with pytest.raises(FailedPrecondition):
        await client.commit("r3")


async def test_the_caller_name_is_recorded_on_movements(client: InventoryClient, app: App) -> None:
    await client.adjust_stock("SKU-1", on_hand=4, reason="restock", idempotency_key="k1")
    await client.reserve("r1", {"SKU-1": 1})
    rows = await app.store.fetch("SELECT DISTINCT caller FROM stockcore.movements")
    assert {r["caller"] for r in rows} == {"checkout-test"}


async def test_stockctl_reads_and_changes_stock(app: App, credentials: DevCredentials) -> None:
    target = f"127.0.0.1:{app.port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("STOCKCORE_")} | {
        "STOCKCORE_CA_FILE": str(credentials.ca_cert),
        # Not the user's own config file: this test names every setting it uses.
        "STOCKCORE_CONFIG": "none",
    }

    async def stockctl(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clients.cli", "--target", target, *args],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )

    # The token stockctl mints with the signing key is the one it then calls with.
    issued = await stockctl(
        "token",
        "issue",
        "--sub",
        "ops",
        "--scopes",
        "all",
        "--signing-key",
        str(credentials.signing_key),
    )
    assert issued.returncode == 0, issued.stderr
    env["STOCKCORE_TOKEN"] = issued.stdout.strip()

    done = await stockctl(
        "stock", "adjust", "CLI-1", "--set", "7", "--reason", "count", "--key", "c1"
    )
    assert done.returncode == 0, done.stderr
    done = await stockctl("reserve", "cli-r1", "CLI-1=3", "--ttl", "60")
    assert done.returncode == 0, done.stderr
    shown = await stockctl("--json", "stock", "get", "CLI-1")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["available"] == 4
    refused = await stockctl("reserve", "cli-r2", "CLI-1=10")
    assert refused.returncode == 4 and "CLI-1" in refused.stderr
    missing = await stockctl("reservation", "get", "nope")
    assert missing.returncode == 3
    rows = await app.store.fetch("SELECT DISTINCT caller FROM stockcore.movements")
    assert {r["caller"] for r in rows} == {"ops"}
