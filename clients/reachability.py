"""Why a server could not be reached: looked into after a call failed without an answer
from the server, by connecting again with the same address and TLS settings, outside
gRPC, and reading the socket's and the TLS library's typed errors (never gRPC's log)."""

from __future__ import annotations

import enum
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

# The port a gRPC target without one is reached on.
_GRPC_DEFAULT_PORT = 443
# OpenSSL's verify results for a certificate that does not name the host or address.
_NAME_MISMATCH = {62, 64}


class Problem(enum.Enum):
    """What stands between the caller and the server."""

    UNRESOLVED = "the host name does not resolve"
    REFUSED = "nothing listens there"
    UNREACHABLE = "no connection"
    UNTRUSTED = "the server's certificate is not signed by a trusted CA"
    WRONG_NAME = "the server's certificate does not name the host"
    NOT_TLS = "the server does not speak TLS"
    HANDSHAKE_REFUSED = "the server refused the TLS handshake"
    SPEAKS_TLS = "the server speaks TLS, and the call was plaintext"


@dataclass(frozen=True)
class Finding:
    """A problem found, with the details of the library that found it."""

    problem: Problem
    detail: str


@dataclass(frozen=True)
class Tls:
    """The TLS settings of the failed call."""

    ca_file: Path | None
    client_cert: Path | None = None
    client_key: Path | None = None


def host_and_port(target: str) -> tuple[str, int] | None:
    """The host and port of a gRPC target (`host:port`, `[v6]:port`, `dns:///host:port`,
    `ipv4:`/`ipv6:` with one address); None for a form this does not look into (unix:)."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target.removeprefix(scheme)
            break
    else:
        if "://" in target or target.startswith("unix:"):
            return None
    if "," in target or not target:
        return None
    if target.startswith("["):
        host, bracket, rest = target[1:].partition("]")
        if not bracket:
            return None
        port = rest.removeprefix(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    elif ":" in target:
        host, port = target, ""  # a bare IPv6 address
    else:
        host, port = target, ""
    if not port:
        return host, _GRPC_DEFAULT_PORT
    return (host, int(port)) if port.isdigit() and 0 < int(port) < 65536 else None


def check(target: str, tls: Tls | None, timeout: float) -> Finding | None:
    """Connect to `target` as the call did (`tls` None: plaintext) and say what fails;
    None when the connection (and handshake) succeeds or the target's form is not one
    this looks into, so that the failure lies elsewhere."""
    where = host_and_port(target)
    if where is None:
        return None
    host, port = where
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        return Finding(Problem.UNRESOLVED, str(exc.strerror))
    except ConnectionRefusedError:
        return Finding(Problem.REFUSED, "connection refused")
    except OSError as exc:
        return Finding(Problem.UNREACHABLE, str(exc.strerror or "timed out"))
    with raw:
        if tls is None:
            return _tls_spoken(raw, host)
        return _handshake(raw, host, tls)


def _context(tls: Tls | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["h2"])
    if tls is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if tls.ca_file is None:
        context.load_default_certs()
    else:
        context.load_verify_locations(cafile=str(tls.ca_file))
    if tls.client_cert is not None and tls.client_key is not None:
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return context


def _handshake(raw: socket.socket, host: str, tls: Tls) -> Finding | None:
    try:
        context = _context(tls)
    except (OSError, ssl.SSLError):
        return None  # The files were read for the call; what fails here is not the server.
    try:
        with context.wrap_socket(raw, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        problem = Problem.WRONG_NAME if exc.verify_code in _NAME_MISMATCH else Problem.UNTRUSTED
        return Finding(problem, str(exc.verify_message))
    except ssl.SSLError as exc:
        if exc.reason == "WRONG_VERSION_NUMBER":
            return Finding(Problem.NOT_TLS, "not a TLS answer")
        return Finding(Problem.HANDSHAKE_REFUSED, str(exc.reason or exc))
    except OSError as exc:
        return Finding(Problem.HANDSHAKE_REFUSED, str(exc.strerror or "connection closed"))


def _tls_spoken(raw: socket.socket, host: str) -> Finding | None:
    try:
        with _context(None).wrap_socket(raw, server_hostname=host):
            return Finding(Problem.SPEAKS_TLS, "it answered a TLS handshake")
    except (OSError, ssl.SSLError):
        return None
