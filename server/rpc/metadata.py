"""What a call says about itself: who calls (the principal its token or certificate
proved, never a name it asserts), under which request id, and by when it needs an answer."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import grpc

from server.auth.principal import ANONYMOUS
from server.domain.orders import Actor
from server.rpc.access import current_principal

REQUEST_ID_KEY = "x-request-id"
# A caller's request id is recorded in history rows and log lines, and sent back to
# customers: only ids of the id charset are kept, others are replaced by a new one.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def _value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str) and value:
            return value
    return ""


def caller() -> str:
    """Who is calling, as the audit trail records it (server/auth/principal.py)."""
    return current_principal().caller


def account() -> str | None:
    """Whose share the call takes of what is bounded per caller (server/shares.py); None
    on a server that checks no tokens, whose callers cannot be told apart."""
    principal = current_principal()
    return None if principal is ANONYMOUS else principal.account


def request_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's x-request-id when it is 1-128 characters of [A-Za-z0-9._:/-], else a
    new one."""
    given = _value(context, REQUEST_ID_KEY)
    if REQUEST_ID_PATTERN.fullmatch(given) is not None:
        return given
    return uuid.uuid4().hex


def actor_of(context: grpc.aio.ServicerContext[Any, Any]) -> Actor:
    """Caller and request id together, as history rows record them."""
    return Actor(caller(), request_id_of(context))


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline as a time.monotonic() value, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining
