"""The benchmark's own gRPC servers: grpc.aio, one raw-bytes method each, each a process of
its own beside the stockcore server, on loopback, dying with the thread that started it.

    python -m loadtests.edge --port 50100 empty
    python -m loadtests.edge --port 50100 classic --dsn postgresql://... \
        --design select-for-update --pool 64

`empty` answers EMPTY with nothing: what any handler on this runtime and machine could reach
at most (the ceiling stockcore is read against). `classic` answers BUY (request: a SKU)
with b"sold" or b"sold out" after one purchase of one unit in PostgreSQL by a classic
design (loadtests/classic.py), so those designs can be measured behind the same gRPC edge as
stockcore. There are no (de)serializers: requests and responses stay bytes, no .proto needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import grpc

from loadtests import classic
from loadtests.driver import ROOT, run_on_uvloop
from runtime.processes import free_port, spawn

EMPTY = "/stockcore.bench.Empty/Call"
"""The empty method: takes any bytes, returns none."""

BUY = "/stockcore.bench.Classic/Buy"
"""The classic purchase: takes a SKU, returns SOLD or SOLD_OUT."""

SOLD = b"sold"
"""BUY's answer when a unit was sold."""

SOLD_OUT = b"sold out"
"""BUY's answer when the design found the SKU sold out."""

_START_TIMEOUT = 60.0
_STOP_GRACE = 1.0


async def _empty(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


Behaviour = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


def _handler(method: str, behaviour: Behaviour) -> grpc.GenericRpcHandler[bytes, bytes]:
    service, name = method.lstrip("/").split("/")
    return grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(behaviour)}
    )


async def _serve(args: argparse.Namespace) -> None:
    # Another server on the port must fail this one, not share the port with it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pool: asyncpg.Pool | None = None
    if args.role == "empty":
        server.add_generic_rpc_handlers([_handler(EMPTY, _empty)])
    else:
        design = classic.design(args.design)
        # One connection per concurrent call: waiting for a connection is not what is measured.
        pool = await asyncpg.create_pool(args.dsn, min_size=args.pool, max_size=args.pool)

        async def buy(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            assert pool is not None
            return SOLD if await classic.buy(pool, design, request.decode()) else SOLD_OUT

        server.add_generic_rpc_handlers([_handler(BUY, buy)])
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await server.start()
    try:
        await stopping.wait()
    finally:
        await server.stop(_STOP_GRACE)
        if pool is not None:
            await pool.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def edge_server(role: str, *options: str) -> Iterator[str]:
    """Serve `role` ("empty", or "classic" with its options) from its own process on a free
    loopback port; yields host:port, and stops the process on exit."""
    with edge_process(role, *options) as (target, _pid):
        yield target


@contextlib.contextmanager
def edge_process(role: str, *options: str) -> Iterator[tuple[str, int]]:
    """As edge_server, yielding (host:port, the serving process's pid)."""
    port = free_port()
    process = spawn(
        [sys.executable, "-m", "loadtests.edge", "--port", str(port), role, *options],
        death_signal=signal.SIGTERM,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _accepts(port):
            if process.poll() is not None:
                raise RuntimeError(f"the {role} server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {role} server did not listen within {_START_TIMEOUT} s")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("empty", help="the empty call")
    buying = roles.add_parser("classic", help="a classic purchase per call")
    buying.add_argument("--dsn", required=True)
    buying.add_argument("--design", choices=classic.DESIGNS, required=True)
    buying.add_argument("--pool", type=int, default=64, help="PostgreSQL connections")
    run_on_uvloop(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
