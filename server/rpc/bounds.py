"""How many entries a request's repeated fields may hold, checked right after decoding
and before any per-entry work: a request over a bound is refused whole, at the cost of a
length check, whatever it holds.

Every repeated field of every request message (nested ones included) has its bound here;
a field without one fails at start-up, so a new repeated field cannot be served unbounded.
The proto comment of each field states the same number (tests/unit/test_bounds.py holds
the two together).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.inventory import MAX_LINES, MAX_SKUS_PER_READ
from server.domain.order_queries import MAX_WATCH_TYPES

# Fully qualified field name -> the most entries a request may hold in it.
MAX_ENTRIES: dict[str, int] = {
    "stockcore.v1.ReserveRequest.lines": MAX_LINES,
    "stockcore.v1.GetStockRequest.skus": MAX_SKUS_PER_READ,
    "stockcore.v1.CreateOrderRequest.lines": MAX_LINES,
    "stockcore.v1.WatchOrdersRequest.types": MAX_WATCH_TYPES,
}


class Unbounded(Exception):
    """A request message has a repeated field with no entry in MAX_ENTRIES."""


def checker(kind: Any) -> Callable[[Any], None]:
    """A check of a decoded `kind` request against its bounds. A repeated field with no
    bound, or one inside a message the request holds (which a top-level bound would not
    cover), is refused here, when the handlers are built."""
    top: list[tuple[str, int]] = []
    for field in kind.fields:
        if field.is_repeated:
            if field.full_name not in MAX_ENTRIES:
                raise Unbounded(f"{field.full_name} is repeated and has no bound")
            top.append((field.name, MAX_ENTRIES[field.full_name]))
        if field.message_type is not None:
            _no_repeated_inside(field.message_type, frozenset({kind.full_name}))

    def check(request: Any) -> None:
        over = [
            FieldViolation(
                name, f"must hold at most {limit} entries, got {len(getattr(request, name))}"
            )
            for name, limit in top
            if len(getattr(request, name)) > limit
        ]
        if over:
            raise InvalidArgument(over)

    return check


def _no_repeated_inside(kind: Any, seen: frozenset[str]) -> None:
    if kind.full_name in seen or kind.full_name.startswith("google.protobuf."):
        return
    for field in kind.fields:
        if field.is_repeated:
            raise Unbounded(f"{field.full_name} is repeated inside a request's message")
        if field.message_type is not None:
            _no_repeated_inside(field.message_type, seen | {kind.full_name})
