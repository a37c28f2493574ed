"""The stable SKU-to-shard mapping in server.domain.sharding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.sharding import shard_of


# Expected values are CRC-32 of the UTF-8 SKU modulo the shard count, computed once and
# written down: a change here would move stored stock to a different shard.
@pytest.mark.parametrize(
    ("sku", "shard_count", "expected"),
    [
        ("a", 16, 3),
        ("a", 1024, 579),
        ("SKU-1", 16, 4),
        ("SKU-1", 8, 4),
        ("SKU-1", 1024, 948),
        ("SKU-2", 16, 14),
        ("SKU-2", 8, 6),
        ("apple", 16, 0),
        ("WIDGET-0042", 16, 2),
        ("WIDGET-0042", 1024, 18),
        ("Z9:red/xl", 16, 15),
        ("Z9:red/xl", 8, 7),
        ("é-unicode", 16, 10),
        ("é-unicode", 1024, 506),
    ],
)
def test_known_skus_keep_their_shard(sku: str, shard_count: int, expected: int) -> None:
    assert shard_of(sku, shard_count) == expected


def test_a_single_shard_holds_everything() -> None:
    assert {shard_of(sku, 1) for sku in ["a", "SKU-1", "é-unicode", ""]} == {0}


@given(st.text(max_size=80), st.integers(min_value=1, max_value=1024))
def test_shard_is_within_range(sku: str, shard_count: int) -> None:
    assert 0 <= shard_of(sku, shard_count) < shard_count


@given(st.text(max_size=80), st.integers(min_value=1, max_value=1024))
def test_shard_is_the_same_on_every_call(sku: str, shard_count: int) -> None:
    assert shard_of(sku, shard_count) == shard_of(sku, shard_count)


@given(st.text(max_size=80), st.integers(min_value=1, max_value=32))
def test_doubling_the_shard_count_splits_each_shard_in_two(sku: str, shard_count: int) -> None:
    assert shard_of(sku, 2 * shard_count) % shard_count == shard_of(sku, shard_count)


def test_many_skus_spread_over_every_shard() -> None:
    counts = [0] * 16
    for i in range(4_000):
        counts[shard_of(f"SKU-{i}", 16)] += 1

    assert min(counts) > 4_000 / 16 / 2
