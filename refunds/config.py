"""The refund sender's settings: the only place it reads environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from runtime.breaker import BreakerSettings
from runtime.settings import EnvSettings, SettingsError, Variables

__all__ = ["RefundSettings", "SettingsError", "from_env", "to_env"]


@dataclass(frozen=True)
class RefundSettings(EnvSettings):
    """Everything the refund sender needs, validated once at start-up and passed down."""

    # The database of stockcore.refunds (None: unset, refused by `python -m refunds`).
    pg_dsn: str | None = None
    # The payment provider's API (POST /v1/refunds, GET /v1/refunds/{id}); the default is
    # make run's simulated provider (devstack's dev_payments_port).
    provider_url: str = "http://127.0.0.1:58083"
    # One call's whole exchange, and the largest reply read.
    provider_timeout_s: float = 10.0
    provider_max_reply_bytes: int = 65_536
    # Refunds claimed at a time, how long a claim holds them (longer than a call), and
    # how often the sender looks when it found nothing due.
    refund_batch: int = 20
    refund_lease_s: float = 30.0
    refund_idle_s: float = 1.0
    # A failed send is due again after retry_initial_s, doubling up to retry_max_s (with
    # jitter); a refund the provider has not settled is polled every poll_s.
    refund_retry_initial_s: float = 1.0
    refund_retry_max_s: float = 300.0
    refund_poll_s: float = 30.0
    # The provider's circuit breaker (runtime/breaker.py).
    breaker_consecutive_failures: int = 5
    breaker_error_rate: float = 0.5
    breaker_min_calls: int = 20
    breaker_window_s: float = 60.0
    breaker_slow_call_s: float = 5.0
    breaker_open_s: float = 30.0
    breaker_half_open_calls: int = 1
    db_timeout_s: float = 10.0
    # Prometheus metrics (refunds/metrics.py) on 127.0.0.1 at this port; 0: none.
    refund_metrics_port: int = 9477
    log_level: str = "INFO"
    log_json: bool = True

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_PG_DSN": ("pg_dsn", str),
        "STOCKCORE_PAYMENT_PROVIDER_URL": ("provider_url", str),
        "STOCKCORE_PAYMENT_PROVIDER_TIMEOUT": ("provider_timeout_s", float),
        "STOCKCORE_PAYMENT_PROVIDER_MAX_REPLY_BYTES": ("provider_max_reply_bytes", int),
        "STOCKCORE_REFUND_BATCH": ("refund_batch", int),
        "STOCKCORE_REFUND_LEASE": ("refund_lease_s", float),
        "STOCKCORE_REFUND_IDLE": ("refund_idle_s", float),
        "STOCKCORE_REFUND_RETRY_INITIAL": ("refund_retry_initial_s", float),
        "STOCKCORE_REFUND_RETRY_MAX": ("refund_retry_max_s", float),
        "STOCKCORE_REFUND_POLL": ("refund_poll_s", float),
        "STOCKCORE_REFUND_BREAKER_FAILURES": ("breaker_consecutive_failures", int),
        "STOCKCORE_REFUND_BREAKER_ERROR_RATE": ("breaker_error_rate", float),
        "STOCKCORE_REFUND_BREAKER_MIN_CALLS": ("breaker_min_calls", int),
        "STOCKCORE_REFUND_BREAKER_WINDOW": ("breaker_window_s", float),
        "STOCKCORE_REFUND_BREAKER_SLOW_CALL": ("breaker_slow_call_s", float),
        "STOCKCORE_REFUND_BREAKER_OPEN": ("breaker_open_s", float),
        "STOCKCORE_REFUND_BREAKER_HALF_OPEN_CALLS": ("breaker_half_open_calls", int),
        "STOCKCORE_DB_TIMEOUT": ("db_timeout_s", float),
        "STOCKCORE_REFUND_METRICS_PORT": ("refund_metrics_port", int),
        "STOCKCORE_LOG_LEVEL": ("log_level", str),
        "STOCKCORE_LOG_JSON": ("log_json", bool),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a sender's settings must keep."""
        return [
            (
                self.provider_url.startswith(("http://", "https://")),
                "provider_url must be an http(s) URL",
            ),
            (self.provider_timeout_s > 0, "provider_timeout_s must be positive"),
            (1024 <= self.provider_max_reply_bytes, "provider_max_reply_bytes must be >= 1024"),
            (1 <= self.refund_batch <= 1000, "refund_batch must be 1-1000"),
            (
                # A lease that lapses during a call lets another sender repeat it: harmless
                # (the idempotency key), but wasted.
                self.refund_lease_s > self.provider_timeout_s,
                "refund_lease_s must be longer than provider_timeout_s",
            ),
            (self.refund_idle_s > 0, "refund_idle_s must be positive"),
            (
                0 < self.refund_retry_initial_s <= self.refund_retry_max_s,
                "need 0 < refund_retry_initial_s <= refund_retry_max_s",
            ),
            (self.refund_poll_s > 0, "refund_poll_s must be positive"),
            (self.db_timeout_s > 0, "db_timeout_s must be positive"),
            (0 <= self.refund_metrics_port <= 65535, "refund_metrics_port must be 0-65535"),
        ]

    def breaker(self) -> BreakerSettings:
        """The provider's breaker thresholds (its slow rate is the fulfilment default)."""
        return BreakerSettings(
            slow_call_s=self.breaker_slow_call_s,
            error_rate=self.breaker_error_rate,
            min_calls=self.breaker_min_calls,
            window_s=self.breaker_window_s,
            consecutive_failures=self.breaker_consecutive_failures,
            open_s=self.breaker_open_s,
            half_open_calls=self.breaker_half_open_calls,
        )


# The names the program's callers read and write its variables by.
from_env = RefundSettings.from_env
to_env = RefundSettings.to_env
