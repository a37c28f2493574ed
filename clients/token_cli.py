"""`stockctl token issue|keygen`: mint bearer tokens, and make signing keys.

    stockctl token issue --sub checkout --scopes inventory:hold,orders:create --ttl 8h
    stockctl token issue --sub shop-web --customer alice --ttl 15m
    stockctl token issue --sub checkout-page --customer alice \
        --scopes inventory:read,orders:create --ttl 15m
    stockctl token keygen --kid gateway-2026-11 --out gateway-key.json \
        --jwks /etc/stockcore/jwks.json --only-scopes customer

Tokens are signed with a private JWK: --signing-key, else $STOCKCORE_SIGNING_KEY, else
signing_key in stockctl's config file, where `make run` names its development key
(clients/stockctl_config.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from clients.commands import Leaf
from clients.stockctl_config import StockctlConfig, signing_key
from clients.tokens import (
    BESIDE_CUSTOMER,
    CUSTOMER_SCOPE,
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    SCOPE_ALIASES,
    SERVICE_SCOPES,
    issue_token,
    new_signing_key,
)

SIGNING_KEY_ENV = "STOCKCORE_SIGNING_KEY"
#: The subject the README's commands name when $USER is unset.
SUBJECT_EXAMPLE = '"${USER:-dev}"'
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class IssueToken:
    """`token issue`: print a signed token."""

    subject: str
    scopes: tuple[str, ...]
    customer_id: str | None
    ttl_s: float
    key_file: str | None
    audience: str
    issuer: str


@dataclass(frozen=True)
class KeyGen:
    """`token keygen`: write a new private signing key, and its public half into a JWKS."""

    kid: str
    out: str
    jwks: str | None
    only_scopes: tuple[str, ...] | None


TOKEN_COMMANDS = (IssueToken, KeyGen)
TokenCommand = IssueToken | KeyGen


def _duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 900, 15m, 8h or 30d")
    return float(match.group(1)) * _UNIT[match.group(2)]


def _scopes(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if names == ("all",):
        return SERVICE_SCOPES
    known_scopes = (*SERVICE_SCOPES, *SCOPE_ALIASES, CUSTOMER_SCOPE)
    unknown = [s for s in names if s not in known_scopes]
    if unknown:
        known = ", ".join(known_scopes)
        raise argparse.ArgumentTypeError(f"unknown scope {unknown[0]!r}; known: all, {known}")
    return names


def add_token_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf
) -> None:
    """Add `token` and its subcommands to stockctl's parser."""
    token = commands.add_parser("token", help="mint bearer tokens and make signing keys")
    group = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")

    issue = leaf(group, "issue", "print a signed bearer token")
    issue.add_argument(
        "--sub",
        required=True,
        help=f"the caller's name, recorded on its changes (not empty: e.g. --sub {SUBJECT_EXAMPLE})",
    )
    issue.add_argument(
        "--scopes",
        type=_scopes,
        default=(),
        help="comma-separated scopes, or `all` for every service scope",
    )
    issue.add_argument(
        "--customer",
        metavar="CUSTOMER_ID",
        help="bind the token to one customer (scope customer): that customer's orders only;"
        f" --scopes may add {', '.join(BESIDE_CUSTOMER)}",
    )
    issue.add_argument("--ttl", type=_duration, default=3600.0, help="lifetime (default 1h)")
    issue.add_argument(
        "--signing-key",
        help=f"private JWK file (default ${SIGNING_KEY_ENV}, else signing_key in the config file)",
    )
    issue.add_argument("--audience", default=DEFAULT_AUDIENCE)
    issue.add_argument(
        "--issuer",
        default=DEFAULT_ISSUER,
        help=f"iss claim: an issuer the server trusts (default {DEFAULT_ISSUER})",
    )
    issue.set_defaults(make=_make_issue)

    keygen = leaf(group, "keygen", "make an Ed25519 signing key")
    keygen.add_argument("--kid", required=True, help="its key id, e.g. checkout-2026-11")
    keygen.add_argument("--out", required=True, help="file for the private JWK (mode 0600)")
    keygen.add_argument("--jwks", help="JWKS file to add the public key to (created if missing)")
    keygen.add_argument(
        "--only-scopes",
        type=_scopes,
        help="the only scopes this key's tokens may grant (e.g. customer, for a gateway)",
    )
    keygen.set_defaults(make=lambda ns: KeyGen(ns.kid, ns.out, ns.jwks, ns.only_scopes))


