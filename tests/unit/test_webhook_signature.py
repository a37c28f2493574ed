"""The webhook signature (payments/signature.py): a genuine, fresh delivery verifies; a
tampered body, another secret, a stale or future timestamp and every malformed header are
refused; the provider's signing (simulators/webhooks.py) is what the receiver checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments.signature import (
    FutureTimestamp,
    MalformedHeader,
    NoMatchingSignature,
    StaleTimestamp,
    load_secrets,
    sign,
    signature,
    verify,
)
from simulators.webhooks import signature_header

SECRET = b"whsec_0123456789abcdef0123456789abcdef"
OTHER = b"whsec_fedcba9876543210fedcba9876543210"
BODY = b'{"id":"evt_1","type":"charge.succeeded","created":1700000000,"data":{"object":{}}}'
NOW = 1_700_000_000
TOLERANCE = 300.0


def check(header: str | None, body: bytes = BODY, *, now: float = NOW) -> int:
    return verify(header, body, [SECRET], now=now, tolerance_s=TOLERANCE)


def test_a_genuine_fresh_delivery_verifies_and_gives_its_timestamp() -> None:
    assert check(sign(SECRET, BODY, NOW - 10)) == NOW - 10


def test_the_providers_signature_is_what_the_receiver_checks() -> None:
    assert check(signature_header(SECRET, BODY, NOW)) == NOW


def test_a_tampered_body_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)
    with pytest.raises(NoMatchingSignature):
        check(header, BODY.replace(b"evt_1", b"evt_2"))


def test_a_body_with_a_byte_added_is_refused() -> None:
    with pytest.raises(NoMatchingSignature):
        check(sign(SECRET, BODY, NOW), BODY + b" ")


def test_a_signature_under_another_secret_is_refused() -> None:
    with pytest.raises(NoMatchingSignature):
        check(sign(OTHER, BODY, NOW))


def test_a_timestamp_changed_after_signing_is_refused() -> None:
    mac = signature(SECRET, NOW, BODY)
    with pytest.raises(NoMatchingSignature):
        check(f"t={NOW - 1},v1={mac}")


def test_a_stale_timestamp_is_refused() -> None:
    with pytest.raises(StaleTimestamp):
        check(sign(SECRET, BODY, NOW - 301))
    assert check(sign(SECRET, BODY, NOW - 300)) == NOW - 300


def test_a_future_timestamp_is_refused() -> None:
    with pytest.raises(FutureTimestamp):
        check(sign(SECRET, BODY, NOW + 301))
    assert check(sign(SECRET, BODY, NOW + 300)) == NOW + 300


def test_a_stale_forgery_is_refused_for_its_signature_first() -> None:
    with pytest.raises(NoMatchingSignature):
        check(sign(OTHER, BODY, NOW - 3600))


GOOD_MAC = signature(SECRET, NOW, BODY)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"v1={GOOD_MAC}",  # no timestamp
        f"t={NOW}",  # no signature
        f"t={NOW},t={NOW},v1={GOOD_MAC}",  # two timestamps
        f"t=-{NOW},v1={GOOD_MAC}",
        f"t={NOW}.5,v1={GOOD_MAC}",
        f"t=1{NOW}00000,v1={GOOD_MAC}",  # more than 12 digits
        f"t={NOW},v1={GOOD_MAC.upper()}",
        f"t={NOW},v1={GOOD_MAC[:-1]}",
        f"t={NOW},v1={GOOD_MAC}00",
        f"t={NOW},v1",
        f"t={NOW},v0={GOOD_MAC}",  # only a scheme it does not know
        f"t={NOW}," + ",".join([f"v1={GOOD_MAC}"] * 5),  # more signatures than a rotation
        f"t={NOW},v1={GOOD_MAC}," + "x=" + "y" * 1024,  # longer than any header
    ],
)
def test_a_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(MalformedHeader):
        check(header)


def test_other_schemes_beside_v1_are_ignored() -> None:
    assert check(f"t={NOW},v0=abc,v1={GOOD_MAC}") == NOW


def test_one_matching_signature_among_several_verifies() -> None:
    stale = signature(OTHER, NOW, BODY)
    assert check(f"t={NOW},v1={stale},v1={GOOD_MAC}") == NOW


def test_during_a_rotation_either_secret_verifies() -> None:
    for secret in (SECRET, OTHER):
        header = sign(secret, BODY, NOW)
        assert verify(header, BODY, [SECRET, OTHER], now=NOW, tolerance_s=TOLERANCE) == NOW


@given(st.binary(min_size=1, max_size=300), st.data())
def test_changing_any_byte_of_any_body_breaks_its_signature(
    body: bytes, data: st.DataObject
) -> None:
    header = sign(SECRET, body, NOW)
    assert check(header, body) == NOW
    at = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:at] + bytes([body[at] ^ flip]) + body[at + 1 :]
    with pytest.raises(NoMatchingSignature):
        check(header, tampered)


def test_secrets_are_read_one_a_line_and_short_ones_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"{SECRET.decode()}\n\n  {OTHER.decode()}  \n")
    assert load_secrets(path) == (SECRET, OTHER)
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="no webhook secret"):
        load_secrets(path)
    path.write_text("short\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        load_secrets(path)
