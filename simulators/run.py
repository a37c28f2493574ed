"""Serving a simulator: in this process (tests) or as `python -m simulators ...`."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from simulators.carrier import carrier_app
from simulators.config import SimulatorSettings
from simulators.payments import Terms, payments_app, read_secret
from simulators.warehouse import warehouse_app
from simulators.webhooks import WebhookEndpoint

log = logging.getLogger(__name__)


@dataclass
class RunningSimulator:
    """A simulator listening on 127.0.0.1:port."""

    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop listening and drop connections."""
        await self.runner.cleanup()


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> RunningSimulator:
    """Serve `app` on host:port (0: a free port)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return RunningSimulator(runner, bound)


def build(settings: SimulatorSettings) -> web.Application:
    """The application the settings ask for."""
    if settings.kind == "warehouse":
        return warehouse_app(pack_s=settings.pack_s)
    if settings.kind == "payments":
        secret = read_secret(settings.webhook_secret_file) if settings.webhook_secret_file else b""
        endpoint = WebhookEndpoint(
            settings.webhook_url,
            secret,
            retry_initial_s=settings.webhook_retry_initial_s,
            retry_max_s=settings.webhook_retry_max_s,
            give_up_s=settings.webhook_give_up_s,
            timeout_s=settings.webhook_timeout_s,
        )
        terms = Terms(
            fee_fixed_minor=settings.fee_fixed_minor,
            fee_rate_bp=settings.fee_rate_bp,
            settle_s=settings.settle_s,
            refund_settle_s=settings.refund_settle_s,
            payout_interval_s=settings.payout_interval_s,
        )
        return payments_app(endpoint, terms)
    return carrier_app(settings.carrier, transit_s=settings.transit_s, deliver_s=settings.deliver_s)


async def serve(settings: SimulatorSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    running = await start(build(settings), settings.host, settings.port)
    named = {"carrier": settings.carrier} if settings.kind == "carrier" else {}
    if settings.kind == "payments":
        # Where webhooks go; the secret is never logged.
        named = {"webhook_url": settings.webhook_url or "none"}
    log.info("simulator serving", extra={"kind": settings.kind, "url": running.url, **named})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await running.stop()
