"""The config file `make run` writes for stockctl at each start (clients/stockctl_config.py
reads it): the server's address, and the development CA and signing key by absolute
path, so that stockctl calls this stack from any folder.

It writes over a file it wrote before (its first line says so) and leaves any other alone:
a user who edits the file and removes that line keeps their own settings."""

from __future__ import annotations

import logging
from pathlib import Path

from clients.stockctl_config import MAKE_RUN_MARK, render, write_config_file
from devstack.credentials import DevCredentials
from server.config import Settings

log = logging.getLogger("stockcore")


def local_target(server: Settings) -> str:
    """The address a client on this machine reaches `server` at."""
    host = "127.0.0.1" if server.grpc_host in ("", "0.0.0.0", "::") else server.grpc_host
    return f"[{host}]:{server.grpc_port}" if ":" in host else f"{host}:{server.grpc_port}"


def stockctl_settings(server: Settings, data_dir: Path) -> dict[str, str | bool]:
    """What stockctl needs to call `server`: its address, and, when the server uses the
    development credentials under `data_dir`, the CA to trust and the key that signs
    the tokens it accepts."""
    credentials = DevCredentials(data_dir.resolve())
    values: dict[str, str | bool] = {"target": local_target(server)}
    if server.plaintext:
        values["plaintext"] = True
    elif server.tls_cert_file == str(credentials.server_cert):
        values["ca_file"] = str(credentials.ca_cert)
    if not server.auth_disabled and server.auth_jwks_file == str(credentials.jwks):
        values["signing_key"] = str(credentials.signing_key)
    return values


def write_stockctl_config(path: Path, server: Settings, data_dir: Path) -> bool:
    """Write stockctl's config file at `path` for `server`, unless a file there was not
    written by `make run`; whether it was written."""
    try:
        ours = not path.exists() or path.read_bytes().startswith(MAKE_RUN_MARK.encode())
    except OSError:
        ours = False
    if not ours:
        log.warning(
            "stockctl's config file is not one make run wrote: left as it is",
            extra={"path": str(path)},
        )
        return False
    text = render(
        stockctl_settings(server, data_dir),
        [
            f"{MAKE_RUN_MARK.removeprefix('# ')} for the stack in {data_dir.resolve()},",
            "anew at each start. Delete the line above to keep your own settings here.",
            'The keys and their precedence: README.md, section "stockctl\'s settings".',
        ],
    )
    try:
        write_config_file(path, text)
    except OSError as exc:
        log.warning(
            "could not write stockctl's config file",
            extra={"path": str(path), "error": str(exc)},
        )
        return False
    return True
