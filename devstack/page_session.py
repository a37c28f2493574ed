"""The checkout page's session under `make run`: who the shopper is, and the short-lived
token, bound to that shopper alone, that the page calls the API with. Development only.

    POST /session        -> {"customerId", "token", "expiresIn"}: a token for the
                            session's customer (a new session, and customer, without one)
    POST /session/pay    {"orderId"} -> the payment provider charges the session's own
                            order, whose webhook pays it (devstack/payments.py):
                            200 {"orderId", "paymentId"} once paid, 202 with "status":
                            "PENDING" while the confirmation is on its way

The session is a random id in a cookie (HttpOnly, SameSite=Strict, Path=/session): the
page's script never sees it, and the browser sends it only to /session and only from the
gateway's own pages. The customer is derived from it by a one-way hash, so a customer id
seen in an order or an event does not lead back to the session, and no one can pick the
customer a session is. The server is the tool's, in a thread of `make run`'s process, on
a Unix socket (mode 0600) in a private temporary folder: no browser and no other user
reaches it but through the gateway, which forwards same-origin requests only
(gateway/bootstrap.py). The signing key stays in this process: neither the token nor the
key is in Envoy's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from clients.errors import StatusCode, StockcoreError
from clients.tokens import issue_token, load_signing_key
from devstack.credentials import DevCredentials
from devstack.payments import PaymentPending, SimulatedPayments
from gateway.config import GatewaySettings
from server.auth import scopes
from server.config import Settings

log = logging.getLogger("stockcore")

CHECKOUT_PAGE_SUBJECT = "checkout-page-dev"
# What the checkout page calls: GetStock; Reserve, SetReservationLine and Release of its
# customer's cart (inventory:hold, which a customer's token may not Commit with);
# CreateOrder of that cart, for its customer; and that customer's GetOrder and
# WatchOrders. Paying is the payment provider's.
CHECKOUT_PAGE_SCOPES = (
    scopes.CUSTOMER,
    scopes.INVENTORY_READ,
    scopes.INVENTORY_HOLD,
    scopes.ORDERS_CREATE,
)
SESSION_PATH = "/session"
SESSION_COOKIE = "stockcore_session"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_HASH_PREFIX = b"stockcore checkout session:"
# The HTTP status of each gRPC code a payment may fail with, as the gateway maps them.
_HTTP_STATUS = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True)
class PageSessions:
    """Mints the page's tokens: signed with `signing_key`, for `audience`, valid for
    `token_ttl_s` seconds, each bound to the customer of one session."""

    signing_key: dict[str, Any]
    audience: str
    token_ttl_s: float

    @staticmethod
    def new_session_id() -> str:
        """A session id no one can guess."""
        return secrets.token_urlsafe(32)

    @staticmethod
    def is_session_id(text: str) -> bool:
        """Whether `text` has the form of a session id."""
        return _SESSION_ID.fullmatch(text) is not None

    @staticmethod
    def customer_of(session_id: str) -> str:
        """The customer a session is: the same for the same session, one-way."""
        digest = hashlib.sha256(_HASH_PREFIX + session_id.encode()).hexdigest()
        return f"shopper-{digest[:20]}"

    def token_for(self, customer_id: str) -> str:
        """A token of the page's scopes, bound to `customer_id`."""
        return issue_token(
            self.signing_key,
            CHECKOUT_PAGE_SUBJECT,
            CHECKOUT_PAGE_SCOPES,
            ttl_s=self.token_ttl_s,
            customer_id=customer_id,
            audience=self.audience,
        )


SESSIONS_KEY: web.AppKey[PageSessions] = web.AppKey("sessions", PageSessions)
PAYMENTS_KEY: web.AppKey[SimulatedPayments] = web.AppKey("payments", SimulatedPayments)


def _session_id(request: web.Request) -> str | None:
    found = request.cookies.get(SESSION_COOKIE)
    return found if found is not None and PageSessions.is_session_id(found) else None


