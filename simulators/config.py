"""A simulator's settings: what its command line says, validated once at start-up. The
simulators read no environment variables; the payment provider's webhook signing secret
is read from the file its command line names, never from the command line itself."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from runtime.settings import CheckedSettings


@dataclass(frozen=True)
class SimulatorSettings(CheckedSettings):
    """One simulated partner: which kind, where it listens, how fast its parcels move, and
    for the payment provider its webhook endpoint, prices and timings."""

    kind: Literal["warehouse", "carrier", "payments"]
    port: int
    host: str = "127.0.0.1"
    carrier: str = "sf-express"
    pack_s: float = 0.5
    transit_s: float = 1.0
    deliver_s: float = 2.0
    # The payment provider's (simulators/payments.py).
    webhook_url: str = ""
    webhook_secret_file: str = ""
    webhook_retry_initial_s: float = 1.0
    webhook_retry_max_s: float = 60.0
    webhook_give_up_s: float = 3 * 86_400.0
    webhook_timeout_s: float = 10.0
    fee_fixed_minor: int = 30
    fee_rate_bp: int = 290
    settle_s: float = 2.0
    refund_settle_s: float = 0.5
    payout_interval_s: float = 0.0

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a simulator's settings must keep."""
        return [
            (0 <= self.port <= 65535, "port must be 0-65535"),
            (bool(self.carrier), "carrier must not be empty"),
            (
                min(self.pack_s, self.transit_s, self.deliver_s) >= 0,
                "pack_s, transit_s and deliver_s must not be negative",
            ),
            (
                not self.webhook_url or self.webhook_url.startswith(("http://", "https://")),
                "webhook_url must be an http(s) URL",
            ),
            (
                not self.webhook_url or bool(self.webhook_secret_file),
                "webhook_secret_file is needed to sign the webhooks sent to webhook_url",
            ),
            (
                0 < self.webhook_retry_initial_s <= self.webhook_retry_max_s,
                "need 0 < webhook_retry_initial_s <= webhook_retry_max_s",
            ),
            (
                self.webhook_give_up_s > 0 and self.webhook_timeout_s > 0,
                "webhook_give_up_s and webhook_timeout_s must be positive",
            ),
            (
                self.fee_fixed_minor >= 0 and 0 <= self.fee_rate_bp <= 10_000,
                "fee_fixed_minor must be >= 0, fee_rate_bp 0-10000",
            ),
            (
                min(self.settle_s, self.refund_settle_s, self.payout_interval_s) >= 0,
                "settle_s, refund_settle_s and payout_interval_s must not be negative",
            ),
        ]


def parser() -> argparse.ArgumentParser:
    """`python -m simulators` arguments."""
    p = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Serve a simulated warehouse, carrier or payment provider.",
    )
    p.add_argument("kind", choices=["warehouse", "carrier", "payments"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--carrier", default="sf-express", help="the carrier code (carriers only)")
    p.add_argument("--pack-s", type=float, default=0.5, help="seconds from hand-off to packed")
    p.add_argument(
        "--transit-s", type=float, default=1.0, help="seconds from booking to in transit"
    )
    p.add_argument("--deliver-s", type=float, default=2.0, help="seconds from booking to delivered")
    pay = p.add_argument_group("payment provider")
    pay.add_argument("--webhook-url", default="", help="where events are sent (none: not sent)")
    pay.add_argument(
        "--webhook-secret-file", default="", help="a file holding the webhook signing secret"
    )
    pay.add_argument(
        "--webhook-retry-initial-s", type=float, default=1.0, help="first wait before a retry"
    )
    pay.add_argument(
        "--webhook-retry-max-s", type=float, default=60.0, help="longest wait between retries"
    )
    pay.add_argument(
        "--webhook-give-up-s",
        type=float,
        default=3 * 86_400.0,
        help="seconds after which an unacknowledged event is given up",
    )
    pay.add_argument("--webhook-timeout-s", type=float, default=10.0, help="one delivery's timeout")
    pay.add_argument("--fee-fixed-minor", type=int, default=30, help="fixed fee per charge")
    pay.add_argument(
        "--fee-rate-bp", type=int, default=290, help="fee per charge, basis points of its amount"
    )
    pay.add_argument(
        "--settle-s", type=float, default=2.0, help="seconds until a capture is available"
    )
    pay.add_argument(
        "--refund-settle-s", type=float, default=0.5, help="seconds until a refund settles"
    )
    pay.add_argument(
        "--payout-interval-s",
        type=float,
        default=0.0,
        help="pay out the available balance this often (0: only when asked)",
    )
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
        webhook_url=args.webhook_url,
        webhook_secret_file=args.webhook_secret_file,
        webhook_retry_initial_s=args.webhook_retry_initial_s,
        webhook_retry_max_s=args.webhook_retry_max_s,
        webhook_give_up_s=args.webhook_give_up_s,
        webhook_timeout_s=args.webhook_timeout_s,
        fee_fixed_minor=args.fee_fixed_minor,
        fee_rate_bp=args.fee_rate_bp,
        settle_s=args.settle_s,
        refund_settle_s=args.refund_settle_s,
        payout_interval_s=args.payout_interval_s,
    ).validate()
