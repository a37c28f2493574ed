"""`python -m gateway`: Envoy alone, in front of the gRPC server at STOCKCORE_GRPC_HOST:PORT,
until SIGINT or SIGTERM; `python -m gateway config` prints Envoy's configuration instead,
for running Envoy elsewhere."""

from __future__ import annotations

import argparse
import json
import sys

from gateway import config
from gateway.bootstrap import bootstrap
from gateway.envoy import serve
from runtime import logs


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("command", choices=["run", "config"], nargs="?", default="run")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = config.from_env()
        if args.command == "config":
            print(json.dumps(bootstrap(settings), indent=1))
            return
        logs.configure(settings.log_level, settings.log_json)
        serve(settings)
    except config.SettingsError as exc:
        parser.exit(2, f"invalid settings: {exc}\n")


if __name__ == "__main__":
    main()
