"""The raw call log: written by each load process, pooled and summarised by the report."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from loadtests.calls import Calls, read_tallies
from loadtests.locust.calllog import CallLog
from loadtests.locust.interceptor import GrpcStatusError


def _calls() -> Calls:
    return Calls(
        ends=[10.0, 10.5, 11.2, 12.0, 12.9],
        names=["A", "A", "B", "A", "B"],
        latencies_ms=[1.0, 3.0, 10.0, 2.0, 20.0],
        codes=["OK", "OK", "UNAVAILABLE", "OK", "OK"],
    )


def test_select_by_name_window_and_status() -> None:
    calls = _calls()

    assert len(calls.select(["A"])) == 3
    assert len(calls.select(start=10.5, end=12.0)) == 2
    assert calls.select(["B"], ok_only=True).latencies_ms.tolist() == [20.0]


def test_latency_is_exact_over_the_selection() -> None:
    lat = _calls().select(["A"]).latency(window_s=2.0)

    assert lat.count == 3
    assert lat.per_s == pytest.approx(1.5)
    assert lat.mean_ms == pytest.approx(2.0)
    assert lat.p50_ms == pytest.approx(2.0)
    assert lat.max_ms == 3.0


def test_latency_of_nothing_is_nan() -> None:
    lat = Calls().latency(window_s=1.0)

    assert lat.count == 0
    assert math.isnan(lat.p99_ms)


def test_per_second_bins_from_the_start() -> None:
    assert _calls().per_second(10.0, 13.0) == [(0.0, 2), (1.0, 1), (2.0, 2)]


def test_columns_must_agree() -> None:
    with pytest.raises(ValueError):
        Calls(ends=[1.0], names=[], latencies_ms=[1.0], codes=["OK"])


def test_call_log_round_trip_through_its_files(tmp_path: Path) -> None:
    log = CallLog()
    log.on_request(name="A", response_time=4.0, context={"code": "OK"}, start_time=100.0)
    log.on_request(
        name="A",
        response_time=6.0,
        exception=GrpcStatusError.__new__(GrpcStatusError),
        context={"code": "DEADLINE_EXCEEDED"},
        start_time=101.0,
    )
    log.on_request(name="flow checkout", response_time=8.0, exception=None, start_time=102.0)
    log.write(tmp_path, Counter({"units_paid": 3}))
    log.write(tmp_path / "other", Counter())

    calls = Calls.read(tmp_path)

    assert calls.ends.tolist() == pytest.approx([100.004, 101.006, 102.008])
    assert calls.codes == ["OK", "DEADLINE_EXCEEDED", "OK"]
    assert calls.names == ["A", "A", "flow checkout"]
    assert read_tallies(tmp_path) == Counter({"units_paid": 3})
