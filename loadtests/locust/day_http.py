"""The reference day with half its buyers on HTTP/JSON through the gateway (Envoy), half on
gRPC straight to the server, at the same time against the same server: the gateway's cost is
each HTTP request's figures beside its gRPC twin's in the same Locust tables.

    locust -f loadtests/locust/day_http.py --headless --host 127.0.0.1:50051 \\
        --gateway-url http://127.0.0.1:8080 --api http --day-duration 240

(`make load-day API=http` starts the gateway beside a fresh stack and runs this.) The
warehouse users and the shape are day.py's; the gRPC buyers are day.py's Buyer.
"""

from __future__ import annotations

# First: patches gRPC for gevent before anything opens a channel (day.py imports it).
from loadtests.locust.day import Buyer, ReferenceDay, Warehouse, buyer_journey  # isort: skip

import os
from typing import Any

import gevent
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import LocustError

from loadtests.locust.http_shop import HttpShop
from loadtests.locust.options import catalogue
from loadtests.locust.pacing import PoissonPacing
from loadtests.locust.shop import OrderIds

__all__ = ["Buyer", "HttpBuyer", "ReferenceDay", "Warehouse"]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument_group("gateway").add_argument(
        "--gateway-url", default="", help="the HTTP/JSON gateway, http://host:port"
    )


class HttpBuyer(FastHttpUser):
    """Buyer's journeys over HTTP/JSON, one per --pacing seconds."""

    weight = Buyer.weight
    wait_time = Buyer.wait_time
    # Keep-alive connections, as a storefront's back end would hold to its gateway.
    concurrency = 1
    network_timeout = 10.0
    connection_timeout = 5.0

    def __init__(self, environment: Any) -> None:
        # Locust gives every user class --host (the gRPC server's host:port): this one
        # calls the gateway instead.
        url = environment.parsed_options.gateway_url if environment.parsed_options else ""
        if not url:
            raise LocustError("give the gateway as --gateway-url http://host:port")
        self.host = url
        super().__init__(environment)

    def on_start(self) -> None:
        """Pacing, ids and catalogue, as Buyer's."""
        self.options = self.environment.parsed_options
        self.shop = HttpShop(self.client, f"locust-httpbuyer-{os.getpid()}")
        self.skus = catalogue(self.options.catalogue_prefix, self.options.catalogue_size)
        self.ids = OrderIds(self.options.run_tag)
        pacing = PoissonPacing(self.options.pacing)
        self.wait_time = pacing  # type: ignore[method-assign]
        gevent.sleep(pacing.first_delay())

    @task
    def journey(self) -> None:
        """Browse, order, then pay, cancel or walk away; look the order up afterwards."""
        buyer_journey(self.shop, True, self.options, self.ids, self.skus)
