"""Reading orders: ListOrders queries with their opaque page tokens, and the filter of
a WatchOrders stream."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.inventory import check_id
from server.domain.orders import EventType, OrderStatus

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# WatchOrdersRequest.types: a type named twice is allowed, but not without end.
MAX_WATCH_TYPES = 16


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page of ListOrders ends: the last order's creation time and id."""

    created_at: datetime
    order_id: str


@dataclass(frozen=True, slots=True)
class ListOrders:
    """A validated ListOrders query."""

    customer_id: str
    status: OrderStatus | None
    created_after: datetime | None
    created_before: datetime | None
    page_size: int
    after: PagePosition | None

    @property
    def filter_digest(self) -> str:
        """What a page token is bound to: the same filters on every page."""
        text = f"{self.customer_id}|{self.status}|{self.created_after}|{self.created_before}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def token(self, last: PagePosition) -> str:
        """The opaque token of the page after `last`."""
        micros = (last.created_at - _EPOCH) // timedelta(microseconds=1)
        raw = json.dumps([micros, last.order_id, self.filter_digest], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_token(token: str) -> tuple[PagePosition, str] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        micros, order_id, digest = json.loads(raw)
        if not (isinstance(micros, int) and isinstance(order_id, str) and isinstance(digest, str)):
            return None
        return PagePosition(_EPOCH + timedelta(microseconds=micros), order_id), digest
    except (ValueError, TypeError, OverflowError, binascii.Error):
        return None


def list_orders(
    customer_id: str,
    status: int,
    created_after: datetime | None,
    created_before: datetime | None,
    page_size: int,
    page_token: str,
) -> ListOrders:
    """Validate a ListOrders request; status 0 means any, page_size 0 the default."""
    violations = check_id(customer_id, "customer_id")
    wanted: OrderStatus | None = None
    if status:
        try:
            wanted = OrderStatus(status)
        except ValueError:
            violations.append(_violation("status", f"unknown status {status}"))
    if created_after and created_before and created_after >= created_before:
        violations.append(_violation("created_before", "must be later than created_after"))
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        violations.append(_violation("page_size", f"must be 1 to {MAX_PAGE_SIZE} (0: default)"))
    query = ListOrders(
        customer_id,
        wanted,
        created_after,
        created_before,
        page_size or DEFAULT_PAGE_SIZE,
        None,
    )
    if page_token:
        read = _read_token(page_token)
        if read is None:
            violations.append(_violation("page_token", "is not a token this server issued"))
        elif read[1] != query.filter_digest:
            violations.append(_violation("page_token", "belongs to a query with other filters"))
        else:
            query = replace(query, after=read[0])
    if violations:
        raise InvalidArgument(violations)
    return query


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """A validated WatchOrders request: which events, after which cursor."""

    customer_id: str
    order_id: str
    types: frozenset[EventType]
    after_cursor: int

    def matches(self, customer_id: str, order_id: str, event_type: EventType) -> bool:
        """Whether an event passes the filter."""
        return (
            (not self.customer_id or customer_id == self.customer_id)
            and (not self.order_id or order_id == self.order_id)
            and (not self.types or event_type in self.types)
        )


def watch_filter(
    customer_id: str, order_id: str, types: Sequence[int], after_cursor: int
) -> WatchFilter:
    """Validate a WatchOrders request; empty fields mean any."""
    violations: list[FieldViolation] = []
    if customer_id:
        violations += check_id(customer_id, "customer_id")
    if order_id:
        violations += check_id(order_id, "order_id")
    kinds: set[EventType] = set()
    for index, value in enumerate(types):
        try:
            kinds.add(EventType(value))
        except ValueError:
            violations.append(_violation(f"types[{index}]", f"unknown event type {value}"))
    if after_cursor < 0:
        violations.append(_violation("after_cursor", "must not be negative"))
    if violations:
        raise InvalidArgument(violations)
    return WatchFilter(customer_id, order_id, frozenset(kinds), after_cursor)
