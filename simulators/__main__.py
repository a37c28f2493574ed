"""`python -m simulators warehouse|carrier|payments --port N`: one simulated partner, served
until SIGINT or SIGTERM."""

from __future__ import annotations

import logging

from runtime.settings import exit_if_invalid
from simulators.config import from_args, parser
from simulators.run import serve


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    import uvloop

    with exit_if_invalid(parser()):
        settings = from_args(argv)
    logging.basicConfig(level=logging.INFO)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
