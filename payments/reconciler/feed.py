"""The payment provider's settlement feed, as the reconciler reads it over HTTP:

    GET /v1/balance_transactions?after=CURSOR&limit=N   a page of balance transactions
    GET /v1/refunds/{id}                                a refund: which charge it refunds

(simulators/payments.py documents both.) A page is parsed whole or refused: a transaction
the reconciler cannot read stops it rather than being skipped, since the cursor must never
pass a transaction it did not post.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

TYPES = frozenset({"charge", "fee", "refund", "refund_failure", "payout"})
# The types whose source is a refund, whose charge the feed does not name.
REFUND_TYPES = frozenset({"refund", "refund_failure"})
_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_ID = 128


class FeedError(Exception):
    """The provider could not be read, or answered what the reconciler cannot read."""


@dataclass(frozen=True)
class BalanceTransaction:
    """One movement of the provider's balance; `amount` signed as the provider shows it."""

    txn_id: str
    cursor: int
    type: str
    source_id: str
    order_id: str | None
    amount: int
    currency: str
    created: datetime
    available_on: datetime


@dataclass(frozen=True)
class FeedPage:
    """Transactions after a cursor, the cursor to read on from, and whether more wait."""

    transactions: list[BalanceTransaction]
    next_cursor: int
    has_more: bool


def _id(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID or not value.isprintable():
        raise FeedError(f"{what} must be 1-{_MAX_ID} printable characters")
    return value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise FeedError(f"{what} must be a whole number")
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError) as exc:
        raise FeedError(f"{what} must be a whole number") from exc


def _time(value: object, what: str) -> datetime:
    try:
        return datetime.fromtimestamp(_int(value, what), UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise FeedError(f"{what} must be a time in Unix seconds") from exc


def parse_transaction(doc: object) -> BalanceTransaction:
    """One transaction of a page; FeedError when it is not one."""
    if not isinstance(doc, dict):
        raise FeedError("a balance transaction is a JSON object")
    kind = doc.get("type")
    if kind not in TYPES:
        raise FeedError(f"unknown balance transaction type {kind!r}")
    currency = doc.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise FeedError("currency must be an ISO 4217 code")
    order_id = doc.get("order_id") or None
    cursor = _int(doc.get("cursor"), "cursor")
    if cursor <= 0:
        raise FeedError("cursor must be positive")
    return BalanceTransaction(
        _id(doc.get("id"), "id"),
        cursor,
        str(kind),
        _id(doc.get("source"), "source"),
        None if order_id is None else _id(order_id, "order_id"),
        _int(doc.get("amount"), "amount"),
        currency,
        _time(doc.get("created"), "created"),
        _time(doc.get("available_on"), "available_on"),
    )


def parse_page(doc: object, after: int) -> FeedPage:
    """A page read after cursor `after`; FeedError when it is not one, or when its
    cursors do not follow `after` one by one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise FeedError("a page is a JSON object with data")
    found = [parse_transaction(item) for item in doc["data"]]
    expected = list(range(after + 1, after + 1 + len(found)))
    if [t.cursor for t in found] != expected:
        raise FeedError(f"cursors {[t.cursor for t in found]} do not follow {after}")
    next_cursor = _int(doc.get("next_cursor"), "next_cursor")
    if next_cursor != after + len(found):
        raise FeedError(f"next_cursor {next_cursor} is not the last cursor of the page")
    return FeedPage(found, next_cursor, bool(doc.get("has_more")))


@dataclass
class SettlementFeed:
    """The provider's API at `base_url`, read through `http`."""

    base_url: str
    http: aiohttp.ClientSession

    async def _get(self, path: str) -> Any:
        try:
            async with self.http.get(self.base_url.rstrip("/") + path) as reply:
                if reply.status != 200:
                    raise FeedError(f"GET {path.split('?')[0]}: HTTP {reply.status}")
                return await reply.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise FeedError(f"GET {path.split('?')[0]}: {type(exc).__name__}") from exc

    async def page(self, after: int, limit: int) -> FeedPage:
        """Up to `limit` transactions after cursor `after`."""
        return parse_page(
            await self._get(f"/v1/balance_transactions?after={after}&limit={limit}"), after
        )

    async def refunded_charge(self, refund_id: str) -> str:
        """The charge a refund refunds."""
        refund = await self._get(f"/v1/refunds/{quote(refund_id, safe='')}")
        if not isinstance(refund, dict):
            raise FeedError("a refund is a JSON object")
        return _id(refund.get("charge"), "the refund's charge")
