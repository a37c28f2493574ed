"""The empty call at a scenario's pace: what Locust and grpc.aio alone cost per call.

    locust -f loadtests/locust/empty.py --headless --host 127.0.0.1:50100 \
        --users 474 --spawn-rate 474 --run-time 15s --call-pacing 0.4

Each user is a GrpcUser like the scenarios' (its own channel, the same reporting
interceptor and deadline) that makes one empty call (loadtests/edge.py, `empty`) every
--call-pacing seconds on average, Poisson-spaced, so the server sees as many connections
and as spread-out calls as in the scenario whose pace is copied (loadtests/floor.py).
"""

from __future__ import annotations

# First: patches gRPC for gevent before anything opens a channel.
from loadtests.locust.grpc_user import GrpcUser  # isort: skip

from typing import Any

import gevent
from google.protobuf import empty_pb2
from locust import constant, events, task

from loadtests.edge import EMPTY
from loadtests.locust.options import add_common_options
from loadtests.locust.pacing import PoissonPacing


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_common_options(parser)
    parser.add_argument_group("empty call").add_argument(
        "--call-pacing", type=float, default=1.0, help="mean seconds between one user's calls"
    )


class EmptyCaller(GrpcUser):
    """One empty call per --call-pacing seconds."""

    wait_time = constant(0)  # replaced in on_start, once options are known

    def on_start(self) -> None:
        super().on_start()
        assert self._channel is not None
        # The empty server answers no bytes, which parse as an Empty message (the reporter
        # reads the answer's size).
        self.call = self._channel.unary_unary(
            EMPTY,
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        pacing = PoissonPacing(self.environment.parsed_options.call_pacing)
        self.wait_time = pacing  # type: ignore[method-assign]
        gevent.sleep(pacing.first_delay())

    @task
    def empty(self) -> None:
        self.call(empty_pb2.Empty())
