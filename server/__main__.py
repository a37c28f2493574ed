"""`python -m server`: serve gRPC (the default, `serve`) or only apply the migrations
(`migrate`), with the settings of STOCKCORE_* variables. `make run` starts the server with
a local stack around it: `python -m devstack`."""

from __future__ import annotations

from runtime import logs
from runtime.settings import command_line, exit_if_invalid, exit_invalid
from server import app, config


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("stockcore-server", __doc__, ["serve", "migrate"])
    args = parser.parse_args(argv)
    with exit_if_invalid(parser):
        settings = config.from_env()
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
        exit_invalid(parser, problem)
    app.serve(settings)


if __name__ == "__main__":
    main()
