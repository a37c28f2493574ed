"""The `stockctl` command (pyproject.toml's scripts): keeps gRPC's C-core log off the
terminal, then runs the command line of clients/cli.py.

gRPC reads GRPC_VERBOSITY when it is first imported, and logs each failed TLS handshake
and connection at INFO by default: lines that repeat what stockctl's one-line message
says better. A user who sets GRPC_VERBOSITY or GRPC_TRACE gets what they asked for."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping


def quiet_grpc(environ: MutableMapping[str, str]) -> None:
    """Turn gRPC's own log off unless the user asked for it."""
    if "GRPC_VERBOSITY" not in environ and "GRPC_TRACE" not in environ:
        environ["GRPC_VERBOSITY"] = "NONE"


def main() -> int:
    """Entry point of stockctl; returns the process exit status."""
    quiet_grpc(os.environ)
    # Imported only now: grpc, which clients.cli imports, reads GRPC_VERBOSITY on import.
    from clients.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
