"""The reconciler's settings: the only place it reads environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from runtime.settings import EnvSettings, SettingsError, Variables

__all__ = ["ReconcilerSettings", "SettingsError", "from_env", "to_env"]


@dataclass(frozen=True)
class ReconcilerSettings(EnvSettings):
    """Everything the reconciler needs, validated once at start-up and passed down."""

    # The database of the ledger and the reconciler's tables (None: unset, refused by
    # `python -m payments.reconciler`).
    pg_dsn: str | None = None
    # The payment provider's API, whose settlement feed is read.
    provider_url: str = "http://127.0.0.1:58083"
    # The order server a charge whose webhook never came is confirmed with
    # (payments_target, or when that is empty grpc_host:grpc_port); recover=False leaves
    # such a charge to its MISSING_HERE exception.
    payments_target: str = ""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    recover: bool = True
    # Seconds between two passes when the feed has nothing new, and the page read at once.
    interval_s: float = 1.0
    page_size: int = 100
    # How long a fact waits for the other side before it is a discrepancy, and how long
    # after its creation a balance transaction may reach the feed before it is late.
    grace_s: float = 300.0
    settle_deadline_s: float = 60.0
    # How long after a UTC day ends its daily close waits for the day's late settlements;
    # one that comes after lands in the next open day.
    close_margin_s: float = 3600.0
    # The deadline of one request to the provider, and of one ConfirmPayment.
    provider_timeout_s: float = 10.0
    call_timeout_s: float = 5.0
    db_timeout_s: float = 10.0
    # Seconds between two checks of the ledger against its facts: a check reads whole
    # tables (stockcore.ledger_imbalance), so it runs far less often than a pass.
    ledger_check_s: float = 60.0
    # Prometheus metrics (payments/reconciler/metrics.py) on 127.0.0.1 at this port; 0: none.
    reconcile_metrics_port: int = 9476
    log_level: str = "INFO"
    log_json: bool = True

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_PG_DSN": ("pg_dsn", str),
        "STOCKCORE_PAYMENT_PROVIDER_URL": ("provider_url", str),
        "STOCKCORE_PAYMENTS_TARGET": ("payments_target", str),
        "STOCKCORE_GRPC_HOST": ("grpc_host", str),
        "STOCKCORE_GRPC_PORT": ("grpc_port", int),
        "STOCKCORE_RECONCILE_RECOVER": ("recover", bool),
        "STOCKCORE_RECONCILE_INTERVAL": ("interval_s", float),
        "STOCKCORE_RECONCILE_PAGE_SIZE": ("page_size", int),
        "STOCKCORE_RECONCILE_GRACE": ("grace_s", float),
        "STOCKCORE_RECONCILE_SETTLE_DEADLINE": ("settle_deadline_s", float),
        "STOCKCORE_RECONCILE_CLOSE_MARGIN": ("close_margin_s", float),
        "STOCKCORE_RECONCILE_LEDGER_CHECK_INTERVAL": ("ledger_check_s", float),
        "STOCKCORE_RECONCILE_METRICS_PORT": ("reconcile_metrics_port", int),
        "STOCKCORE_PAYMENT_PROVIDER_TIMEOUT": ("provider_timeout_s", float),
        "STOCKCORE_RECONCILE_CALL_TIMEOUT": ("call_timeout_s", float),
        "STOCKCORE_DB_TIMEOUT": ("db_timeout_s", float),
        "STOCKCORE_LOG_LEVEL": ("log_level", str),
        "STOCKCORE_LOG_JSON": ("log_json", bool),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a reconciler's settings must keep."""
        return [
            (
                self.provider_url.startswith(("http://", "https://")),
                "provider_url must be an http:// or https:// URL",
            ),
            (1 <= self.grpc_port <= 65535, "grpc_port must be 1-65535"),
            (self.interval_s > 0, "interval_s must be positive"),
            # The provider's own limit of a page.
            (1 <= self.page_size <= 100, "page_size must be 1-100"),
            (self.grace_s >= 0, "grace_s must be 0 or more"),
            (self.settle_deadline_s >= 0, "settle_deadline_s must be 0 or more"),
            (self.close_margin_s >= 0, "close_margin_s must be 0 or more"),
            (self.provider_timeout_s > 0, "provider_timeout_s must be positive"),
            (self.call_timeout_s > 0, "call_timeout_s must be positive"),
            (self.db_timeout_s > 0, "db_timeout_s must be positive"),
            (self.ledger_check_s > 0, "ledger_check_s must be positive"),
            (
                0 <= self.reconcile_metrics_port <= 65535,
                "reconcile_metrics_port must be 0-65535",
            ),
        ]

    @property
    def order_target(self) -> str:
        """The order server the reconciler calls."""
        return self.payments_target or f"{self.grpc_host}:{self.grpc_port}"


# The names the program's callers read and write its variables by.
from_env = ReconcilerSettings.from_env
to_env = ReconcilerSettings.to_env
