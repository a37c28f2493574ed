"""The load tools' command lines: a number out of range is argparse's usage error (exit 2,
naming the option) before anything starts, and the defaults still parse."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import pytest

from loadtests import bench, chaos, fanout, knee, outage, overload, scale, scenarios
from loadtests.arguments import (
    caller_counts,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    share,
)

Parse = Callable[[Sequence[str]], argparse.Namespace]


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (positive_int, "1", 1),
        (positive_int, "128", 128),
        (non_negative_int, "0", 0),
        (positive_float, "0.5", 0.5),
        (non_negative_float, "0", 0.0),
        (share, "0", 0.0),
        (share, "1", 1.0),
        (caller_counts, "16,64,128", [16, 64, 128]),
        (caller_counts, "8", [8]),
    ],
)
def test_a_value_in_range_is_parsed(
    kind: Callable[[str], object], text: str, value: object
) -> None:
    assert kind(text) == value


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (positive_int, "0"),
        (positive_int, "-3"),
        (positive_int, "1.5"),
        (positive_int, "many"),
        (non_negative_int, "-1"),
        (positive_float, "0"),
        (positive_float, "-0.1"),
        (positive_float, "nan"),
        (positive_float, "inf"),
        (non_negative_float, "-1"),
        (share, "1.01"),
        (share, "-0.01"),
        (caller_counts, ""),
        (caller_counts, "16,0"),
        (caller_counts, "16,,64"),
        (caller_counts, "16;64"),
    ],
)
def test_a_value_out_of_range_is_refused_with_the_value_named(
    kind: Callable[[str], object], text: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
        kind(text)


def _day(argv: Sequence[str]) -> argparse.Namespace:
    return scenarios.parse_args(["day", *argv])


def _soak(argv: Sequence[str]) -> argparse.Namespace:
    return scenarios.parse_args(["soak", *argv])


def _flash(argv: Sequence[str]) -> argparse.Namespace:
    return scenarios.parse_args(["flash", *argv])


@pytest.mark.parametrize(
    ("parse", "argv", "named"),
    [
        (bench.parse_args, ["--security-rounds", "0"], "--security-rounds"),
        (bench.parse_args, ["--levels", "16,0"], "--levels"),
        (bench.parse_args, ["--duration", "0"], "--duration"),
        (bench.parse_args, ["--sale-units", "0"], "--sale-units"),
        (bench.parse_args, ["--sale-buyers", "0"], "--sale-buyers"),
        (bench.parse_args, ["--sale-seconds", "-5"], "--sale-seconds"),
        (knee.parse_args, ["--levels", "sixteen"], "--levels"),
        (knee.parse_args, ["--duration", "0"], "--duration"),
        (knee.parse_args, ["--catalogue", "0"], "--catalogue"),
        (knee.parse_args, ["--levels", "1,16", "--processes", "2"], "--processes"),
        (_day, ["--duration", "0"], "--duration"),
        (_day, ["--scale", "0"], "--scale"),
        (_day, ["--pacing", "0"], "--pacing"),
        (_day, ["--processes", "0"], "--processes"),
        (_day, ["--duration", "30", "--peak-hold", "30"], "--peak-hold"),
        (_soak, ["--duration", "0"], "--duration"),
        (_soak, ["--report-window", "0"], "--report-window"),
        (_soak, ["--tolerance", "-1"], "--tolerance"),
        (_soak, ["--rest-of-day", "0"], "--rest-of-day"),
        (_soak, ["--duration", "50", "--report-window", "30"], "--report-window"),
        (_flash, ["--users", "0"], "--users"),
        (_flash, ["--stock", "0"], "--stock"),
        (_flash, ["--abandon-share", "2"], "--abandon-share"),
        (_flash, ["--max-duration", "0"], "--max-duration"),
        (_flash, ["--payment-window", "0"], "--payment-window"),
        (overload.parse_args, ["--callers", "0"], "--callers"),
        (overload.parse_args, ["--deadline", "0"], "--deadline"),
        (overload.parse_args, ["--before", "0.5"], "--before"),
        (overload.parse_args, ["--overload", "0"], "--overload"),
        (overload.parse_args, ["--max-in-flight", "-1"], "--max-in-flight"),
        (fanout.parse_args, ["--customers", "0"], "--customers"),
        (fanout.parse_args, ["--orders-per-s", "0"], "--orders-per-s"),
        (fanout.parse_args, ["--streams", "-1"], "--streams"),
        (fanout.parse_args, ["--duration", "0"], "--duration"),
        (outage.parse_args, ["--duration", "0"], "--duration"),
        (outage.parse_args, ["--workers", "0"], "--workers"),
        (outage.parse_args, ["--duration", "30", "--outage-at", "30"], "--outage-at"),
        (scale.parse_args, ["--skus", "0"], "--skus"),
        (scale.parse_args, ["--processes", "0"], "--processes"),
        (scale.parse_args, ["--callers", "0"], "--callers"),
        (scale.parse_args, ["--duration", "0"], "--duration"),
        (chaos.parse_args, ["--gap", "0"], "--gap"),
        (chaos.parse_args, ["--skus", "0"], "--skus"),
        (chaos.parse_args, ["--duration", "-1"], "--duration"),
        (chaos.parse_args, ["--budget", "0"], "--budget"),
        (chaos.parse_args, ["--faults", "kill-everything"], "--faults"),
    ],
)
def test_a_bad_number_is_a_usage_error_naming_its_option(
    parse: Parse, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error
    assert named in error.splitlines()[-1]


def test_the_defaults_still_parse() -> None:
    assert bench.parse_args([]).levels == [16, 64, 128]
    assert bench.parse_args([]).security_rounds == 3
    assert knee.parse_args([]).levels == [16, 32, 64, 128, 256]
    assert _day([]).duration == 240.0
    assert _day([]).peak_hold == 60.0
    assert _flash([]).users == 2000
    assert (_soak([]).peak_hold, _soak([]).report_window, _soak([]).tolerance) == (1800, 300, 10)
    assert overload.parse_args([]).overload == 120.0
    assert fanout.parse_args([]).streams == 500
    assert outage.parse_args([]).outage_at == 60.0
    assert scale.parse_args([]).skus == 1_000_000
    assert chaos.parse_args([]).seed is None


def test_the_soak_is_the_day_with_its_plateau_held_for_its_duration() -> None:
    args = _soak(["--duration", "3600", "--rest-of-day", "120", "--report-window", "600"])

    assert args.run is scenarios.day
    assert (args.peak_hold, args.duration) == (3600, 3720)
    assert not args.compare
