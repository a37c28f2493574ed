"""grpc.health.v1.Health, open to every caller without a token (probes use it), and so
kept from costing the server: a status is published only when it changes (each
publication wakes every Watch stream of that service), and Watch streams are held to a
share per peer address and to a total (server/shares.py), the excess refused at once with
RESOURCE_EXHAUSTED and a RetryInfo. Check is answered from memory and not bounded."""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from server.domain.errors import CallerLimit, Overloaded
from server.rpc.errors import to_status
from server.shares import Shares

# A place frees only when a watch ends: a refused watcher comes back in about a second.
WATCH_RETRY_AFTER_S = 1.0


def peer_address(peer: str) -> str:
    """Who a connection comes from, as watches are counted: the address of gRPC's peer
    name ("ipv4:10.0.0.7:52100", "ipv6:%5B2001:db8::7%5D:52100") without its port, an
    IPv4 address mapped into IPv6 as itself, and an IPv6 address as its /64 (one host
    commonly holds a whole /64); any other peer (a Unix socket) as named."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer
    host = urllib.parse.unquote(rest).rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class HealthService(health_aio.HealthServicer):  # type: ignore[misc]
    """The health servicer with bounded Watch streams and publication on change only."""

    def __init__(self, watches_per_peer: int, max_watches: int) -> None:
        super().__init__()
        self.watches = Shares(
            "health_watches", watches_per_peer, max_watches, retry_after=WATCH_RETRY_AFTER_S
        )
        self._published: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {}

    async def publish(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
    ) -> None:
        """Make `status` the service's, if it is not already what was last published."""
        if self._published.get(service) == status:
            return
        self._published[service] = status
        await self.set(service, status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Stream the service's status and each change of it, within the peer's share."""
        peer = peer_address(context.peer())
        try:
            self.watches.take(peer)
        except (CallerLimit, Overloaded) as refused:
            # Ended with its status rather than by an abort's exception: a flood of
            # refusals costs what a Check costs, gRPC's own work per call.
            status = to_status(refused)
            context.set_code(status.code)
            context.set_details(status.details)
            context.set_trailing_metadata(status.trailing_metadata)
            return
        try:
            await super().Watch(request, context)
        finally:
            self.watches.give_back(peer)
