"""`python -m fulfilment`: one fulfilment worker, until SIGINT or SIGTERM. Start as many as
the load needs; they share the work through the database."""

from __future__ import annotations

import argparse

from clients.credentials import Credentials
from fulfilment import config
from fulfilment.worker import run_worker
from runtime import logs


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fulfilment", description=__doc__, epilog="Settings: STOCKCORE_*."
    )
    parser.parse_args(argv)
    try:
        settings = config.from_env()
        # What the worker presents to the order server, read as every client reads it.
        credentials = Credentials.from_env()
    except config.SettingsError as exc:
        parser.exit(2, f"invalid settings: {exc}\n")
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set: the worker keeps its state in PostgreSQL\n")
    if settings.redis_url is None:
        parser.exit(2, "STOCKCORE_REDIS_URL is not set: the worker reads the event stream\n")
    logs.configure(settings.log_level, settings.log_json)
    import uvloop

    uvloop.run(run_worker(settings, credentials))


if __name__ == "__main__":
    main()
