"""Serving a simulator: in this process (tests) or as `python -m server simulate ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from server.simulators.carrier import carrier_app
from server.simulators.warehouse import warehouse_app

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


def build(args: argparse.Namespace) -> web.Application:
    """The application the command line asks for."""
    if args.kind == "warehouse":
        return warehouse_app(pack_s=args.pack_s)
    return carrier_app(args.carrier, transit_s=args.transit_s, deliver_s=args.deliver_s)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    running = await start(build(args), args.host, args.port)
    log.info(
        "simulator serving", extra={"kind": args.kind, "url": running.url, "carrier": args.carrier}
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await running.stop()


def parser() -> argparse.ArgumentParser:
    """`python -m server simulate` arguments."""
    p = argparse.ArgumentParser(prog="stockcore-server simulate", description=__doc__)
    p.add_argument("kind", choices=["warehouse", "carrier"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--carrier", default="sf-express", help="the carrier code (carriers only)")
    p.add_argument("--pack-s", type=float, default=0.5, help="seconds from hand-off to packed")
    p.add_argument(
        "--transit-s", type=float, default=1.0, help="seconds from booking to in transit"
    )
    p.add_argument("--deliver-s", type=float, default=2.0, help="seconds from booking to delivered")
    return p


def main(argv: list[str]) -> None:
    """Entry point of `python -m server simulate`."""
    import uvloop

    uvloop.run(serve(parser().parse_args(argv)))