def _no_store(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


async def session(request: web.Request) -> web.StreamResponse:
    """POST /session: the session's customer and a fresh token for it."""
    sessions = request.app[SESSIONS_KEY]
    session_id = _session_id(request)
    fresh = session_id is None
    if session_id is None:
        session_id = sessions.new_session_id()
    customer = sessions.customer_of(session_id)
    response = web.json_response(
        {
            "customerId": customer,
            "token": sessions.token_for(customer),
            "expiresIn": sessions.token_ttl_s,
        }
    )
    if fresh:
        # No Max-Age: the session, and the customer, last until the browser closes.
        response.set_cookie(
            SESSION_COOKIE, session_id, path=SESSION_PATH, httponly=True, samesite="Strict"
        )
    return _no_store(response)


def _status_body(code: StatusCode, message: str, reason: str | None = None) -> dict[str, Any]:
    """A google.rpc.Status as JSON, as the gateway answers errors."""
    details = []
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "stockcore.v1",
            }
        )
    return {"code": int(code), "message": message, "details": details}


async def pay(request: web.Request) -> web.StreamResponse:
    """POST /session/pay {"orderId"}: the provider charges the session's order."""
    session_id = _session_id(request)
    if session_id is None:
        return _no_store(
            web.json_response(
                _status_body(StatusCode.UNAUTHENTICATED, "no checkout session: POST /session"),
                status=401,
            )
        )
    try:
        body = await request.json()
        order_id = body["orderId"]
        if not isinstance(order_id, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _no_store(
            web.json_response(
                _status_body(StatusCode.INVALID_ARGUMENT, 'send {"orderId": "..."}'), status=400
            )
        )
    customer = PageSessions.customer_of(session_id)
    try:
        paid = await request.app[PAYMENTS_KEY].pay(customer, order_id)
    except PaymentPending as pending:
        return _no_store(
            web.json_response(
                {"orderId": order_id, "paymentId": pending.charge_id, "status": "PENDING"},
                status=202,
            )
        )
    except StockcoreError as error:
        reason = error.error_info.reason if error.error_info else None
        status = _HTTP_STATUS.get(error.code, 500)
        return _no_store(
            web.json_response(_status_body(error.code, error.message, reason), status=status)
        )
    return _no_store(web.json_response({"orderId": paid.order_id, "paymentId": paid.charge_id}))


def session_app(sessions: PageSessions, payments: SimulatedPayments) -> web.Application:
    """The session endpoint's routes."""
    app = web.Application(client_max_size=4096)
    app[SESSIONS_KEY] = sessions
    app[PAYMENTS_KEY] = payments
    app.router.add_post(SESSION_PATH, session)
    app.router.add_post(f"{SESSION_PATH}/pay", pay)
    return app


@contextlib.contextmanager
def serving(sessions: PageSessions, payments: SimulatedPayments) -> Iterator[Path]:
    """The session endpoint on a Unix socket (its path yielded), in a thread of this
    process with an event loop of its own; stopped, and its folder removed, on exit."""
    folder = Path(tempfile.mkdtemp(prefix="stockcore-session-"))  # mode 0700
    socket_path = folder / "session.sock"
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(session_app(sessions, payments), access_log=None)
    started = threading.Event()
    failed: list[BaseException] = []

    async def start() -> None:
        await runner.setup()
        await web.UnixSite(runner, str(socket_path)).start()
        socket_path.chmod(0o600)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported to the starting thread
            failed.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, name="page-session", daemon=True)
    thread.start()
    try:
        started.wait()
        if failed:
            raise failed[0]
        yield socket_path
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)


def dev_page_sessions(
    settings: Settings, gateway: GatewaySettings, data_dir: Path | str, token_ttl_s: float
) -> PageSessions | None:
    """The page's sessions, signed with the development key; None when the server checks
    tokens against another key set (or none), or when the gateway listens beyond this
    machine (every visitor of the page may hold stock with its token)."""
    credentials = DevCredentials(Path(data_dir).resolve())
    if settings.auth_disabled or settings.auth_jwks_file != str(credentials.jwks):
        return None
    if not _loopback(gateway.gateway_host):
        log.warning(
            "the checkout page gets no session: the gateway listens beyond this machine",
            extra={"gateway_host": gateway.gateway_host},
        )
        return None
    return PageSessions(
        load_signing_key(credentials.signing_key), settings.auth_audience, token_ttl_s
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
