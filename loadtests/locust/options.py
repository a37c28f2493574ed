"""Command-line options every stockcore scenario shares, and the catalogue they load.

Locust hands custom options from the master to its workers, so each scenario reads them from
`environment.parsed_options` rather than from the environment.
"""

from __future__ import annotations

from typing import Any

from loadtests.locust.shop import Api


def add_common_options(parser: Any) -> None:
    """Register the shared options on Locust's argument parser."""
    group = parser.add_argument_group("stockcore")
    group.add_argument(
        "--api",
        choices=[api.value for api in Api],
        default=Api.ORDERS.value,
        help="orders: OrderService journeys; inventory: the same on Reserve/Commit/Release",
    )
    group.add_argument("--run-tag", default="load", help="prefix of order ids in this run")
    group.add_argument("--catalogue-prefix", default="LOAD", help="SKUs are <prefix>-0000000 ...")
    group.add_argument("--catalogue-size", type=int, default=1000, help="SKUs in the catalogue")
    group.add_argument(
        "--payment-window", type=float, default=8.0, help="seconds an unpaid order holds stock"
    )
    group.add_argument("--run-dir", default="", help="write the plan and business tally here")


def catalogue(prefix: str, size: int) -> list[str]:
    """The catalogue's SKUs."""
    return [sku_name(prefix, i) for i in range(size)]


def sku_name(prefix: str, index: int) -> str:
    """The SKU with number `index` in catalogue `prefix`."""
    return f"{prefix}-{index:07d}"
