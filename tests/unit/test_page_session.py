"""The checkout page's sessions under `make run`: which customer a session is, the token it
gets, and when `make run` gives the page sessions at all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import jwt
import pytest

from devstack.config import SettingsError
from devstack.config import from_env as dev_from_env
from devstack.credentials import DevCredentials
from devstack.page_session import (
    CHECKOUT_PAGE_SCOPES,
    CHECKOUT_PAGE_SUBJECT,
    PageSessions,
    dev_page_sessions,
)
from gateway.config import GatewaySettings
from server.auth import scopes
from server.config import Settings


def test_a_session_is_one_customer_that_does_not_lead_back_to_it() -> None:
    first, second = PageSessions.new_session_id(), PageSessions.new_session_id()

    assert PageSessions.is_session_id(first) and first != second
    assert PageSessions.customer_of(first) == PageSessions.customer_of(first)
    assert PageSessions.customer_of(first) != PageSessions.customer_of(second)
    assert PageSessions.customer_of(first).startswith("shopper-")
    assert first not in PageSessions.customer_of(first)
    # Whatever a cookie holds that is not a session id makes a new session.
    assert not PageSessions.is_session_id("alice")
    assert not PageSessions.is_session_id(first + "x")


def test_the_page_token_is_the_least_the_page_needs_for_one_customer(tmp_path: Path) -> None:
    credentials = DevCredentials(tmp_path).ensure()
    sessions = dev_page_sessions(
        Settings(auth_jwks_file=str(credentials.jwks)), GatewaySettings(), tmp_path, 300.0
    )
    assert sessions is not None

    claims = jwt.decode(sessions.token_for("shopper-1"), options={"verify_signature": False})

    assert claims["sub"] == CHECKOUT_PAGE_SUBJECT and claims["customer_id"] == "shopper-1"
    assert set(claims["scope"].split()) == set(CHECKOUT_PAGE_SCOPES)
    assert not {scopes.ORDERS_PAY, scopes.ORDERS_WRITE} & set(claims["scope"].split())
    assert claims["exp"] - claims["iat"] == 300


def test_the_page_gets_sessions_only_with_the_development_key_and_a_loopback_gateway(
    tmp_path: Path,
) -> None:
    credentials = DevCredentials(tmp_path).ensure()
    settings = Settings(auth_jwks_file=str(credentials.jwks))
    gateway = GatewaySettings()

    assert dev_page_sessions(settings, gateway, tmp_path, 600.0) is not None
    assert (
        dev_page_sessions(settings, replace(gateway, gateway_host="0.0.0.0"), tmp_path, 600.0)
        is None
    )
    other = replace(settings, auth_jwks_file=str(tmp_path / "other.json"))
    assert dev_page_sessions(other, gateway, tmp_path, 600.0) is None


def test_a_page_token_lives_fifteen_minutes_at_most() -> None:
    assert dev_from_env({"STOCKCORE_DEV_PAGE_TOKEN_TTL": "900"}).dev_page_token_ttl_s == 900
    assert dev_from_env({}).dev_page_token_ttl_s <= 900
    with pytest.raises(SettingsError, match="dev_page_token_ttl_s"):
        dev_from_env({"STOCKCORE_DEV_PAGE_TOKEN_TTL": "36000"})
