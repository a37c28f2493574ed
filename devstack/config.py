"""The development stack's own settings: the only place it reads its environment variables.
The programs it starts (the server, the gateway, the fulfilment worker) read theirs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from runtime import settings as env
from runtime.settings import SettingsError

__all__ = ["DevSettings", "SettingsError", "from_env", "to_env"]


@dataclass(frozen=True)
class DevSettings:
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
    # Where `make run` starts the simulators.
    dev_warehouse_port: int = 58080
    dev_primary_carrier_port: int = 58081
    dev_fallback_carrier_port: int = 58082

    def validate(self) -> DevSettings:
        """Raise SettingsError for values the stack cannot run with."""
        ports = (
            self.dev_pg_port,
            self.dev_redis_port,
            self.dev_warehouse_port,
            self.dev_primary_carrier_port,
            self.dev_fallback_carrier_port,
        )
        checks = [
            (bool(self.data_dir), "data_dir must not be empty"),
            (all(1 <= p <= 65535 for p in ports), "dev ports must be 1-65535"),
            (self.dev_redis_maxmemory_mb >= 64, "dev_redis_maxmemory_mb must be at least 64"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        return self

    def with_overrides(self, **changes: object) -> DevSettings:
        """Return a copy with the given fields changed, validated."""
        return replace(self, **changes).validate()  # type: ignore[arg-type]


_ENV: env.Variables = {
    "STOCKCORE_DATA_DIR": ("data_dir", str),
    "STOCKCORE_DEV_PG_PORT": ("dev_pg_port", int),
    "STOCKCORE_DEV_REDIS_PORT": ("dev_redis_port", int),
    "STOCKCORE_DEV_REDIS_MAXMEMORY_MB": ("dev_redis_maxmemory_mb", int),
    "STOCKCORE_DEMO_CATALOGUE": ("demo_catalogue", bool),
    "STOCKCORE_DEV_WAREHOUSE_PORT": ("dev_warehouse_port", int),
    "STOCKCORE_DEV_PRIMARY_CARRIER_PORT": ("dev_primary_carrier_port", int),
    "STOCKCORE_DEV_FALLBACK_CARRIER_PORT": ("dev_fallback_carrier_port", int),
}


def to_env(settings: DevSettings) -> dict[str, str]:
    """The STOCKCORE_* variables that `from_env` reads back as `settings`."""
    return env.write(settings, _ENV)


def from_env(environ: Mapping[str, str] | None = None) -> DevSettings:
    """Build DevSettings from STOCKCORE_* variables, validated."""
    return env.read(DevSettings, _ENV, environ)
