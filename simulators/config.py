"""A simulator's settings: what its command line says, validated once at start-up. The
simulators read no environment variables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from runtime.settings import CheckedSettings


@dataclass(frozen=True)
class SimulatorSettings(CheckedSettings):
    """One simulated partner: which kind, where it listens, and how fast its parcels move."""

    kind: Literal["warehouse", "carrier"]
    port: int
    host: str = "127.0.0.1"
    carrier: str = "sf-express"
    pack_s: float = 0.5
    transit_s: float = 1.0
    deliver_s: float = 2.0

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a simulator's settings must keep."""
        return [
            (0 <= self.port <= 65535, "port must be 0-65535"),
            (bool(self.carrier), "carrier must not be empty"),
            (
                min(self.pack_s, self.transit_s, self.deliver_s) >= 0,
                "pack_s, transit_s and deliver_s must not be negative",
            ),
        ]


def parser() -> argparse.ArgumentParser:
    """`python -m simulators` arguments."""
    p = argparse.ArgumentParser(
        prog="python -m simulators", description="Serve a simulated warehouse or carrier."
    )
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


def from_args(argv: list[str] | None = None) -> SimulatorSettings:
    """Settings from the command line (default: the process's), validated."""
    args = parser().parse_args(argv)
    return SimulatorSettings(
        kind=args.kind,
        port=args.port,
        host=args.host,
        carrier=args.carrier,
        pack_s=args.pack_s,
        transit_s=args.transit_s,
        deliver_s=args.deliver_s,
    ).validate()
