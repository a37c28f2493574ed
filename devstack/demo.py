"""A small demo catalogue, loaded idempotently by `make run`."""

from __future__ import annotations

from server.domain.inventory import adjust_command
from server.storage.postgres import StockStore

CATALOGUE: dict[str, int] = {
    "DRESS-RED-S": 40,
    "DRESS-RED-M": 100,
    "DRESS-RED-L": 60,
    "TSHIRT-BLK-M": 500,
    "TSHIRT-WHT-M": 500,
    "USB-C-CABLE-1M": 2000,
    "PHONE-CASE-X1": 250,
    "FLASH-SALE-1": 1000,
}


async def load(store: StockStore) -> int:
    """Set each demo SKU's on_hand once (the idempotency key makes reruns no-ops)."""
    applied = 0
    for sku, on_hand in CATALOGUE.items():
        command = adjust_command(
            sku, None, on_hand, "demo catalogue", f"demo-catalogue:{sku}", "demo"
        )
        result = await store.adjust(command)
        applied += int(result.code == 0)
    return applied