def _make_issue(ns: argparse.Namespace) -> IssueToken:
    if not ns.sub.strip():
        # An unset $USER in `--sub "$USER"` gives an empty name, recorded on every change.
        raise ValueError(
            f"--sub is empty (an unset $USER?): name the caller, e.g. --sub {SUBJECT_EXAMPLE}"
        )
    scopes = ns.scopes
    if ns.customer is not None:
        if not set(scopes) <= {CUSTOMER_SCOPE, *BESIDE_CUSTOMER}:
            raise ValueError(
                "a token bound to a customer carries the scope customer, and of the others"
                f" only {', '.join(BESIDE_CUSTOMER)}"
            )
        scopes = (CUSTOMER_SCOPE, *(s for s in scopes if s != CUSTOMER_SCOPE))
    elif not scopes:
        raise ValueError("give --scopes (or --customer for a shopper's token)")
    return IssueToken(ns.sub, scopes, ns.customer, ns.ttl, ns.signing_key, ns.audience, ns.issuer)


def execute_token(command: TokenCommand, *, out: TextIO, config: StockctlConfig) -> None:
    """Carry out a token command; it needs no server."""
    match command:
        case IssueToken():
            token = issue_token(
                signing_key(config, command.key_file),
                command.subject,
                command.scopes,
                ttl_s=command.ttl_s,
                customer_id=command.customer_id,
                audience=command.audience,
                issuer=command.issuer,
            )
            print(token, file=out)
        case KeyGen():
            if command.jwks is not None:
                _check_kid_is_new(Path(command.jwks), command.kid)
            private, public = new_signing_key(command.kid)
            if command.only_scopes is not None:
                public["stockcore_scopes"] = list(command.only_scopes)
            fd = os.open(command.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(private, handle)
            if command.jwks is not None:
                path = Path(command.jwks)
                document = json.loads(path.read_text()) if path.exists() else {"keys": []}
                document["keys"].append(public)
                path.write_text(json.dumps(document, indent=2) + "\n")
            print(json.dumps(public, indent=2), file=out)


def _check_kid_is_new(path: Path, kid: str) -> None:
    if path.exists() and any(k.get("kid") == kid for k in json.loads(path.read_text())["keys"]):
        raise ValueError(f"{path} already has a key {kid!r}")


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(seconds)


def issue_command(claims: Mapping[str, Any], prog: str, *, add_scope: str | None = None) -> str:
    """The `stockctl token issue` command that mints a token like the one with `claims`
    (with `add_scope` too), run as `prog`."""
    granted = [str(s) for s in str(claims.get("scope", "")).split() if s]
    if add_scope is not None and add_scope not in granted:
        granted.append(add_scope)
    customer = claims.get("customer_id")
    words = [prog, "token", "issue", "--sub", shlex.quote(str(claims.get("sub") or "dev"))]
    if customer is not None:
        words += ["--customer", shlex.quote(str(customer))]
        granted = [s for s in granted if s != CUSTOMER_SCOPE]
    if granted:
        scopes = "all" if set(granted) == set(SERVICE_SCOPES) else ",".join(granted)
        words += ["--scopes", shlex.quote(scopes)]
    issued, expires = claims.get("iat"), claims.get("exp")
    if isinstance(issued, int) and isinstance(expires, int) and expires > issued:
        words += ["--ttl", _duration_text(expires - issued)]
    for option, claim, default in (
        ("--audience", "aud", DEFAULT_AUDIENCE),
        ("--issuer", "iss", DEFAULT_ISSUER),
    ):
        value = claims.get(claim)
        if isinstance(value, str) and value != default:
            words += [option, shlex.quote(value)]
    return " ".join(words)
