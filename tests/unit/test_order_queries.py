"""Queries that read orders: ListOrders filters and page tokens, the WatchOrders filter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.domain.errors import InvalidArgument
from server.domain.order_queries import PagePosition, list_orders, watch_filter
from server.domain.orders import EventType

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def fields_of(raised: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in raised.value.violations]


def test_list_orders_checks_its_filters_and_page_size() -> None:
    with pytest.raises(InvalidArgument) as raised:
        list_orders("", 99, NOW, NOW - timedelta(days=1), 501, "")
    assert fields_of(raised) == ["customer_id", "status", "created_before", "page_size"]
    assert list_orders("c", 0, None, None, 0, "").page_size == 50


def test_a_page_token_resumes_the_same_query_only() -> None:
    query = list_orders("c", 2, None, None, 10, "")
    token = query.token(PagePosition(NOW, "o-9"))
    resumed = list_orders("c", 2, None, None, 10, token)
    assert resumed.after == PagePosition(NOW, "o-9")
    with pytest.raises(InvalidArgument, match="other filters"):
        list_orders("c", 3, None, None, 10, token)
    with pytest.raises(InvalidArgument, match="page_token"):
        list_orders("c", 2, None, None, 10, "not-a-token")


def test_watch_filter_refuses_unknown_types_and_negative_cursors() -> None:
    with pytest.raises(InvalidArgument) as raised:
        watch_filter("bad customer", "", [1, 0, 42], -1)
    assert fields_of(raised) == ["customer_id", "types[1]", "types[2]", "after_cursor"]
    wanted = watch_filter("", "o-1", [2], 5)
    assert wanted.matches("anyone", "o-1", EventType.ORDER_PAID)
    assert not wanted.matches("anyone", "o-1", EventType.ORDER_CREATED)
    assert not wanted.matches("anyone", "o-2", EventType.ORDER_PAID)
