"""The stable SKU-to-shard mapping.

CRC-32 of the UTF-8 SKU modulo the shard count: it is the same in every process,
language and release, so shards can later be spread over several database servers.
"""

from __future__ import annotations

import zlib


def shard_of(sku: str, shard_count: int) -> int:
    """Return the shard (0..shard_count-1) that holds `sku`."""
    return zlib.crc32(sku.encode()) % shard_count
