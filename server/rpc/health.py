"""grpc.health.v1.Health, open to every caller without a token (probes use it), and so
kept from costing the server: a status is published only when it changes (each
publication wakes every Watch stream of that service). Check is answered from memory."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]


class HealthService(health_aio.HealthServicer):  # type: ignore[misc]
    """The health servicer, publishing a status only when it changes."""

    def __init__(self) -> None:
        super().__init__()
        self._published: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {}

    async def publish(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
    ) -> None:
        """Make `status` the service's, if it is not already what was last published."""
        if self._published.get(service) == status:
            return
        self._published[service] = status
        await self.set(service, status)
