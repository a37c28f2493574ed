"""The Locust user base class for stockcore: one gRPC channel per user, every call reported.

Importing this module patches gRPC for gevent, which must happen after gevent's own patching
(done by importing locust) and before any channel exists, so locustfiles import it first.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User
from locust.exception import LocustError
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc

from loadtests.locust.interceptor import DEFAULT_DEADLINE_S, LocustReporter, RejectionPolicy

grpc_gevent.init_gevent()

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
"""Channel options: detect a vanished server, reconnect quickly after a restart."""


class GrpcUser(User):
    """A user with its own channel (opened on start, reused by every call, closed on stop),
    an inventory and an orders stub, and a reporter that gives every call a deadline."""

    abstract = True

    rejections: ClassVar[RejectionPolicy] = RejectionPolicy()
    """Which non-OK codes of which RPCs are expected business outcomes in this scenario."""
    deadline_s: ClassVar[float] = DEFAULT_DEADLINE_S
    """The deadline of a call made without an explicit timeout."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("give the server as --host host:port (no scheme)")
        self.caller = f"locust-{type(self).__name__.lower()}-{os.getpid()}"
        self._channel: grpc.Channel | None = None

    def on_start(self) -> None:
        """Open this user's channel."""
        reporter = LocustReporter(
            self.environment.events.request.fire,
            self.rejections,
            caller=self.caller,
            deadline_s=self.deadline_s,
        )
        target = self.host.removeprefix("grpc://").removeprefix("http://")
        self._channel = grpc.intercept_channel(
            grpc.insecure_channel(target, options=CHANNEL_OPTIONS), reporter
        )
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(self._channel)
        self.orders = orders_pb2_grpc.OrderServiceStub(self._channel)

    def on_stop(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
