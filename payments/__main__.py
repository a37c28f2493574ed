"""`python -m payments`: the payment provider's webhook receiver, until SIGINT or SIGTERM."""

from __future__ import annotations

from clients.credentials import Credentials
from payments import config
from payments.endpoint import serve
from payments.signature import load_secrets
from runtime import logs
from runtime.settings import command_line, exit_if_invalid, exit_invalid


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("python -m payments", __doc__, epilog="Settings: STOCKCORE_*.")
    parser.parse_args(argv)
    with exit_if_invalid(parser):
        settings = config.from_env()
        # What the receiver presents to the order server, read as every client reads it.
        credentials = Credentials.from_env()
    if settings.pg_dsn is None:
        parser.exit(2, "STOCKCORE_PG_DSN is not set: the receiver records events in PostgreSQL\n")
    if not settings.webhook_secret_file:
        parser.exit(2, "STOCKCORE_WEBHOOK_SECRET_FILE is not set: deliveries cannot be verified\n")
    try:
        load_secrets(settings.webhook_secret_file)
    except (OSError, ValueError) as exc:
        exit_invalid(parser, exc)
    logs.configure(settings.log_level, settings.log_json)
    import uvloop

    uvloop.run(serve(settings, credentials))


if __name__ == "__main__":
    main()
