"""`python -m refunds`: one refund sender, until SIGINT or SIGTERM. More than one may run:
they share the work through the database (leases)."""

from __future__ import annotations

from refunds import config
from refunds.worker import run_sender
from runtime import logs
from runtime.settings import command_line, exit_if_invalid


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("python -m refunds", __doc__, epilog="Settings: STOCKCORE_*.")
    parser.parse_args(argv)
    with exit_if_invalid(parser):
        settings = config.from_env()
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set: the refunds are rows in PostgreSQL\n")
    logs.configure(settings.log_level, settings.log_json)
    import uvloop

    uvloop.run(run_sender(settings))


if __name__ == "__main__":
    main()
