"""The empty-call ceiling: the most unary calls per second grpc.aio manages on this machine.

A server whose handler does nothing bounds what any real service could reach with the same
runtime, so the stockcore figures are read against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.connection import Connection

import grpc

from loadtests.driver import RunResult, die_with_parent, run_in_processes, run_on_uvloop

SERVICE = "stockcore.bench.Empty"
"""The full name of the empty service."""

METHOD = f"/{SERVICE}/Call"
"""The path of its one method, which takes any bytes and returns none."""

_CALL_TIMEOUT = 10.0
_SERVER_START_TIMEOUT = 60.0


async def _call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


async def _serve_until_released(control: Connection) -> None:
    server = grpc.aio.server()
    # No (de)serializers: requests and responses stay raw bytes.
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(_call)}
    )
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    released = asyncio.Event()
    loop = asyncio.get_running_loop()
    # A message or EOF both end the server: EOF means the parent has gone without a word.
    loop.add_reader(control.fileno(), released.set)
    try:
        control.send(port)
        await released.wait()
    finally:
        loop.remove_reader(control.fileno())
        await server.stop(grace=1.0)


def _server_child(control: Connection, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    run_on_uvloop(_serve_until_released(control))


@contextlib.contextmanager
def empty_server() -> Iterator[int]:
    """Serve the empty service from a child process on loopback; yields its port."""
    context = multiprocessing.get_context("spawn")
    control, child_end = context.Pipe()
    child = context.Process(
        target=_server_child, args=(child_end, os.getpid()), name="empty-server", daemon=True
    )
    child.start()
    child_end.close()
    try:
        if not control.poll(_SERVER_START_TIMEOUT):
            raise TimeoutError("the empty server did not report its port")
        try:
            port = control.recv()
        except EOFError:
            child.join(timeout=10)
            raise RuntimeError(f"the empty server died with exit code {child.exitcode}") from None
        assert isinstance(port, int)
        yield port
    finally:
        with contextlib.suppress(OSError):
            control.send("stop")
        control.close()
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
            child.join()


class EmptyCall:
    """A closed-loop op that makes one empty call over its own channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        """Wrap a channel that is already connected to the empty server."""
        self._channel = channel
        self._call = channel.unary_unary(METHOD, None, None)

    async def __call__(self, worker: int) -> None:
        """Make one call."""
        await self._call(b"", timeout=_CALL_TIMEOUT)

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


async def open_empty_call(port: int) -> EmptyCall:
    """Connect to the empty server on 127.0.0.1:`port` and return the op that calls it."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), _CALL_TIMEOUT)
    except BaseException:
        await channel.close(None)
        raise
    return EmptyCall(channel)


def measure_ceiling(
    concurrency: int, duration: float, processes: int, *, warmup: float = 1.0
) -> RunResult:
    """Drive the empty server with `concurrency` callers spread over `processes` processes."""
    with empty_server() as port:
        return run_in_processes(
            functools.partial(open_empty_call, port),
            processes=processes,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
        )


def main() -> None:
    """Print the ceiling for the given load shape."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-p", "--processes", type=int, default=1)
    parser.add_argument("-w", "--warmup", type=float, default=1.0)
    args = parser.parse_args()
    result = measure_ceiling(args.concurrency, args.duration, args.processes, warmup=args.warmup)
    print(f"empty call, {args.concurrency} callers, {args.processes} processes: {result.summary()}")


if __name__ == "__main__":
    main()
