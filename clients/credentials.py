"""What a caller presents to stockcore: TLS (the CA it trusts, and its own certificate
under mutual TLS) and the bearer token sent on every call.

By default (`Credentials.from_env()`) it is read from the environment:

    STOCKCORE_TOKEN        the bearer token (or STOCKCORE_TOKEN_FILE: a file holding it,
                           read again when it changes, so a long-running caller follows
                           the short-lived tokens written there)
    STOCKCORE_CA_FILE      PEM of the CA that issued the server's certificate; unset, the
                           development CA at .data/tls/ca.pem if it exists (what `make run`
                           made), else the system's roots
    STOCKCORE_CLIENT_CERT  PEM certificate chain and key of this client, for a server that
    STOCKCORE_CLIENT_KEY   requires mutual TLS
    STOCKCORE_PLAINTEXT    true: no TLS (only for a server started that way)
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import grpc.aio

AUTHORIZATION_METADATA_KEY = "authorization"
#: Where `make run` puts the development CA, relative to the project folder.
DEV_CA_FILE = Path(".data") / "tls" / "ca.pem"

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Credentials:
    """TLS material and a bearer token; pickles, so load processes can be handed one."""

    token: str | None = None
    root_certificates: bytes | None = None
    """PEM of the CA to trust; None trusts the system's roots."""
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    plaintext: bool = False
    token_file: str | None = None
    """Where `token` was read from, to read again when the file changes."""

    def __post_init__(self) -> None:
        if self.token is not None and not all(" " < ch <= "~" for ch in self.token):
            raise ValueError("a token is printable ASCII without spaces")
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        if self.plaintext and (self.root_certificates or self.certificate_chain):
            raise ValueError("plaintext takes no TLS material")

    @classmethod
    def from_files(
        cls,
        *,
        token: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        plaintext: bool = False,
    ) -> Credentials:
        """Credentials from PEM files (any may be None)."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(token, read(ca_file), read(cert_file), read(key_file), plaintext)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Credentials from STOCKCORE_* variables, with the development CA as the default
        trust when it exists (see the module docstring)."""
        env = os.environ if environ is None else environ
        token = env.get("STOCKCORE_TOKEN") or None
        token_file = None
        if token is None and env.get("STOCKCORE_TOKEN_FILE"):
            token_file = env["STOCKCORE_TOKEN_FILE"]
            token = Path(token_file).read_text().strip() or None
        if (env.get("STOCKCORE_PLAINTEXT") or "").strip().lower() in _TRUE:
            return cls(token, plaintext=True, token_file=token_file)
        ca_file: str | Path | None = env.get("STOCKCORE_CA_FILE") or None
        if ca_file is None and DEV_CA_FILE.is_file():
            ca_file = DEV_CA_FILE
        found = cls.from_files(
            token=token,
            ca_file=ca_file,
            cert_file=env.get("STOCKCORE_CLIENT_CERT") or None,
            key_file=env.get("STOCKCORE_CLIENT_KEY") or None,
        )
        return replace(found, token_file=token_file)

    def with_token(self, token: str | None) -> Credentials:
        """The same TLS material with another token."""
        return replace(self, token=token)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token (empty without one)."""
        if self.token is None:
            return ()
        return ((AUTHORIZATION_METADATA_KEY, f"Bearer {self.token}"),)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """The channel's TLS credentials; None for plaintext."""
        if self.plaintext:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def aio_channel(
        self, target: str, options: Sequence[tuple[str, int | str]] = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to `target`, over TLS unless plaintext."""
        tls = self.channel_credentials()
        if tls is None:
            return grpc.aio.insecure_channel(target, options=list(options))
        return grpc.aio.secure_channel(target, tls, options=list(options))

    def channel(self, target: str, options: Sequence[tuple[str, int | str]] = ()) -> grpc.Channel:
        """A blocking channel to `target` (Locust users), over TLS unless plaintext."""
        tls = self.channel_credentials()
        if tls is None:
            return grpc.insecure_channel(target, options=list(options))
        return grpc.secure_channel(target, tls, options=list(options))


class TokenFile:
    """A bearer token's file, looked at again at most every CHECK_S seconds: a token
    written there since is taken up by the next call."""

    CHECK_S = 5.0

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._stamp = self._read_stamp()
        self._checked = time.monotonic()

    def _read_stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            found = os.stat(self._path)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size

    def changed(self) -> str | None:
        """The file's token when it changed since last read, else None."""
        if self._path is None or time.monotonic() - self._checked < self.CHECK_S:
            return None
        self._checked = time.monotonic()
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            token = Path(self._path).read_text().strip()
        except OSError:
            return None
        return token or None
