"""What stockctl's groups of commands share: one bounded integer type for their options,
one format for the times they print."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.commands import bounded_int, rfc3339


@given(st.integers(min_value=1, max_value=10_000))
def test_an_integer_within_the_bounds_is_taken(value: int) -> None:
    assert bounded_int(1, 10_000)(str(value)) == value


@pytest.mark.parametrize(
    ("low", "high", "text", "complaint"),
    [
        (1, 10_000, "0", "'0': must be 1-10000"),
        (1, 10_000, "10001", "'10001': must be 1-10000"),
        (0, None, "-1", "'-1': must be at least 0"),
        (None, 9, "10", "'10': must be at most 9"),
        (0, None, "ten", "'ten' is not an integer"),
        (0, None, "1.5", "'1.5' is not an integer"),
        (0, None, "", "'' is not an integer"),
    ],
)
def test_an_integer_outside_the_bounds_is_refused_naming_them(
    low: int | None, high: int | None, text: str, complaint: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        bounded_int(low, high)(text)
    assert str(refused.value) == complaint


def test_an_empty_range_is_a_mistake_in_the_parser() -> None:
    with pytest.raises(ValueError, match="empty range"):
        bounded_int(5, 4)


def test_a_bounded_option_refused_is_a_usage_error_naming_the_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--limit", type=bounded_int(1, 10))
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["--limit", "11"])
    assert raised.value.code == 2
    assert "argument --limit: '11': must be 1-10" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("moment", "printed"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC), "2026-01-02T03:04:05.678Z"),
        (
            datetime(2026, 1, 2, 11, 4, 5, tzinfo=timezone(timedelta(hours=8))),
            "2026-01-02T03:04:05.000Z",
        ),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000Z"),
    ],
)
def test_times_print_as_rfc3339_utc_with_z(moment: datetime, printed: str) -> None:
    assert rfc3339(moment) == printed
    assert datetime.fromisoformat(printed) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000,
        tzinfo=moment.tzinfo or UTC,
    )
