"""Order ids with slashes through the fulfilment worker and the simulated partners: each
partner call names exactly the order it is about."""

from __future__ import annotations

from clients.orders import OrderClient
from fulfilment.domain import Stage
from server.app import App
from server.config import Settings
from tests.e2e.fulfilment_stack import (
    fulfil_settings,
    fulfilment_rows,
    pay_orders,
    running_partners,
    running_worker,
    stock,
)
from tests.waiting import until

ENDED = {Stage.DELIVERED, Stage.CANCELLED, Stage.DEAD, Stage.ELSEWHERE}


async def test_a_cancelled_order_whose_id_has_slashes_is_taken_back_under_its_exact_id(
    app: App, settings: Settings
) -> None:
    dsn = settings.pg_dsn or ""
    slashed = ("shop/eu/2024.07/" + "o" * 128)[:128]
    sibling = "shop/eu"
    await stock(app)
    # Packing takes longer than the test: both orders stay at the warehouse until cancelled.
    async with (
        running_partners(pack_s=3600) as partners,
        running_worker(fulfil_settings(settings, app, partners)),
    ):
        await pay_orders(app, [sibling, slashed])

        async def handed_off() -> bool:
            return set(await partners.handoffs()) == {sibling, slashed}

        await until(handed_off, "both orders at the warehouse")
        async with OrderClient(f"127.0.0.1:{app.port}") as orders:
            await orders.cancel_order(slashed, "changed my mind")

        async def ended() -> bool:
            row = (await fulfilment_rows(dsn, [slashed]))[slashed]
            return Stage(row["stage"]) in ENDED

        await until(ended, "the cancelled order's fulfilment ended", 30)
        row = (await fulfilment_rows(dsn, [slashed]))[slashed]
        assert Stage(row["stage"]) is Stage.CANCELLED, row["last_error"]
        assert await partners.handoffs() == {sibling: "accepted", slashed: "cancelled"}
