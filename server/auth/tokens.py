"""Bearer tokens: JWTs verified against a JSON Web Key Set (JWKS) file, chosen by key id.

Rotation is by key id (`kid`): publish the new public key in the JWKS file beside the old
one, start signing with it, and remove the old one once no token it signed is still
unexpired. The server notices a changed file within `reload_interval` seconds (at once
when a token names a key id it has not seen). A JWK may carry `stockcore_scopes`, the
scopes its tokens may grant: a checkout gateway's key limited to ["customer"] cannot mint
a token that adjusts stock.

A verified token is kept (per token string, up to `cache_size` of them, until it expires),
so a caller that sends the same token on every call pays one signature check, not one per
call.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from server.auth import scopes
from server.auth.principal import Principal
from server.config import Settings, SettingsError
from server.domain.errors import Unauthenticated
from server.domain.inventory import check_id

log = logging.getLogger(__name__)

# ErrorInfo reasons of UNAUTHENTICATED (part of the API: callers may act on them).
TOKEN_MISSING = "TOKEN_MISSING"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
TOKEN_INVALID = "TOKEN_INVALID"

KEY_SCOPES_MEMBER = "stockcore_scopes"
"""JWK member listing the only scopes tokens signed with that key may grant."""
CUSTOMER_CLAIM = "customer_id"
"""Claim binding a token to one customer (with the scope `customer`, and of the others
only scopes.BESIDE_CUSTOMER)."""
_CUSTOMER_BOUND = frozenset({scopes.CUSTOMER, *scopes.BESIDE_CUSTOMER})

_SUBJECT = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")
_KNOWN_ALGORITHMS = frozenset(jwt.algorithms.get_default_algorithms()) - {"none"}


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(TOKEN_INVALID, message)


@dataclass(frozen=True)
class VerificationKey:
    """One public (or shared) key of the set, and the scopes its tokens may grant."""

    kid: str
    key: Any
    algorithm: str
    allowed_scopes: frozenset[str] | None


def parse_key_set(document: object) -> dict[str, VerificationKey]:
    """The keys of a JWKS document by key id; ValueError names what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS document is an object with a "keys" list')
    keys: dict[str, VerificationKey] = {}
    for index, member in enumerate(document["keys"]):
        if not isinstance(member, dict):
            raise ValueError(f"keys[{index}] is not an object")
        kid = member.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"keys[{index}] has no kid: rotation picks keys by kid")
        if kid in keys:
            raise ValueError(f"kid {kid!r} appears twice")
        try:
            parsed = jwt.PyJWK(member)
        except jwt.PyJWTError as exc:
            raise ValueError(f"key {kid!r}: {exc}") from exc
        if parsed.algorithm_name not in _KNOWN_ALGORITHMS:
            raise ValueError(f"key {kid!r}: algorithm {parsed.algorithm_name!r} is not accepted")
        allowed = member.get(KEY_SCOPES_MEMBER)
        if allowed is not None and not (
            isinstance(allowed, list) and all(isinstance(s, str) for s in allowed)
        ):
            raise ValueError(f"key {kid!r}: {KEY_SCOPES_MEMBER} must be a list of scopes")
        keys[kid] = VerificationKey(
            kid, parsed.key, parsed.algorithm_name, None if allowed is None else frozenset(allowed)
        )
    if not keys:
        raise ValueError("the key set has no keys: no token could ever verify")
    return keys


