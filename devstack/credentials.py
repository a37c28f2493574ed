"""Development credentials: a CA with a server and a client certificate, and a token
signing key, made with `cryptography` under the git-ignored data folder.

`make run` (python -m devstack), the tests and the load tools use them; stockctl, the
typed clients and the load tools find the CA (and stockctl the signing key) at the same
paths by default. They are for development only: production settings name certificate,
key and JWKS files of the operator's own PKI and token issuer.

    <data>/tls/ca.pem, ca-key.pem          the development CA
    <data>/tls/server.pem, server-key.pem  localhost, 127.0.0.1, ::1 and this host's name
    <data>/tls/client.pem, client-key.pem  a client certificate for mutual TLS (CN stockcore-dev-client)
    <data>/auth/signing-key.json           Ed25519 private JWK (kid dev-...): signs tokens
    <data>/auth/jwks.json                  its public half: the server verifies with it
    <data>/payments/webhook-secret         the secret the simulated payment provider signs its
                                           webhooks with and stockcore's receiver checks them by
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clients.tokens import new_signing_key

CertificateKey = ec.EllipticCurvePrivateKey

_CA_DAYS = 3650
_LEAF_DAYS = 825
# Certificates this close to expiry are made anew.
_RENEW_BEFORE = datetime.timedelta(days=30)
CLIENT_NAME = "stockcore-dev-client"
DEV_AUDIENCE = "stockcore"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stockcore development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_ca(common_name: str, *, days: int = _CA_DAYS) -> tuple[CertificateKey, x509.Certificate]:
    """A self-signed CA that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(
    ca_key: CertificateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    client: bool = False,
    days: int = _LEAF_DAYS,
    not_before: datetime.datetime | None = None,
) -> tuple[CertificateKey, x509.Certificate]:
    """A leaf certificate signed by the CA: for a server answering to `hosts` (DNS names
    or IP addresses), or, with `client`, for a client under mutual TLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def certificate_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: CertificateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    # Private keys are never readable by others, not even for the moment of writing.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    partial.rename(path)


def _server_hosts() -> list[str]:
    hosts = ["localhost", "127.0.0.1", "::1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return hosts


@dataclass(frozen=True)
class DevCredentials:
    """The development credential files under one data folder."""

    data_dir: Path

    @property
    def tls_dir(self) -> Path:
        """Where the certificates are."""
        return self.data_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate clients trust."""
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's key (to issue more certificates)."""
        return self.tls_dir / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        """The server's certificate."""
        return self.tls_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        """The server's key."""
        return self.tls_dir / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        """A client certificate for mutual TLS."""
        return self.tls_dir / "client.pem"

    @property
    def client_key(self) -> Path:
        """Its key."""
        return self.tls_dir / "client-key.pem"

    @property
    def signing_key(self) -> Path:
        """The private JWK that signs development tokens."""
        return self.data_dir / "auth" / "signing-key.json"

    @property
    def jwks(self) -> Path:
        """The public JWKS the server verifies tokens with."""
        return self.data_dir / "auth" / "jwks.json"

    @property
    def webhook_secret(self) -> Path:
        """The payment provider's webhook signing secret (one line), shared with the
        receiver; readable by this user only."""
        return self.data_dir / "payments" / "webhook-secret"

    def ensure(self) -> DevCredentials:
        """Make whatever is missing or near expiry; keep what is good."""
        if not self._certificates_good():
            self._make_certificates()
        if not (self.signing_key.exists() and self.jwks.exists()):
            private, public = new_signing_key(f"dev-{secrets.token_hex(4)}")
            _write(self.signing_key, json.dumps(private).encode(), secret=True)
            _write(self.jwks, json.dumps({"keys": [public]}, indent=2).encode())
        if not self.webhook_secret.exists():
            _write(self.webhook_secret, f"whsec_{secrets.token_hex(32)}\n".encode(), secret=True)
        return self

    def _certificates_good(self) -> bool:
        files = (self.ca_cert, self.ca_key, self.server_cert, self.server_key)
        if not all(path.exists() for path in (*files, self.client_cert, self.client_key)):
            return False
        try:
            ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            server = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
            client = x509.load_pem_x509_certificate(self.client_cert.read_bytes())
        except ValueError:
            return False
        horizon = _now() + _RENEW_BEFORE
        return all(
            cert.not_valid_after_utc > horizon and cert.issuer == ca.subject
            for cert in (ca, server, client)
        )

    def _make_certificates(self) -> None:
        ca_key, ca = new_ca("stockcore development CA")
        server_key, server = issue_certificate(ca_key, ca, "localhost", hosts=_server_hosts())
        client_key, client = issue_certificate(ca_key, ca, CLIENT_NAME, client=True)
        _write(self.ca_key, key_pem(ca_key), secret=True)
        _write(self.server_key, key_pem(server_key), secret=True)
        _write(self.client_key, key_pem(client_key), secret=True)
        _write(self.server_cert, certificate_pem(server))
        _write(self.client_cert, certificate_pem(client))
        # The CA last: a folder with a CA file holds a complete set.
        _write(self.ca_cert, certificate_pem(ca))

    def server_env(self, *, mutual: bool = False) -> dict[str, str]:
        """STOCKCORE_* variables that make a server use these credentials."""
        env = {
            "STOCKCORE_TLS_CERT": str(self.server_cert),
            "STOCKCORE_TLS_KEY": str(self.server_key),
            "STOCKCORE_AUTH_JWKS": str(self.jwks),
        }
        if mutual:
            env["STOCKCORE_TLS_CLIENT_CA"] = str(self.ca_cert)
        return env
