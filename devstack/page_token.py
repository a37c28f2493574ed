"""The checkout page's token under `make run`: development only.

`python -m devstack` owns the development signing key, so it mints one token for the
page the gateway serves (served to it as /config.js). Anyone who can load the page can
read that token: a real storefront never does this, it mints a customer-bound token per
shopper (README, "How a checkout gateway mints customer tokens").
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from devstack.credentials import DevCredentials
from gateway.config import GatewaySettings
from server.auth import scopes
from server.config import Settings

log = logging.getLogger("stockcore")

CHECKOUT_PAGE_SUBJECT = "checkout-page-dev"
# What the checkout page calls: GetStock, CreateOrder, CancelOrder, ConfirmPayment and
# WatchOrders.
CHECKOUT_PAGE_SCOPES = (scopes.INVENTORY_READ, scopes.ORDERS_WRITE, scopes.ORDERS_WATCH)
CHECKOUT_PAGE_TOKEN_TTL_S = 10 * 3600.0


def dev_page_token(
    settings: Settings, gateway: GatewaySettings, data_dir: Path | str
) -> str | None:
    """A token for the checkout page, signed with the development key, for a working
    day; None when the server checks tokens against another key set (or none), or when
    the gateway listens on more than loopback."""
    from clients.tokens import issue_token, load_signing_key

    credentials = DevCredentials(Path(data_dir).resolve())
    if settings.auth_disabled or settings.auth_jwks_file != str(credentials.jwks):
        return None
    if not _loopback(gateway.gateway_host):
        # Whoever loads the page holds the token: only this machine may.
        log.warning(
            "the checkout page gets no token: the gateway listens beyond this machine",
            extra={"gateway_host": gateway.gateway_host},
        )
        return None
    return issue_token(
        load_signing_key(credentials.signing_key),
        CHECKOUT_PAGE_SUBJECT,
        CHECKOUT_PAGE_SCOPES,
        ttl_s=CHECKOUT_PAGE_TOKEN_TTL_S,
        audience=settings.auth_audience,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
