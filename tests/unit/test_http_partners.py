"""How fulfilment/http_partners.py builds a partner's URL: each id is one percent-encoded
path segment (or query value) that no normalising step downstream can split, collapse
or decode into something else."""

from __future__ import annotations

import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from runtime.partner_http import partner_url

BASE = yarl.URL("http://127.0.0.1:58080")

TRICKY = [
    "a/b",
    "x/../victim",
    "../victim",
    "victim/..",
    "a//b",
    "/victim",
    "%2F",
    "x%2F..%2Fvictim",
    "%2e%2e",
    "a?b=c",
    "a#b",
    "a&b=c",
    "a;b",
    "a b",
    "ordér",
    "...",
    "x" * 128,
    "shop.eu/2024:07/" + "x" * 112,
]


def parsed_by_a_server(url: yarl.URL) -> yarl.URL:
    """The URL as a server reads it off the request line: parsed again, normalised."""
    return yarl.URL(str(url))


@pytest.mark.parametrize("order_id", TRICKY)
def test_an_id_is_one_path_segment_that_reads_back_exactly(order_id: str) -> None:
    url = partner_url(BASE, ("v1", "handoffs", order_id, "cancel"))

    seen = parsed_by_a_server(url)
    assert seen.parts == ("/", "v1", "handoffs", order_id, "cancel")
    assert seen.query_string == "" and seen.fragment == ""


@given(st.text(min_size=1).filter(lambda s: s not in {".", ".."}))
def test_any_text_but_a_dot_segment_is_one_path_segment(segment: str) -> None:
    url = partner_url(BASE, ("v1", "bookings", segment, "void"))

    assert parsed_by_a_server(url).parts == ("/", "v1", "bookings", segment, "void")


@pytest.mark.parametrize("segment", ["", ".", ".."])
def test_a_segment_that_names_nothing_is_refused(segment: str) -> None:
    with pytest.raises(ValueError, match="path segment"):
        partner_url(BASE, ("v1", "handoffs", segment, "cancel"))


def test_query_values_are_encoded_and_read_back_exactly() -> None:
    query = {"order_id": "x/../victim?a=1&b=2#frag", "key": "%2F 100%", "plain": "a.b"}

    url = partner_url(BASE, ("v1", "tracking"), query)

    seen = parsed_by_a_server(url)
    assert dict(seen.query) == query
    assert seen.path == "/v1/tracking" and seen.fragment == ""


def test_the_base_urls_own_path_is_kept() -> None:
    url = partner_url(yarl.URL("https://partner.example/api/v2/"), ("handoffs", "a/b"))

    assert str(url) == "https://partner.example/api/v2/handoffs/a%2Fb"
