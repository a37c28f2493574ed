"""Who a health watch is counted against: the peer's address, as gRPC names it."""

from __future__ import annotations

import pytest

from server.rpc.health import peer_address


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:60958", "127.0.0.1"),
        ("ipv4:10.0.0.7:1", "10.0.0.7"),
        ("ipv6:%5B::1%5D:46270", "::/64"),
        ("ipv6:[2001:db8:1:2:aaaa::7]:52100", "2001:db8:1:2::/64"),
        ("ipv6:%5B::ffff:192.0.2.9%5D:443", "192.0.2.9"),
        ("unix:/run/stockcore.sock", "unix:/run/stockcore.sock"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address:1"),
    ],
)
def test_a_peer_counts_as_its_address_without_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_connections_of_one_host_count_together_and_other_hosts_apart() -> None:
    assert peer_address("ipv4:10.0.0.7:5000") == peer_address("ipv4:10.0.0.7:5001")
    assert peer_address("ipv6:%5B2001:db8::1%5D:1") == peer_address("ipv6:%5B2001:db8::2%5D:2")
    assert peer_address("ipv4:10.0.0.7:5000") != peer_address("ipv4:10.0.0.8:5000")
