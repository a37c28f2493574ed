"""`python -m simulators warehouse|carrier --port N`: one simulated partner, served until
SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import sys

from runtime.settings import SettingsError
from simulators.config import from_args, parser
from simulators.run import serve


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    import uvloop

    try:
        settings = from_args(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        parser().exit(2, f"invalid settings: {exc}\n")
    logging.basicConfig(level=logging.INFO)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
