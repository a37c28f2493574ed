"""Request validation and the reservation life cycle in server.domain.inventory."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import FieldViolation, IllegalTransition, InvalidArgument
from server.domain.inventory import (
    _ACCEPTED_AFTER,
    MAX_ADJUSTMENT,
    MAX_LINES,
    MAX_QUANTITY,
    MAX_REASON,
    MAX_SKUS_PER_READ,
    AdjustCommand,
    Finish,
    Line,
    ReservationStatus,
    ReserveCommand,
    adjust_command,
    check_finish,
    distinct_skus,
    merge_lines,
    reserve_command,
)

DEFAULT_TTL_S = 300.0
MIN_TTL_S = 1.0
MAX_TTL_S = 86_400.0


def reserve(
    lines: Sequence[tuple[str, int]],
    *,
    reservation_id: str = "order-1",
    ttl_s: float | None = None,
    caller: str = "checkout",
) -> ReserveCommand:
    return reserve_command(
        reservation_id,
        lines,
        ttl_s,
        caller,
        default_ttl_s=DEFAULT_TTL_S,
        min_ttl_s=MIN_TTL_S,
        max_ttl_s=MAX_TTL_S,
    )


def reserve_violations(
    lines: Sequence[tuple[str, int]], *, reservation_id: str = "order-1", ttl_s: float | None = None
) -> tuple[FieldViolation, ...]:
    with pytest.raises(InvalidArgument) as caught:
        reserve(lines, reservation_id=reservation_id, ttl_s=ttl_s)
    return caught.value.violations


def fields(violations: Sequence[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


def adjust(
    *,
    sku: str = "SKU-1",
    delta: int | None = None,
    on_hand: int | None = None,
    reason: str = "cycle count",
    key: str = "adj-1",
) -> AdjustCommand:
    return adjust_command(sku, delta, on_hand, reason, key, "warehouse")


def adjust_violations(**kwargs: object) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        adjust(**kwargs)  # type: ignore[arg-type]
    return fields(caught.value.violations)


# --- reserve_command -------------------------------------------------------------------


def test_valid_request_becomes_a_command_with_merged_sorted_lines() -> None:
    command = reserve([("B-2", 3), ("A-1", 1), ("B-2", 4)], ttl_s=60)

    assert command == ReserveCommand(
        "order-1", (Line("A-1", 1), Line("B-2", 7)), 60_000, "checkout"
    )


def test_every_violation_is_reported_at_once() -> None:
    violations = reserve_violations(
        [("-bad", 1), ("GOOD", 0)], reservation_id="has space", ttl_s=0.5
    )

    assert fields(violations) == ["reservation_id", "lines[0].sku", "lines[1].quantity", "ttl"]


def test_every_violation_is_in_the_error_message() -> None:
    with pytest.raises(InvalidArgument) as caught:
        reserve([("ok", -1)], reservation_id="", ttl_s=MAX_TTL_S + 1)

    message = str(caught.value)
    assert "reservation_id: must not be empty" in message
    assert "lines[0].quantity" in message
    assert "ttl" in message


def test_empty_line_list_is_rejected() -> None:
    violations = reserve_violations([])

    assert violations == (FieldViolation("lines", "must hold at least one line"),)


def test_line_list_may_hold_the_maximum_number_of_lines() -> None:
    command = reserve([(f"SKU-{i:03d}", 1) for i in range(MAX_LINES)])

    assert len(command.lines) == MAX_LINES


def test_line_list_longer_than_the_maximum_is_rejected() -> None:
    violations = reserve_violations([(f"SKU-{i:03d}", 1) for i in range(MAX_LINES + 1)])

    assert fields(violations) == ["lines"]
    assert f"at most {MAX_LINES} lines, got {MAX_LINES + 1}" in violations[0].description


@pytest.mark.parametrize("quantity", [0, -1, -MAX_QUANTITY, MAX_QUANTITY + 1, 10**18])
def test_quantity_outside_one_to_max_is_rejected(quantity: int) -> None:
    violations = reserve_violations([("SKU-1", quantity)])

    assert fields(violations)[0] == "lines[0].quantity"
    assert f"got {quantity}" in violations[0].description


@pytest.mark.parametrize("quantity", [1, MAX_QUANTITY])
def test_quantity_at_the_bounds_is_accepted(quantity: int) -> None:
    assert reserve([("SKU-1", quantity)]).lines == (Line("SKU-1", quantity),)


def test_duplicate_skus_are_summed() -> None:
    command = reserve([("A", 2), ("B", 1), ("A", 3), ("A", 5)])

    assert command.lines == (Line("A", 10), Line("B", 1))


def test_duplicates_summing_to_exactly_the_maximum_are_accepted() -> None:
    command = reserve([("A", MAX_QUANTITY - 1), ("A", 1)])

    assert command.lines == (Line("A", MAX_QUANTITY),)


def test_duplicates_summing_past_the_maximum_are_rejected() -> None:
    violations = reserve_violations([("A", 600_000), ("B", 1), ("A", 400_001)])

    assert violations == (FieldViolation("lines", f"A totals 1000001, more than {MAX_QUANTITY}"),)


@pytest.mark.parametrize(
    "sku",
    [
        pytest.param("é1", id="unicode-letter"),
        pytest.param("SKU-é", id="unicode-later"),
        pytest.param("١٢٣", id="non-ascii-digits"),
        pytest.param("\uff211", id="fullwidth-letter"),
        pytest.param("SKU 1", id="inner-space"),
        pytest.param(" SKU1", id="leading-space"),
        pytest.param("SKU1 ", id="trailing-space"),
        pytest.param("SKU1\n", id="trailing-newline"),
        pytest.param("-SKU", id="leading-dash"),
        pytest.param(".SKU", id="leading-dot"),
        pytest.param(":SKU", id="leading-colon"),
        pytest.param("/SKU", id="leading-slash"),
        pytest.param("_SKU", id="leading-underscore"),
        pytest.param("SKU|1", id="pipe"),
        pytest.param("SKU=1", id="equals"),
        pytest.param("A" * 65, id="65-chars"),
    ],
)
def test_malformed_sku_is_rejected(sku: str) -> None:
    violations = reserve_violations([("GOOD", 1), (sku, 1)])

    assert fields(violations) == ["lines[1].sku"]
    assert "[A-Za-z0-9._:/-]" in violations[0].description


def test_empty_sku_is_rejected_as_empty() -> None:
    violations = reserve_violations([("", 1)])

    assert violations == (FieldViolation("lines[0].sku", "must not be empty"),)


@pytest.mark.parametrize("sku", ["a", "7", "A" * 64, "Z9.red:xl/v-2", "SKU_1", "0-._:/"])
def test_well_formed_sku_is_accepted(sku: str) -> None:
    assert reserve([(sku, 1)]).lines == (Line(sku, 1),)


@pytest.mark.parametrize(
    "reservation_id", ["x", "X" * 128, "order:2024/07-01.a", "-leading-ok", "_under_score"]
)
def test_well_formed_reservation_id_is_accepted(reservation_id: str) -> None:
    assert reserve([("A", 1)], reservation_id=reservation_id).reservation_id == reservation_id


@pytest.mark.parametrize(
    ("reservation_id", "description"),
    [
        ("", "must not be empty"),
        ("X" * 129, "must be 1-128 characters of [A-Za-z0-9._:/-]"),
        ("order 1", "must be 1-128 characters of [A-Za-z0-9._:/-]"),
        ("ordér", "must be 1-128 characters of [A-Za-z0-9._:/-]"),
        ("order#1", "must be 1-128 characters of [A-Za-z0-9._:/-]"),
    ],
)
def test_malformed_reservation_id_is_rejected(reservation_id: str, description: str) -> None:
    violations = reserve_violations([("A", 1)], reservation_id=reservation_id)

    assert violations == (FieldViolation("reservation_id", description),)


SEGMENTS = "must not start or end with '/', hold '//', or have a '.' or '..' segment"


@pytest.mark.parametrize(
    "reservation_id",
    [".", "..", "x/../victim", "x/./victim", "../victim", "victim/..", "a//b", "/a", "a/", "/"],
)
def test_an_id_with_an_empty_or_dot_segment_is_rejected(reservation_id: str) -> None:
    # Ids travel as one path segment of partners' URLs; these would collapse into another.
    violations = reserve_violations([("A", 1)], reservation_id=reservation_id)

    assert violations == (FieldViolation("reservation_id", SEGMENTS),)


@pytest.mark.parametrize(
    "reservation_id",
    [
        "a/b",
        "shop/eu/order-1",
        "...",
        "a/.../b",
        ".hidden",
        "v1.",
        "a/.b/c.",
        "x" * 63 + "/" + "y" * 64,
    ],
)
def test_an_id_whose_segments_are_all_named_is_accepted(reservation_id: str) -> None:
    assert reserve([("A", 1)], reservation_id=reservation_id).reservation_id == reservation_id


def test_missing_ttl_takes_the_default() -> None:
    assert reserve([("A", 1)], ttl_s=None).ttl_ms == round(DEFAULT_TTL_S * 1000)


@pytest.mark.parametrize(
    ("ttl_s", "expected_ms"),
    [(MIN_TTL_S, 1_000), (MAX_TTL_S, 86_400_000), (2.5, 2_500), (1.0004, 1_000)],
)
def test_ttl_within_bounds_is_kept_in_milliseconds(ttl_s: float, expected_ms: int) -> None:
    assert reserve([("A", 1)], ttl_s=ttl_s).ttl_ms == expected_ms


@pytest.mark.parametrize(
    "ttl_s", [0.0, -1.0, 0.999, MAX_TTL_S + 0.001, math.inf, -math.inf, math.nan]
)
def test_ttl_outside_bounds_is_rejected(ttl_s: float) -> None:
    violations = reserve_violations([("A", 1)], ttl_s=ttl_s)

    assert fields(violations) == ["ttl"]
    assert violations[0].description.startswith("must be 1 s to 86400 s")


def test_caller_is_carried_into_the_command() -> None:
    assert reserve([("A", 1)], caller="svc-orders").caller == "svc-orders"


# --- merge_lines -----------------------------------------------------------------------

SKUS = st.sampled_from(["A", "B", "C-1", "c-1", "Z9", "a.b", "0"])
RAW_LINES = st.lists(
    st.tuples(SKUS, st.integers(min_value=1, max_value=MAX_QUANTITY // MAX_LINES)),
    min_size=1,
    max_size=MAX_LINES,
)


@given(RAW_LINES)
def test_merged_totals_equal_the_per_sku_sums_of_the_input(raw: list[tuple[str, int]]) -> None:
    expected: Counter[str] = Counter()
    for sku, quantity in raw:
        expected[sku] += quantity

    merged = merge_lines(raw)

    assert {line.sku: line.quantity for line in merged} == dict(expected)


@given(RAW_LINES)
def test_merged_lines_are_sorted_without_duplicates(raw: list[tuple[str, int]]) -> None:
    skus = [line.sku for line in merge_lines(raw)]

    assert skus == sorted(set(skus))


@given(RAW_LINES, st.randoms(use_true_random=False))
def test_merging_ignores_line_order(raw: list[tuple[str, int]], rng: random.Random) -> None:
    shuffled = list(raw)
    rng.shuffle(shuffled)

    assert merge_lines(shuffled) == merge_lines(raw)


def test_merge_violations_are_named_after_the_given_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        merge_lines([("A", 0)], field="items")

    assert fields(caught.value.violations) == ["items[0].quantity"]


# --- fingerprints ----------------------------------------------------------------------


@given(RAW_LINES, st.randoms(use_true_random=False))
def test_same_content_in_any_line_order_has_the_same_fingerprint(
    raw: list[tuple[str, int]], rng: random.Random
) -> None:
    shuffled = list(raw)
    rng.shuffle(shuffled)

    assert reserve(shuffled, ttl_s=30).fingerprint == reserve(raw, ttl_s=30).fingerprint


def test_split_and_summed_duplicates_have_the_same_fingerprint() -> None:
    assert reserve([("A", 2), ("A", 3)]).fingerprint == reserve([("A", 5)]).fingerprint


def test_fingerprint_ignores_the_caller() -> None:
    first = reserve([("A", 1)], caller="svc-a")
    second = reserve([("A", 1)], caller="svc-b")

    assert first.fingerprint == second.fingerprint


def test_different_ttl_gives_a_different_fingerprint() -> None:
    assert reserve([("A", 1)], ttl_s=30).fingerprint != reserve([("A", 1)], ttl_s=31).fingerprint


def test_default_ttl_and_the_same_explicit_ttl_share_a_fingerprint() -> None:
    explicit = reserve([("A", 1)], ttl_s=DEFAULT_TTL_S)

    assert reserve([("A", 1)], ttl_s=None).fingerprint == explicit.fingerprint


def test_different_quantity_gives_a_different_fingerprint() -> None:
    assert reserve([("A", 1)]).fingerprint != reserve([("A", 2)]).fingerprint


def test_different_sku_gives_a_different_fingerprint() -> None:
    assert reserve([("A", 1)]).fingerprint != reserve([("B", 1)]).fingerprint


def test_extra_line_gives_a_different_fingerprint() -> None:
    assert reserve([("A", 1)]).fingerprint != reserve([("A", 1), ("B", 1)]).fingerprint


def test_fingerprint_is_sixteen_bytes() -> None:
    assert len(reserve([("A", 1)]).fingerprint) == 16
    assert len(adjust(delta=1).fingerprint) == 16


def test_adjustment_fingerprint_tells_delta_from_absolute_level() -> None:
    assert adjust(delta=5).fingerprint != adjust(on_hand=5).fingerprint


def test_adjustment_fingerprint_covers_the_reason_but_not_the_key() -> None:
    assert adjust(delta=5, key="k1").fingerprint == adjust(delta=5, key="k2").fingerprint
    assert adjust(delta=5, reason="a").fingerprint != adjust(delta=5, reason="b").fingerprint


# --- adjust_command --------------------------------------------------------------------


def test_valid_delta_adjustment_becomes_a_command() -> None:
    command = adjust(delta=-3)

    assert command == AdjustCommand("SKU-1", -3, None, "cycle count", "adj-1", "warehouse")


def test_valid_absolute_adjustment_becomes_a_command() -> None:
    command = adjust(on_hand=0)

    assert (command.delta, command.on_hand) == (None, 0)


def test_adjustment_without_delta_or_on_hand_is_rejected() -> None:
    assert adjust_violations() == ["change"]


def test_adjustment_with_both_delta_and_on_hand_is_rejected() -> None:
    assert adjust_violations(delta=1, on_hand=1) == ["change"]


def test_zero_delta_is_rejected() -> None:
    assert adjust_violations(delta=0) == ["delta"]


@pytest.mark.parametrize("delta", [1, -1, MAX_ADJUSTMENT, -MAX_ADJUSTMENT])
def test_delta_within_bounds_is_accepted(delta: int) -> None:
    assert adjust(delta=delta).delta == delta


@pytest.mark.parametrize("delta", [MAX_ADJUSTMENT + 1, -MAX_ADJUSTMENT - 1])
def test_delta_beyond_the_maximum_is_rejected(delta: int) -> None:
    assert adjust_violations(delta=delta) == ["delta"]


@pytest.mark.parametrize("on_hand", [0, MAX_ADJUSTMENT])
def test_on_hand_within_bounds_is_accepted(on_hand: int) -> None:
    assert adjust(on_hand=on_hand).on_hand == on_hand


@pytest.mark.parametrize("on_hand", [-1, MAX_ADJUSTMENT + 1])
def test_on_hand_outside_bounds_is_rejected(on_hand: int) -> None:
    assert adjust_violations(on_hand=on_hand) == ["on_hand"]


@pytest.mark.parametrize("reason", ["", "   ", "\t\n", "r" * (MAX_REASON + 1)])
def test_blank_or_overlong_reason_is_rejected(reason: str) -> None:
    assert adjust_violations(delta=1, reason=reason) == ["reason"]


def test_reason_of_the_maximum_length_is_accepted() -> None:
    assert adjust(delta=1, reason="r" * MAX_REASON).reason == "r" * MAX_REASON


def test_every_adjustment_violation_is_reported_at_once() -> None:
    violations = adjust_violations(sku=".bad", key="", delta=0, reason="")

    assert violations == ["sku", "idempotency_key", "delta", "reason"]


# --- distinct_skus ---------------------------------------------------------------------


def test_distinct_skus_keep_first_seen_order() -> None:
    assert distinct_skus(["C", "A", "B"]) == ("C", "A", "B")


def test_duplicate_skus_to_read_are_kept_once() -> None:
    assert distinct_skus(["B", "A", "B", "C", "A"]) == ("B", "A", "C")


def test_distinct_skus_accept_any_iterable() -> None:
    assert distinct_skus(sku for sku in ["A", "A"]) == ("A",)


def test_reading_no_skus_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        distinct_skus([])

    assert fields(caught.value.violations) == ["skus"]


def test_reading_the_maximum_number_of_skus_is_accepted() -> None:
    skus = [f"SKU-{i}" for i in range(MAX_SKUS_PER_READ)]

    assert distinct_skus(skus) == tuple(skus)


def test_reading_more_than_the_maximum_number_of_skus_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        distinct_skus([f"SKU-{i}" for i in range(MAX_SKUS_PER_READ + 1)])

    assert caught.value.violations == (
        FieldViolation("skus", f"must name at most {MAX_SKUS_PER_READ} SKUs"),
    )


def test_malformed_skus_to_read_are_named_by_position() -> None:
    with pytest.raises(InvalidArgument) as caught:
        distinct_skus(["A", "", "b c"], field="wanted")

    assert fields(caught.value.violations) == ["wanted[1]", "wanted[2]"]


@given(st.lists(SKUS, min_size=1, max_size=50))
def test_distinct_skus_are_the_input_without_repeats(skus: list[str]) -> None:
    result = distinct_skus(skus)

    assert len(result) == len(set(result))
    assert set(result) == set(skus)
    assert list(result) == sorted(set(skus), key=skus.index)


# --- check_finish ----------------------------------------------------------------------

ALL_PAIRS = list(itertools.product(Finish, ReservationStatus))


@pytest.mark.parametrize(
    ("finish", "status"),
    [pair for pair in ALL_PAIRS if pair[1] in _ACCEPTED_AFTER[pair[0]]],
    ids=lambda value: value.name,
)
def test_finish_meeting_a_listed_status_is_accepted(
    finish: Finish, status: ReservationStatus
) -> None:
    check_finish("res-1", finish, status)


@pytest.mark.parametrize(
    ("finish", "status"),
    [pair for pair in ALL_PAIRS if pair[1] not in _ACCEPTED_AFTER[pair[0]]],
    ids=lambda value: value.name,
)
def test_finish_meeting_an_unlisted_status_raises_naming_that_status(
    finish: Finish, status: ReservationStatus
) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_finish("res-1", finish, status)

    error = caught.value
    assert error.subject == "res-1"
    assert error.current == status.name
    assert error.wanted == ReservationStatus(finish.value).name
    assert f"it is {status.name}" in str(error)
    assert f"cannot {finish.name.lower()} reservation 'res-1'" in str(error)


def test_every_finish_has_a_row_in_the_life_cycle_table() -> None:
    assert set(_ACCEPTED_AFTER) == set(Finish)


def test_each_finish_accepts_meeting_its_own_outcome() -> None:
    for finish in Finish:
        check_finish("res-1", finish, ReservationStatus(finish.value))


def test_commit_after_release_is_rejected() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_finish("res-1", Finish.COMMIT, ReservationStatus.RELEASED)

    assert caught.value.current == "RELEASED"


def test_commit_after_expiry_says_the_hold_lapsed() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_finish("res-1", Finish.COMMIT, ReservationStatus.EXPIRED)

    assert "lapsed" in str(caught.value)


def test_release_after_commit_is_rejected() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_finish("res-1", Finish.RELEASE, ReservationStatus.COMMITTED)

    assert caught.value.current == "COMMITTED"
    assert "lapsed" not in str(caught.value)


def test_release_after_expiry_is_accepted() -> None:
    check_finish("res-1", Finish.RELEASE, ReservationStatus.EXPIRED)


def test_expiry_accepts_any_finished_reservation() -> None:
    for status in (
        ReservationStatus.COMMITTED,
        ReservationStatus.RELEASED,
        ReservationStatus.EXPIRED,
    ):
        check_finish("res-1", Finish.EXPIRE, status)
