"""The development stack's own settings: the only place it reads its environment variables.
The programs it starts (the server, the gateway, the fulfilment worker) read theirs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from runtime.settings import EnvSettings, SettingsError, Variables

__all__ = ["DevSettings", "SettingsError", "from_env", "to_env"]


@dataclass(frozen=True)
class DevSettings(EnvSettings):
    """Where `make run` keeps its data and which local ports its servers take."""

    # The data folder (git-ignored): PostgreSQL, Redis, development credentials, logs.
    data_dir: str = ".data"
    # The project-owned PostgreSQL and Redis, started unless STOCKCORE_PG_DSN and
    # STOCKCORE_REDIS_URL name servers.
    dev_pg_port: int = 54329
    dev_redis_port: int = 56389
    # maxmemory of the Redis that `make run` and the tests start, which refuses writes
    # beyond it (devstack/servers.py says why not evict). The reference day's budget is
    # about 1,600 MB (README, "Redis memory"): 60 % of this, so the alert at 80 % fires
    # only once Redis holds a third more than the budget.
    dev_redis_maxmemory_mb: int = 2560
    demo_catalogue: bool = True
    # Seconds a checkout page's token is valid (devstack/page_session.py): the page asks
    # for a fresh one before it runs out.
    dev_page_token_ttl_s: float = 600.0
    # Where `make run` starts the simulators.
    dev_warehouse_port: int = 58080
    dev_primary_carrier_port: int = 58081
    dev_fallback_carrier_port: int = 58082
    # Where `make run` starts the simulated payment provider; its webhooks go to the
    # receiver's port (payments/config.py, STOCKCORE_WEBHOOK_PORT).
    dev_payments_port: int = 58083
    # Prometheus (devstack/prometheus.py): where `make run` serves it, scraping the server,
    # the fulfilment worker, Envoy and itself; 0 starts none.
    dev_prometheus_port: int = 9090

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_DATA_DIR": ("data_dir", str),
        "STOCKCORE_DEV_PG_PORT": ("dev_pg_port", int),
        "STOCKCORE_DEV_REDIS_PORT": ("dev_redis_port", int),
        "STOCKCORE_DEV_REDIS_MAXMEMORY_MB": ("dev_redis_maxmemory_mb", int),
        "STOCKCORE_DEMO_CATALOGUE": ("demo_catalogue", bool),
        "STOCKCORE_DEV_PAGE_TOKEN_TTL": ("dev_page_token_ttl_s", float),
        "STOCKCORE_DEV_WAREHOUSE_PORT": ("dev_warehouse_port", int),
        "STOCKCORE_DEV_PRIMARY_CARRIER_PORT": ("dev_primary_carrier_port", int),
        "STOCKCORE_DEV_FALLBACK_CARRIER_PORT": ("dev_fallback_carrier_port", int),
        "STOCKCORE_DEV_PAYMENTS_PORT": ("dev_payments_port", int),
        "STOCKCORE_DEV_PROMETHEUS_PORT": ("dev_prometheus_port", int),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a stack's settings must keep."""
        ports = (
            self.dev_pg_port,
            self.dev_redis_port,
            self.dev_warehouse_port,
            self.dev_primary_carrier_port,
            self.dev_fallback_carrier_port,
            self.dev_payments_port,
        )
        return [
            (bool(self.data_dir), "data_dir must not be empty"),
            (all(1 <= p <= 65535 for p in ports), "dev ports must be 1-65535"),
            (0 <= self.dev_prometheus_port <= 65535, "dev_prometheus_port must be 0-65535"),
            (self.dev_redis_maxmemory_mb >= 64, "dev_redis_maxmemory_mb must be at least 64"),
            (
                60 <= self.dev_page_token_ttl_s <= 900,
                "dev_page_token_ttl_s must be 60-900: a page's token lives minutes, not hours",
            ),
        ]


# The names the program's callers read and write its variables by.
from_env = DevSettings.from_env
to_env = DevSettings.to_env
