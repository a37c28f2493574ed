"""The empty-call ceiling: the most unary calls per second grpc.aio manages on this machine.

A server whose handler does nothing (loadtests/edge.py, `empty`) bounds what any real service
could reach with the same runtime, so the stockcore figures are read against it, measured by
the same closed-loop driver in the same run.

    python -m loadtests.ceiling --concurrency 64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import functools

import grpc

from loadtests.driver import RunResult, run_in_processes
from loadtests.edge import EMPTY, edge_server

_CALL_TIMEOUT = 10.0


class EmptyCall:
    """A closed-loop op that makes one empty call over its own channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        """Wrap a channel that is already connected to the empty server."""
        self._channel = channel
        self._call = channel.unary_unary(EMPTY, None, None)

    async def __call__(self, worker: int) -> None:
        """Make one call."""
        await self._call(b"", timeout=_CALL_TIMEOUT)

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


async def open_empty_call(target: str) -> EmptyCall:
    """Connect to the empty server at `target` and return the op that calls it."""
    channel = grpc.aio.insecure_channel(target)
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
    with edge_server("empty") as target:
        return run_in_processes(
            functools.partial(open_empty_call, target),
            processes=processes,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
        )


def main() -> None:
    """Print the ceiling for the given load shape."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-p", "--processes", type=int, default=1)
    parser.add_argument("-w", "--warmup", type=float, default=1.0)
    args = parser.parse_args()
    result = measure_ceiling(args.concurrency, args.duration, args.processes, warmup=args.warmup)
    print(f"empty call, {args.concurrency} callers, {args.processes} processes: {result.summary()}")


if __name__ == "__main__":
    main()
