"""`python -m server`: serve gRPC (the default, `serve`) or only apply the migrations
(`migrate`), with the settings of STOCKCORE_* variables. `make run` starts the server with
a local stack around it: `python -m devstack`."""

from __future__ import annotations

import argparse
import sys

from runtime import logs
from server import app, config


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="stockcore-server", description=__doc__)
    parser.add_argument("command", choices=["serve", "migrate"], nargs="?", default="serve")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = config.from_env()
    except config.SettingsError as exc:
        parser.exit(2, f"invalid settings: {exc}\n")
    logs.configure(settings.log_level, settings.log_json)
    if settings.pg_dsn is None:
        parser.exit(
            2, "STOCKCORE_PG_DSN is not set (or use `python -m devstack` to start local servers)\n"
        )
    if args.command == "migrate":
        import uvloop

        uvloop.run(app.run_migrations(settings))
        return
    problem = settings.security_problem()
    if problem is not None:
        parser.exit(2, f"invalid settings: {problem}\n")
    app.serve(settings)


if __name__ == "__main__":
    main()
