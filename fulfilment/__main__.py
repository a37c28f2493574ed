"""`python -m fulfilment`: one fulfilment worker, until SIGINT or SIGTERM. Start as many as
the load needs; they share the work through the database."""

from __future__ import annotations

from clients.credentials import Credentials
from fulfilment import config
from fulfilment.worker import run_worker
from runtime import logs
from runtime.settings import command_line, exit_if_invalid


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("python -m fulfilment", __doc__, epilog="Settings: STOCKCORE_*.")
    parser.parse_args(argv)
    with exit_if_invalid(parser):
        settings = config.from_env()
        # What the worker presents to the order server, read as every client reads it.
        credentials = Credentials.from_env()
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set: the worker keeps its state in PostgreSQL\n")
    if settings.redis_url is None:
        parser.exit(2, "STOCKCORE_REDIS_URL is not set: the worker reads the event stream\n")
    logs.configure(settings.log_level, settings.log_json)
    import uvloop

    uvloop.run(run_worker(settings, credentials))


if __name__ == "__main__":
    main()
