"""A warehouse that redirects, floods or drips its replies to some hand-offs: the
worker's calls for those orders fail within their time, are retried and counted by the
breaker, and end in the dead letters, while every other order is fulfilled."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from clients.orders import OrderStatus
from fulfilment.domain import Stage
from server.app import App
from server.config import Settings
from simulators.run import start
from simulators.warehouse import warehouse_app
from tests.e2e.fulfilment_stack import (
    Partners,
    dead_letters,
    fulfil_settings,
    pay_orders,
    running_worker,
    stock,
    until_dead,
    wait_statuses,
)

MiB = 1 << 20
MISBEHAVING = {"bad-redirect": "redirect", "bad-flood": "flood", "bad-drip": "drip"}


def misbehaving_warehouse(followed: list[str]) -> web.Application:
    """The simulated warehouse, answering the hand-offs of MISBEHAVING's orders its way:
    a 307 elsewhere (unapplied), or the real answer padded with 50 MB of JSON whitespace
    or dripped a byte every 0.1 s (applied)."""

    @web.middleware
    async def misbehave(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/v1/handoffs":
            return await handler(request)
        body = await request.json()
        mode = MISBEHAVING.get(body.get("order_id") if isinstance(body, dict) else None)
        if mode is None:
            return await handler(request)
        if mode == "redirect":
            raise web.HTTPTemporaryRedirect("/elsewhere")
        answer = await handler(request)
        assert isinstance(answer, web.Response) and isinstance(answer.body, bytes)
        length = len(answer.body) + (50 * MiB if mode == "flood" else 0)
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": str(length)}
        )
        await response.prepare(request)
        try:
            if mode == "flood":
                await response.write(answer.body)
                for _ in range(50):
                    await response.write(b" " * MiB)
            else:
                for byte in answer.body:
                    await response.write(bytes([byte]))
                    await asyncio.sleep(0.1)
            await response.write_eof()
        except ConnectionError:
            pass  # the worker hung up, as it should
        return response

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.json_response({"error": "a redirect was followed"}, status=500)

    app = warehouse_app(pack_s=0.05)
    app.middlewares.append(misbehave)
    app.router.add_post("/elsewhere", elsewhere)
    return app


async def test_a_warehouse_that_redirects_floods_or_drips_fails_those_orders_and_serves_the_rest(
    app: App, settings: Settings, partners: Partners
) -> None:
    dsn = settings.pg_dsn or ""
    followed: list[str] = []
    misbehaving = await start(misbehaving_warehouse(followed))
    config = fulfil_settings(
        settings,
        app,
        Partners(misbehaving, partners.primary, partners.fallback),
        partner_max_reply_bytes=MiB,
        # The breaker counts every failure but never opens here, so each count is exact.
        breaker_consecutive_failures=1000,
        breaker_min_calls=1000,
        breaker_window_s=600.0,
    )
    try:
        await stock(app)
        async with running_worker(config) as worker:
            await pay_orders(app, MISBEHAVING)
            good = [f"good-{i}" for i in range(5)]
            await pay_orders(app, good)
            await wait_statuses(app, good, {OrderStatus.ORDER_STATUS_DELIVERED})
            await until_dead(dsn, MISBEHAVING, "the misbehaving hand-offs in the dead letters", 60)
            breaker = worker.partners.warehouse_guard.breaker.snapshot()
    finally:
        await misbehaving.stop()
    letters = await dead_letters(dsn)
    assert set(letters) == set(MISBEHAVING)
    assert {(r["stage"], r["partner"], r["attempts"]) for r in letters.values()} == {
        (Stage.HAND_OFF, "warehouse", 3)
    }
    assert "not followed" in letters["bad-redirect"]["error"]
    assert "more than 1048576" in letters["bad-flood"]["error"]
    assert "no answer in time" in letters["bad-drip"]["error"]
    assert followed == []
    # Three orders, three tries of the step each, two attempts per try.
    assert breaker["failures"] == 18, breaker
