"""Minting bearer tokens for stockcore: what `stockctl token issue` does, and what a
checkout gateway does for each shopper (with its own key, limited to the `customer`
scope in the server's key set).

A token is a JWT signed with a private JWK whose `kid` the server's JWKS names:

    {"sub": "checkout", "aud": "stockcore", "iat": ..., "exp": ...,
     "scope": "inventory:hold orders:create"}             a service
    {"sub": "shop-web", "aud": "stockcore", "iat": ..., "exp": ...,
     "scope": "customer", "customer_id": "alice"}         a shopper, via the gateway
    {"sub": "checkout-page", "aud": "stockcore", "iat": ..., "exp": ...,
     "scope": "customer inventory:read inventory:hold orders:create",
     "customer_id": "shopper-5f0c..."}                    a checkout page's shopper
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

DEFAULT_AUDIENCE = "stockcore"
#: The issuer a stockcore server trusts by default (STOCKCORE_AUTH_ISSUERS).
DEFAULT_ISSUER = "stockcore"
CUSTOMER_SCOPE = "customer"
SERVICE_SCOPES = (
    "inventory:read",
    "inventory:hold",
    "stock:adjust",
    "orders:create",
    "orders:pay",
    "orders:cancel",
    "orders:refund",
    "orders:read",
    "orders:watch",
    "orders:fulfil",
    "finance:read",
    "finance:resolve",
)
"""Every scope of an internal service (server/auth/scopes.py is the server's list)."""
BESIDE_CUSTOMER = ("inventory:read", "inventory:hold", "orders:create")
"""The only service scopes a customer-bound token may carry beside `customer` (a checkout
page's: stock levels, and a cart's reservation and orders for its own customer)."""
SCOPE_ALIASES = ("orders:write",)
"""Scopes that stand for others (orders:write: orders:create, orders:pay and
orders:cancel), still accepted in tokens minted before they were told apart."""


def load_signing_key(path: str | Path) -> dict[str, Any]:
    """A private JWK from a JSON file; ValueError when it is not one with a kid."""
    key = json.loads(Path(path).read_text())
    if not isinstance(key, dict) or not key.get("kid") or not (key.get("d") or key.get("k")):
        raise ValueError(f"{path} is not a private JWK with a kid")
    return key


def issue_token(
    signing_key: dict[str, Any],
    subject: str,
    scopes: Iterable[str],
    *,
    ttl_s: float = 3600.0,
    customer_id: str | None = None,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = DEFAULT_ISSUER,
    now: float | None = None,
) -> str:
    """A signed JWT naming `subject` with `scopes`; bound to `customer_id` when given
    (such a token carries the scope `customer`, and of the others only BESIDE_CUSTOMER)."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    issued = int(time.time() if now is None else now)
    granted = sorted(set(scopes))
    claims: dict[str, Any] = {
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "exp": issued + round(ttl_s),
        "scope": " ".join(granted),
        "iss": issuer,
    }
    if customer_id is not None:
        claims["customer_id"] = customer_id
    key = jwt.PyJWK(signing_key)
    return jwt.encode(
        claims, key.key, algorithm=key.algorithm_name, headers={"kid": signing_key["kid"]}
    )


def new_signing_key(kid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new Ed25519 signing key as (private JWK, public JWK) naming `kid`: keep the first
    secret, add the second to the server's JWKS file."""
    key = ed25519.Ed25519PrivateKey.generate()
    okp = jwt.algorithms.OKPAlgorithm
    private: dict[str, Any] = okp.to_jwk(key, as_dict=True)
    public: dict[str, Any] = okp.to_jwk(key.public_key(), as_dict=True)
    for jwk in (private, public):
        jwk.update({"kid": kid, "alg": "EdDSA", "use": "sig"})
    return private, public


def read_claims(token: str) -> dict[str, Any] | None:
    """A token's claims, read without checking its signature (to say what it was, never
    to trust it); None when it is not a JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None
