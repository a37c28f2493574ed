"""`python -m gateway`: Envoy alone, in front of the gRPC server at STOCKCORE_GRPC_HOST:PORT,
until SIGINT or SIGTERM; `python -m gateway config` prints Envoy's configuration instead,
for running Envoy elsewhere."""

from __future__ import annotations

import json

from gateway import config
from gateway.bootstrap import bootstrap
from gateway.envoy import serve
from runtime import logs
from runtime.settings import command_line, exit_if_invalid


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("python -m gateway", __doc__, ["run", "config"])
    args = parser.parse_args(argv)
    # Building Envoy's configuration checks the files the settings name (and the descriptor
    # set): what it refuses is refused as the settings are.
    with exit_if_invalid(parser):
        settings = config.from_env()
        if args.command == "config":
            print(json.dumps(bootstrap(settings), indent=1))
            return
        logs.configure(settings.log_level, settings.log_json)
        serve(settings)


if __name__ == "__main__":
    main()
