"""Bearer tokens: verification by key id, rotation, the cache of verified tokens, and the
limits a key and the customer claim put on the scopes a token may grant."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from clients import tokens as client_tokens
from clients.tokens import issue_token, new_signing_key
from server.auth import scopes
from server.auth.tokens import TOKEN_EXPIRED, TOKEN_INVALID, KeySet, TokenVerifier
from server.domain.errors import Unauthenticated


class Clock:
    def __init__(self) -> None:
        self.now = time.time()
        self.monotonic = time.monotonic()


def write_jwks(path: Path, *public_keys: dict[str, object]) -> None:
    path.write_text(json.dumps({"keys": list(public_keys)}))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def verifier(path: Path, clock: Clock) -> TokenVerifier:
    return TokenVerifier(
        KeySet(str(path), reload_interval=5.0),
        audience="stockcore",
        issuers=["stockcore"],
        max_lifetime_s=86_400.0,
        leeway_s=0.0,
        clock=lambda: clock.now,
        monotonic=lambda: clock.monotonic,
    )


def refusal_reason(check: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as raised:
        check.principal(token)
    return raised.value.reason


def test_a_token_names_its_subject_and_scopes(tmp_path: Path, clock: Clock) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    token = issue_token(private, "checkout", ["inventory:hold", "orders:write"], now=clock.now)

    principal = verifier(tmp_path / "jwks.json", clock).principal(token)

    assert principal.subject == "checkout" and principal.customer_id is None
    assert principal.scopes >= {"inventory:hold", "orders:write"}
    assert principal.caller == "checkout"


def test_orders_write_confers_creating_paying_and_cancelling(tmp_path: Path, clock: Clock) -> None:
    """Tokens minted before the split carry orders:write; a key limited to it may still
    grant each of the three it stands for."""
    private, public = new_signing_key("k1")
    public["stockcore_scopes"] = [scopes.ORDERS_WRITE]
    write_jwks(tmp_path / "jwks.json", public)
    check = verifier(tmp_path / "jwks.json", clock)

    old = check.principal(issue_token(private, "checkout", [scopes.ORDERS_WRITE], now=clock.now))
    new = check.principal(issue_token(private, "psp", [scopes.ORDERS_PAY], now=clock.now))

    assert old.scopes == {
        scopes.ORDERS_WRITE,
        scopes.ORDERS_CREATE,
        scopes.ORDERS_PAY,
        scopes.ORDERS_CANCEL,
    }
    assert new.scopes == {scopes.ORDERS_PAY}


def test_a_new_key_verifies_once_published_and_a_removed_one_stops_at_once(
    tmp_path: Path, clock: Clock
) -> None:
    old, old_public = new_signing_key("2026-10")
    new, new_public = new_signing_key("2026-11")
    path = tmp_path / "jwks.json"
    write_jwks(path, old_public)
    check = verifier(path, clock)
    old_token = issue_token(old, "svc", ["inventory:read"], now=clock.now)
    assert check.principal(old_token).subject == "svc"

    write_jwks(path, old_public, new_public)
    clock.monotonic += 1.5  # a kid not yet seen makes the file be read within a second
    assert (
        check.principal(issue_token(new, "svc", ["inventory:read"], now=clock.now)).subject == "svc"
    )

    write_jwks(path, new_public)
    clock.monotonic += 5.5
    assert refusal_reason(check, old_token) == TOKEN_INVALID


def test_a_verified_token_is_not_verified_again(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    check = verifier(tmp_path / "jwks.json", clock)
    token = issue_token(private, "svc", ["inventory:read"], now=clock.now)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: object, **kwargs: object) -> object:
        decoded.append("x")
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting_decode)
    for _ in range(100):
        check.principal(token)

    assert len(decoded) == 1 and check.cached == 1


def test_a_cached_token_is_refused_once_it_expires(tmp_path: Path, clock: Clock) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    check = verifier(tmp_path / "jwks.json", clock)
    token = issue_token(private, "svc", ["inventory:read"], ttl_s=60, now=clock.now)
    check.principal(token)

    clock.now += 61

    assert refusal_reason(check, token) == TOKEN_EXPIRED


def test_a_token_of_another_key_under_a_known_kid_is_invalid(tmp_path: Path, clock: Clock) -> None:
    _, public = new_signing_key("k1")
    forged, _ = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)

    token = issue_token(forged, "svc", scopes.SERVICE_SCOPES, now=clock.now)

    assert refusal_reason(verifier(tmp_path / "jwks.json", clock), token) == TOKEN_INVALID


def test_a_gateway_key_limited_to_customers_cannot_grant_service_scopes(
    tmp_path: Path, clock: Clock
) -> None:
    private, public = new_signing_key("gateway")
    public["stockcore_scopes"] = [scopes.CUSTOMER]
    write_jwks(tmp_path / "jwks.json", public)
    check = verifier(tmp_path / "jwks.json", clock)

    shopper = issue_token(
        private, "shop-web", [scopes.CUSTOMER], customer_id="alice", now=clock.now
    )
    greedy = issue_token(private, "shop-web", [scopes.STOCK_ADJUST], now=clock.now)

    assert check.principal(shopper).caller == "shop-web for customer alice"
    assert refusal_reason(check, greedy) == TOKEN_INVALID


@pytest.mark.parametrize(
    ("granted", "customer"),
    [
        ([scopes.CUSTOMER], None),  # a customer scope without a customer
        ([scopes.CUSTOMER, scopes.ORDERS_READ], "alice"),  # every customer's orders
        ([scopes.CUSTOMER, scopes.ORDERS_WRITE], "alice"),  # paying, through the alias
        ([scopes.CUSTOMER, scopes.ORDERS_PAY], "alice"),
        ([scopes.ORDERS_READ], "alice"),
        ([scopes.ORDERS_CREATE], "alice"),  # bound to a customer, without `customer`
    ],
)
def test_a_customer_bound_token_carries_only_what_concerns_that_customer(
    tmp_path: Path, clock: Clock, granted: list[str], customer: str | None
) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)

    token = issue_token(private, "shop-web", granted, customer_id=customer, now=clock.now)

    assert refusal_reason(verifier(tmp_path / "jwks.json", clock), token) == TOKEN_INVALID


def test_a_shoppers_token_may_also_read_stock_hold_its_cart_and_create_orders(
    tmp_path: Path, clock: Clock
) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    granted = [scopes.CUSTOMER, scopes.INVENTORY_READ, scopes.INVENTORY_HOLD, scopes.ORDERS_CREATE]

    token = issue_token(private, "checkout-page", granted, customer_id="alice", now=clock.now)
    principal = verifier(tmp_path / "jwks.json", clock).principal(token)

    assert principal.customer_id == "alice"
    assert principal.scopes == set(granted)


@pytest.mark.parametrize("customer", ["a/../alice", "..", "alice/", "al ice"])
def test_a_customer_claim_that_is_not_a_customer_id_is_invalid(
    tmp_path: Path, clock: Clock, customer: str
) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)

    token = issue_token(private, "shop-web", [scopes.CUSTOMER], customer_id=customer, now=clock.now)

    assert refusal_reason(verifier(tmp_path / "jwks.json", clock), token) == TOKEN_INVALID


def test_a_token_for_another_audience_is_invalid(tmp_path: Path, clock: Clock) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)

    token = issue_token(private, "svc", ["inventory:read"], audience="elsewhere", now=clock.now)

    assert refusal_reason(verifier(tmp_path / "jwks.json", clock), token) == TOKEN_INVALID


def test_a_token_without_an_issuer_or_from_another_is_invalid(tmp_path: Path, clock: Clock) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    check = verifier(tmp_path / "jwks.json", clock)
    claims = {"sub": "svc", "aud": "stockcore", "iat": int(clock.now), "exp": int(clock.now) + 60}
    key = jwt.PyJWK(private)
    unnamed = jwt.encode(claims, key.key, algorithm=key.algorithm_name, headers={"kid": "k1"})
    other = issue_token(private, "svc", ["inventory:read"], issuer="elsewhere", now=clock.now)

    assert refusal_reason(check, unnamed) == TOKEN_INVALID
    assert refusal_reason(check, other) == TOKEN_INVALID
    assert check.principal(issue_token(private, "svc", ["inventory:read"], now=clock.now))


def test_a_token_living_longer_than_the_maximum_is_invalid(tmp_path: Path, clock: Clock) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    check = verifier(tmp_path / "jwks.json", clock)
    week = issue_token(private, "svc", ["inventory:read"], ttl_s=7 * 86_400, now=clock.now)
    day = issue_token(private, "svc", ["inventory:read"], ttl_s=86_400, now=clock.now)

    with pytest.raises(Unauthenticated, match="more than the 86400 s"):
        check.principal(week)
    assert check.principal(day).subject == "svc"


def test_a_token_without_an_issue_time_is_invalid(tmp_path: Path, clock: Clock) -> None:
    private, public = new_signing_key("k1")
    write_jwks(tmp_path / "jwks.json", public)
    claims = {"sub": "svc", "aud": "stockcore", "iss": "stockcore", "exp": int(clock.now) + 60}
    key = jwt.PyJWK(private)
    token = jwt.encode(claims, key.key, algorithm=key.algorithm_name, headers={"kid": "k1"})

    assert refusal_reason(verifier(tmp_path / "jwks.json", clock), token) == TOKEN_INVALID


def test_the_clients_know_the_servers_scopes() -> None:
    assert client_tokens.SERVICE_SCOPES == scopes.SERVICE_SCOPES
    assert set(client_tokens.SCOPE_ALIASES) == set(scopes.ALIASES)
    assert client_tokens.BESIDE_CUSTOMER == scopes.BESIDE_CUSTOMER
