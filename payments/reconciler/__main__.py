"""`python -m payments.reconciler`: the reconciler, until SIGINT or SIGTERM."""

from __future__ import annotations

from clients.credentials import Credentials
from payments.reconciler import config
from payments.reconciler.service import serve
from runtime import logs
from runtime.settings import command_line, exit_if_invalid


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("python -m payments.reconciler", __doc__, epilog="Settings: STOCKCORE_*.")
    parser.parse_args(argv)
    with exit_if_invalid(parser):
        settings = config.from_env()
        # What the reconciler presents to the order server when it recovers a payment.
        credentials = Credentials.from_env()
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set: the reconciler keeps its work in PostgreSQL\n")
    logs.configure(settings.log_level, settings.log_json)
    import uvloop

    uvloop.run(serve(settings, credentials))


if __name__ == "__main__":
    main()
