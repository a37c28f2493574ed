"""The payment provider's webhook signature, as the receiver checks it.

The provider signs each delivery with a secret shared with stockcore and sends

    Stockcore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

A delivery is genuine when one of its `v1` signatures is the HMAC of its timestamp and its
body, byte for byte, under one of the receiver's secrets (several during a rotation), and
fresh when its timestamp is within the tolerance of the receiver's clock, either way: an
old delivery replayed by someone who captured it, or one dated ahead, is refused. Within
the tolerance a replay is a repeated delivery of an event already recorded, which the
receiver de-duplicates by its event id. Signatures are compared in constant time; nothing
of a secret or of a signature is put into an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SIGNATURE_HEADER = "Stockcore-Signature"
SCHEME = "v1"
# A header is short: a timestamp and a few signatures (more than one during a rotation
# of the provider's secret). Anything longer, or with more signatures, is refused
# before any HMAC is computed.
MAX_HEADER_CHARS = 1024
MAX_SIGNATURES = 4
MIN_SECRET_BYTES = 16
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class SignatureError(Exception):
    """A delivery that is not the provider's, or not fresh; `reason` says which, as the
    receiver's answer and log name it."""

    reason = "signature"


class MalformedHeader(SignatureError):
    """The signature header is missing or not of the form `t=...,v1=...`."""

    reason = "malformed signature header"


class NoMatchingSignature(SignatureError):
    """No signature of the header is the body's under any of the secrets."""

    reason = "no matching signature"


class StaleTimestamp(SignatureError):
    """The signed timestamp is older than the tolerance."""

    reason = "timestamp too old"


class FutureTimestamp(SignatureError):
    """The signed timestamp is further ahead than the tolerance."""

    reason = "timestamp in the future"


@dataclass(frozen=True)
class SignatureHeader:
    """A parsed header: the signed timestamp and the v1 signatures."""

    timestamp: int
    signatures: tuple[str, ...]


def parse_header(value: str | None) -> SignatureHeader:
    """Parse a header; MalformedHeader unless it has one timestamp and 1-4 v1 signatures
    (other schemes are ignored, as providers add new ones beside the old)."""
    if value is None or not value or len(value) > MAX_HEADER_CHARS:
        raise MalformedHeader
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, text = item.strip().partition("=")
        if not sep:
            raise MalformedHeader
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(text):
                raise MalformedHeader
            timestamp = int(text)
        elif key == SCHEME:
            if not _HEX_SHA256.fullmatch(text):
                raise MalformedHeader
            signatures.append(text)
    if timestamp is None or not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise MalformedHeader
    return SignatureHeader(timestamp, tuple(signatures))


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The v1 signature of `body` sent at `timestamp`."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """A whole header for `body` sent at `timestamp`, as the provider sends it."""
    return f"t={timestamp},{SCHEME}={signature(secret, timestamp, body)}"


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance_s: float,
) -> int:
    """The signed timestamp of a genuine, fresh delivery; a SignatureError otherwise. The
    signature is checked first, so a stale or future timestamp is reported only for a
    delivery the provider did sign."""
    parsed = parse_header(header)
    expected = [signature(secret, parsed.timestamp, body) for secret in secrets]
    matched = False
    for found in parsed.signatures:
        for wanted in expected:
            # Every pair is compared, so the time taken says nothing of which matched.
            matched |= hmac.compare_digest(found, wanted)
    if not matched:
        raise NoMatchingSignature
    if parsed.timestamp < now - tolerance_s:
        raise StaleTimestamp
    if parsed.timestamp > now + tolerance_s:
        raise FutureTimestamp
    return parsed.timestamp


def load_secrets(path: str | Path) -> tuple[bytes, ...]:
    """The secrets in a file, one a line (blank lines skipped): the current one, and the
    next during a rotation. ValueError when it holds none, or one shorter than 16 bytes."""
    found = tuple(
        line.strip().encode()
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    if not found:
        raise ValueError(f"{path} holds no webhook secret")
    if any(len(secret) < MIN_SECRET_BYTES for secret in found):
        raise ValueError(f"a webhook secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return found
