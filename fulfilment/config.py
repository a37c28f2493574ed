"""The fulfilment worker's settings: the only place it reads environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from runtime.settings import EnvSettings, SettingsError, Variables, parse_list, parse_optional_name

__all__ = ["FulfilmentSettings", "SettingsError", "from_env", "to_env"]


@dataclass(frozen=True)
class FulfilmentSettings(EnvSettings):
    """Everything a fulfilment worker needs, validated once at start-up and passed down."""

    # The database of the fulfilment tables and the Redis of the order event stream; the
    # worker needs both (None: unset, refused by `python -m fulfilment`).
    pg_dsn: str | None = None
    redis_url: str | None = None
    # The order server the worker calls is fulfil_target (host:port), or when that is
    # empty grpc_host:grpc_port; the metrics endpoint listens on grpc_host too.
    fulfil_target: str = ""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    db_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_json: bool = True
    # Carriers whose pick-ups the order server's ShipOrder accepts: the worker's carriers
    # must be among them.
    carriers: tuple[str, ...] = ("sf-express", "jd-logistics", "cainiao", "ups", "dhl", "fedex")
    warehouse_url: str = "http://127.0.0.1:58080"
    primary_carrier: str = "sf-express"
    primary_carrier_url: str = "http://127.0.0.1:58081"
    # Empty: no fallback carrier.
    fallback_carrier: str = "jd-logistics"
    fallback_carrier_url: str = "http://127.0.0.1:58082"
    fulfil_metrics_port: int = 9474  # 0 disables
    # Orders one worker works at once, and at most how many it claims per statement.
    fulfil_concurrency: int = 256
    fulfil_batch: int = 100
    # How often an idle worker looks for due work.
    fulfil_poll_interval_s: float = 0.2
    # How long a claimed order stays a worker's before another may take it over.
    fulfil_lease_s: float = 120.0
    # An ORDER_PAID entry a dead worker left pending is taken over after this long.
    fulfil_event_claim_idle_s: float = 30.0
    # One partner call: its timeout (the whole exchange, the reply's last byte included),
    # the largest reply it reads, and how often it is tried at once (backoff with jitter
    # between tries, from retry_initial_s up to retry_max_s).
    partner_timeout_s: float = 10.0
    partner_max_reply_bytes: int = 1 << 20
    partner_call_attempts: int = 3
    partner_retry_initial_s: float = 0.2
    partner_retry_max_s: float = 2.0
    # A step's retry budget: failed tries before it goes to the dead letters; between
    # tries the order waits step_backoff_initial_s, doubling up to step_backoff_max_s.
    step_max_attempts: int = 8
    step_backoff_initial_s: float = 1.0
    step_backoff_max_s: float = 60.0
    # How often the warehouse is asked about an order it has not packed yet, and a
    # carrier about a parcel not yet delivered.
    pack_poll_s: float = 1.0
    track_poll_s: float = 60.0
    # The circuit breaker of each partner (runtime/breaker.py).
    breaker_slow_call_s: float = 3.0
    breaker_slow_rate: float = 0.5
    breaker_error_rate: float = 0.05
    breaker_min_calls: int = 20
    breaker_window_s: float = 60.0
    breaker_consecutive_failures: int = 5
    breaker_open_s: float = 30.0
    breaker_half_open_calls: int = 3
    # The stale-sync scan: how often, and how old a last sync is stale.
    stale_scan_interval_s: float = 900.0
    stale_after_s: float = 1800.0

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_PG_DSN": ("pg_dsn", str),
        "STOCKCORE_REDIS_URL": ("redis_url", str),
        "STOCKCORE_FULFIL_TARGET": ("fulfil_target", str),
        "STOCKCORE_GRPC_HOST": ("grpc_host", str),
        "STOCKCORE_GRPC_PORT": ("grpc_port", int),
        "STOCKCORE_DB_TIMEOUT": ("db_timeout_s", float),
        "STOCKCORE_LOG_LEVEL": ("log_level", str),
        "STOCKCORE_LOG_JSON": ("log_json", bool),
        "STOCKCORE_CARRIERS": ("carriers", parse_list),
        "STOCKCORE_WAREHOUSE_URL": ("warehouse_url", str),
        "STOCKCORE_PRIMARY_CARRIER": ("primary_carrier", str),
        "STOCKCORE_PRIMARY_CARRIER_URL": ("primary_carrier_url", str),
        "STOCKCORE_FALLBACK_CARRIER": ("fallback_carrier", parse_optional_name),
        "STOCKCORE_FALLBACK_CARRIER_URL": ("fallback_carrier_url", str),
        "STOCKCORE_FULFIL_METRICS_PORT": ("fulfil_metrics_port", int),
        "STOCKCORE_FULFIL_CONCURRENCY": ("fulfil_concurrency", int),
        "STOCKCORE_FULFIL_BATCH": ("fulfil_batch", int),
        "STOCKCORE_FULFIL_POLL_INTERVAL": ("fulfil_poll_interval_s", float),
        "STOCKCORE_FULFIL_LEASE": ("fulfil_lease_s", float),
        "STOCKCORE_FULFIL_EVENT_CLAIM_IDLE": ("fulfil_event_claim_idle_s", float),
        "STOCKCORE_PARTNER_TIMEOUT": ("partner_timeout_s", float),
        "STOCKCORE_PARTNER_MAX_REPLY_BYTES": ("partner_max_reply_bytes", int),
        "STOCKCORE_PARTNER_CALL_ATTEMPTS": ("partner_call_attempts", int),
        "STOCKCORE_PARTNER_RETRY_INITIAL": ("partner_retry_initial_s", float),
        "STOCKCORE_PARTNER_RETRY_MAX": ("partner_retry_max_s", float),
        "STOCKCORE_STEP_MAX_ATTEMPTS": ("step_max_attempts", int),
        "STOCKCORE_STEP_BACKOFF_INITIAL": ("step_backoff_initial_s", float),
        "STOCKCORE_STEP_BACKOFF_MAX": ("step_backoff_max_s", float),
        "STOCKCORE_PACK_POLL": ("pack_poll_s", float),
        "STOCKCORE_TRACK_POLL": ("track_poll_s", float),
        "STOCKCORE_BREAKER_SLOW_CALL": ("breaker_slow_call_s", float),
        "STOCKCORE_BREAKER_SLOW_RATE": ("breaker_slow_rate", float),
        "STOCKCORE_BREAKER_ERROR_RATE": ("breaker_error_rate", float),
        "STOCKCORE_BREAKER_MIN_CALLS": ("breaker_min_calls", int),
        "STOCKCORE_BREAKER_WINDOW": ("breaker_window_s", float),
        "STOCKCORE_BREAKER_CONSECUTIVE_FAILURES": ("breaker_consecutive_failures", int),
        "STOCKCORE_BREAKER_OPEN": ("breaker_open_s", float),
        "STOCKCORE_BREAKER_HALF_OPEN_CALLS": ("breaker_half_open_calls", int),
        "STOCKCORE_STALE_SCAN_INTERVAL": ("stale_scan_interval_s", float),
        "STOCKCORE_STALE_AFTER": ("stale_after_s", float),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a worker's settings must keep."""
        carriers = [self.primary_carrier] + (
            [self.fallback_carrier] if self.fallback_carrier else []
        )
        return [
            (1 <= self.grpc_port <= 65535 or self.grpc_port == 0, "grpc_port must be 0-65535"),
            (
                # The order server checks the names themselves (server/config.py).
                all(c in self.carriers for c in carriers),
                "primary_carrier and fallback_carrier must be among carriers",
            ),
            (self.fallback_carrier != self.primary_carrier, "the fallback must be another carrier"),
            (
                all(
                    u.startswith(("http://", "https://"))
                    for u in (self.warehouse_url, self.primary_carrier_url)
                )
                and (not self.fallback_carrier or self.fallback_carrier_url.startswith("http")),
                "partner URLs must be http(s) URLs",
            ),
            (0 <= self.fulfil_metrics_port <= 65535, "fulfil_metrics_port must be 0-65535"),
            (1 <= self.fulfil_concurrency <= 10_000, "fulfil_concurrency must be 1-10000"),
            (1 <= self.fulfil_batch <= 1000, "fulfil_batch must be 1-1000"),
            (0 < self.fulfil_poll_interval_s <= 10, "fulfil_poll_interval_s must be in (0, 10]"),
            (
                # A step makes up to two guarded calls (a cancellation: carrier, warehouse).
                self.fulfil_lease_s
                > 2
                * (self.partner_timeout_s + self.partner_retry_max_s)
                * self.partner_call_attempts,
                "fulfil_lease_s must exceed 2 x (partner_timeout_s + partner_retry_max_s)"
                " x partner_call_attempts",
            ),
            (self.partner_timeout_s > 0, "partner_timeout_s must be positive"),
            (
                # A status reply for a batch of 1,000 orders fits in well under 1 MiB.
                4096 <= self.partner_max_reply_bytes <= 64 << 20,
                "partner_max_reply_bytes must be 4096 to 67108864 (64 MiB)",
            ),
            (self.fulfil_event_claim_idle_s > 0, "fulfil_event_claim_idle_s must be positive"),
            (1 <= self.partner_call_attempts <= 10, "partner_call_attempts must be 1-10"),
            (
                0 < self.partner_retry_initial_s <= self.partner_retry_max_s,
                "need 0 < partner_retry_initial_s <= partner_retry_max_s",
            ),
            (1 <= self.step_max_attempts <= 100, "step_max_attempts must be 1-100"),
            (
                0 < self.step_backoff_initial_s <= self.step_backoff_max_s,
                "need 0 < step_backoff_initial_s <= step_backoff_max_s",
            ),
            (self.pack_poll_s > 0 and self.track_poll_s > 0, "poll intervals must be positive"),
            (self.breaker_slow_call_s > 0, "breaker_slow_call_s must be positive"),
            (0 < self.breaker_slow_rate <= 1, "breaker_slow_rate must be in (0, 1]"),
            (0 <= self.breaker_error_rate < 1, "breaker_error_rate must be in [0, 1)"),
            (
                min(
                    self.breaker_min_calls,
                    self.breaker_consecutive_failures,
                    self.breaker_half_open_calls,
                )
                >= 1,
                "breaker_min_calls, _consecutive_failures and _half_open_calls must be >= 1",
            ),
            (
                self.breaker_window_s > 0 and self.breaker_open_s > 0,
                "breaker_window_s and breaker_open_s must be positive",
            ),
            (
                self.stale_scan_interval_s > 0 and self.stale_after_s > 0,
                "stale_scan_interval_s and stale_after_s must be positive",
            ),
        ]

    @property
    def order_target(self) -> str:
        """The order server the worker calls."""
        return self.fulfil_target or f"{self.grpc_host}:{self.grpc_port}"


# The names the program's callers read and write its variables by.
from_env = FulfilmentSettings.from_env
to_env = FulfilmentSettings.to_env
