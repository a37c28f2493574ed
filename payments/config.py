"""The webhook receiver's settings: the only place it reads environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from runtime.settings import EnvSettings, SettingsError, Variables

__all__ = ["PaymentsSettings", "SettingsError", "from_env", "to_env"]


@dataclass(frozen=True)
class PaymentsSettings(EnvSettings):
    """Everything the webhook receiver needs, validated once at start-up and passed down."""

    # The database of the receiver's tables (None: unset, refused by `python -m payments`).
    pg_dsn: str | None = None
    # The order server the receiver calls is payments_target (host:port), or when that is
    # empty grpc_host:grpc_port.
    payments_target: str = ""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Where the provider's webhooks are received (HTTP; a TLS-terminating proxy in front
    # when the provider is on another network).
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8090
    # A file holding the signing secret shared with the provider, one a line (two during
    # a rotation); required, and never logged.
    webhook_secret_file: str = ""
    # How far a delivery's signed timestamp may be from this machine's clock, either way.
    webhook_tolerance_s: float = 300.0
    webhook_max_body_bytes: int = 65_536
    # Prometheus metrics (payments/metrics.py) on 127.0.0.1 at this port; 0: none.
    webhook_metrics_port: int = 9475
    # The deadline of one ConfirmPayment, retries of UNAVAILABLE included.
    webhook_call_timeout_s: float = 5.0
    db_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_json: bool = True

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_PG_DSN": ("pg_dsn", str),
        "STOCKCORE_PAYMENTS_TARGET": ("payments_target", str),
        "STOCKCORE_GRPC_HOST": ("grpc_host", str),
        "STOCKCORE_GRPC_PORT": ("grpc_port", int),
        "STOCKCORE_WEBHOOK_HOST": ("webhook_host", str),
        "STOCKCORE_WEBHOOK_PORT": ("webhook_port", int),
        "STOCKCORE_WEBHOOK_SECRET_FILE": ("webhook_secret_file", str),
        "STOCKCORE_WEBHOOK_TOLERANCE": ("webhook_tolerance_s", float),
        "STOCKCORE_WEBHOOK_MAX_BODY_BYTES": ("webhook_max_body_bytes", int),
        "STOCKCORE_WEBHOOK_METRICS_PORT": ("webhook_metrics_port", int),
        "STOCKCORE_WEBHOOK_CALL_TIMEOUT": ("webhook_call_timeout_s", float),
        "STOCKCORE_DB_TIMEOUT": ("db_timeout_s", float),
        "STOCKCORE_LOG_LEVEL": ("log_level", str),
        "STOCKCORE_LOG_JSON": ("log_json", bool),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a receiver's settings must keep."""
        return [
            (1 <= self.grpc_port <= 65535, "grpc_port must be 1-65535"),
            (0 <= self.webhook_port <= 65535, "webhook_port must be 0-65535"),
            (
                0 <= self.webhook_metrics_port <= 65535,
                "webhook_metrics_port must be 0-65535",
            ),
            (
                # Long enough for clocks a little apart and a slow delivery, short enough
                # that a captured request is soon worthless.
                1 <= self.webhook_tolerance_s <= 3600,
                "webhook_tolerance_s must be 1-3600",
            ),
            (
                1024 <= self.webhook_max_body_bytes <= 1 << 20,
                "webhook_max_body_bytes must be 1024 to 1048576 (1 MiB)",
            ),
            (self.webhook_call_timeout_s > 0, "webhook_call_timeout_s must be positive"),
            (self.db_timeout_s > 0, "db_timeout_s must be positive"),
        ]

    @property
    def order_target(self) -> str:
        """The order server the receiver calls."""
        return self.payments_target or f"{self.grpc_host}:{self.grpc_port}"


# The names the program's callers read and write its variables by.
from_env = PaymentsSettings.from_env
to_env = PaymentsSettings.to_env