class KeySet:
    """The keys of a JWKS file, read again when the file changes."""

    def __init__(self, path: str, *, reload_interval: float = 5.0) -> None:
        self.path = path
        self._reload_interval = reload_interval
        self._stamp = self._file_stamp()
        self.keys = self._read()
        self._next_check = time.monotonic() + reload_interval
        self.generation = 0
        """Counts reloads, so caches of what older keys verified can be dropped."""

    def _file_stamp(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _read(self) -> dict[str, VerificationKey]:
        with open(self.path, encoding="utf-8") as handle:
            return parse_key_set(json.load(handle))

    def refresh(self, now: float, *, soon: bool = False) -> None:
        """Read the file again if it changed; looked at every reload_interval seconds, or
        within one second when `soon` (a token named a key id the set lacks)."""
        if now < self._next_check - (self._reload_interval - 1.0 if soon else 0.0):
            return
        self._next_check = now + self._reload_interval
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            keys = self._read()
        except (OSError, ValueError) as exc:
            # A file caught half-written, or broken: keep verifying with the keys we have.
            log.error("key set not reloaded", extra={"path": self.path, "error": str(exc)})
            return
        self._stamp = stamp
        self.keys = keys
        self.generation += 1
        log.info("key set reloaded", extra={"path": self.path, "kids": ",".join(sorted(keys))})


class TokenVerifier:
    """Turns a bearer token into the Principal it names, or raises Unauthenticated."""

    def __init__(
        self,
        keys: KeySet,
        *,
        audience: str,
        issuers: Sequence[str],
        max_lifetime_s: float = 86_400.0,
        leeway_s: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._audience = audience
        if not issuers:
            raise ValueError("a verifier needs at least one trusted issuer")
        self._issuers = list(issuers)
        self._max_lifetime = max_lifetime_s
        self._leeway = leeway_s
        self._cache_size = cache_size
        self._clock = clock
        self._monotonic = monotonic
        self._cache: dict[str, Principal] = {}
        self._generation = keys.generation

    @property
    def cached(self) -> int:
        """How many verified tokens are kept."""
        return len(self._cache)

    def principal(self, token: str) -> Principal:
        """The caller `token` names; Unauthenticated when it is expired or does not verify."""
        self._keys.refresh(self._monotonic())
        if self._keys.generation != self._generation:
            # A removed key must stop admitting the tokens it signed.
            self._cache.clear()
            self._generation = self._keys.generation
        known = self._cache.get(token)
        if known is not None:
            if self._clock() < known.expires_at + self._leeway:
                return known
            del self._cache[token]
            raise Unauthenticated(TOKEN_EXPIRED, "the token has expired")
        principal = self._verify(token)
        if len(self._cache) >= self._cache_size:
            # Oldest first: a dict keeps insertion order.
            del self._cache[next(iter(self._cache))]
        self._cache[token] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the bearer token is not a JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token names no key id (kid)")
        key = self._keys.keys.get(kid)
        if key is None:
            self._keys.refresh(self._monotonic(), soon=True)
            key = self._keys.keys.get(kid)
        if key is None:
            raise _invalid(f"the token's key id {kid!r} is not a key this server trusts")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuers,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(TOKEN_EXPIRED, "the token has expired") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise _invalid(f"the token was refused: {exc}") from None
        return self._principal(claims, key)

    def _principal(self, claims: dict[str, Any], key: VerificationKey) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
            raise _invalid("sub must be 1-128 printable ASCII characters")
        raw_scope = claims.get("scope", "")
        if not isinstance(raw_scope, str):
            raise _invalid("scope must be a space-separated string")
        granted = frozenset(raw_scope.split())
        customer = claims.get(CUSTOMER_CLAIM)
        if customer is not None:
            if not isinstance(customer, str) or check_id(customer, CUSTOMER_CLAIM):
                raise _invalid(
                    f"{CUSTOMER_CLAIM} must be a customer id (1-128 characters of"
                    " [A-Za-z0-9._:/-], no empty, '.' or '..' segment between slashes)"
                )
            if scopes.CUSTOMER not in granted or not granted <= _CUSTOMER_BOUND:
                raise _invalid(
                    f"a token bound to a customer carries the scope {scopes.CUSTOMER!r}, and"
                    f" of the others only {', '.join(scopes.BESIDE_CUSTOMER)}"
                )
        elif scopes.CUSTOMER in granted:
            raise _invalid(f"the scope {scopes.CUSTOMER!r} needs a {CUSTOMER_CLAIM} claim")
        if key.allowed_scopes is not None:
            # A key that may grant an alias may grant what it stands for, one by one.
            extra = granted - scopes.conferred(key.allowed_scopes)
            if extra:
                raise _invalid(f"key {key.kid!r} may not grant {', '.join(sorted(extra))}")
        expires, issued = claims["exp"], claims["iat"]
        if not isinstance(expires, int | float) or not isinstance(issued, int | float):
            raise _invalid("exp and iat must be numbers")
        if expires - issued > self._max_lifetime:
            raise _invalid(
                f"the token lives {expires - issued:g} s from iat to exp,"
                f" more than the {self._max_lifetime:g} s this server accepts"
            )
        return Principal(subject, scopes.conferred(granted), customer, float(expires))


def verifier_from_settings(settings: Settings) -> TokenVerifier:
    """The verifier the settings describe; SettingsError when its key set cannot be read."""
    try:
        keys = KeySet(settings.auth_jwks_file, reload_interval=settings.auth_reload_interval_s)
    except OSError as exc:
        raise SettingsError(
            f"STOCKCORE_AUTH_JWKS: cannot read {settings.auth_jwks_file}: {exc.strerror}"
        ) from exc
    except ValueError as exc:
        raise SettingsError(f"STOCKCORE_AUTH_JWKS: {settings.auth_jwks_file}: {exc}") from exc
    return TokenVerifier(
        keys,
        audience=settings.auth_audience,
        issuers=settings.auth_issuers,
        max_lifetime_s=settings.auth_max_lifetime_s,
        leeway_s=settings.auth_leeway_s,
        cache_size=settings.auth_cache_size,
    )
