"""Locust's CSV statistics read back, and the figures of a span taken from its history; the
files here have the columns Locust 2.x writes with --csv and --csv-full-history."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtests.locuststats import History, read_failures, read_stats

PERCENTILES = "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    f"Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,{PERCENTILES}"
)
HISTORY_HEADER = (
    f"Timestamp,User Count,Type,Name,Requests/s,Failures/s,{PERCENTILES},Total Request Count,"
    "Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)
CREATE = "OrderService/CreateOrder"


def _history_row(
    at: int, name: str, total: int, failed: int, mean: float, p99: str, p50: str = "5"
) -> str:
    percentiles = ",".join([p50] + ["5"] * 6 + [p99] + ["90"] * 3)
    return f"{at},10,grpc,{name},1.0,0.0,{percentiles},{total},{failed},5,{mean},1,90,0"


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A run's CSV files: CreateOrder every second from t=1000 to t=1030, 10 calls a second
    at 5 ms until t=1010 and 20 a second at 20 ms after, one failure at t=1020; its 10-second
    p50 4 ms until t=1010, then 15 or 16 ms."""
    lines = [HISTORY_HEADER]
    total, total_ms, failed = 0, 0.0, 0
    for at in range(1000, 1031):
        if at > 1000:
            calls, each = (10, 5.0) if at <= 1010 else (20, 20.0)
            total, total_ms = total + calls, total_ms + calls * each
        failed += at == 1020
        p99 = "N/A" if total == 0 else "6" if at <= 1010 else str(30 + at % 3)
        p50 = "N/A" if total == 0 else "4" if at <= 1010 else str(15 + at % 2)
        lines.append(_history_row(at, CREATE, total, failed, total_ms / max(total, 1), p99, p50))
        lines.append(_history_row(at, "Aggregated", total, failed, total_ms / max(total, 1), p99))
    (tmp_path / "locust_stats_history.csv").write_text("\n".join(lines) + "\n")
    stats = [
        STATS_HEADER,
        f"grpc,{CREATE},500,1,10,15.0,1,250,0,16.6,0.03,10,11,12,13,14,15,20,31,40,250,250",
        f"grpc,{CREATE} [FAILED_PRECONDITION],7,0,3,3.5,1,9,0,0.2,0,3,3,3,3,4,5,9,9,9,9,9",
        "grpc,OrderService/GetOrder,0,0,0,0.0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,"
        "N/A,N/A",
        ",Aggregated,507,1,10,14.8,1,250,0,16.8,0.03,10,11,12,13,14,15,20,31,40,250,250",
    ]
    (tmp_path / "locust_stats.csv").write_text("\n".join(stats) + "\n")
    (tmp_path / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        f"grpc,{CREATE},UNAVAILABLE,1,2026-11-26T01:00:00Z,2026-11-26T01:00:00Z\n"
    )
    return tmp_path / "locust"


def test_whole_run_figures_are_read_per_request_name(prefix: Path) -> None:
    stats = read_stats(prefix)

    create = stats[CREATE]
    assert (create.requests, create.failures, create.ok) == (500, 1, 499)
    assert (create.mean_ms, create.p50_ms, create.p99_ms, create.max_ms) == (15.0, 10, 31, 250)
    assert stats[f"{CREATE} [FAILED_PRECONDITION]"].requests == 7
    assert math.isnan(stats["OrderService/GetOrder"].p99_ms)
    assert "Aggregated" in stats


def test_failures_are_read_by_name_and_status_code(prefix: Path) -> None:
    [failure] = read_failures(prefix)

    assert (failure.name, failure.error, failure.occurrences) == (CREATE, "UNAVAILABLE", 1)


def test_a_span_counts_and_averages_exactly_from_the_cumulative_columns(prefix: Path) -> None:
    span = History.read(prefix).span(CREATE, 1010, 1030)

    assert span.seconds == 20
    assert span.calls == 20 * 20
    assert span.ok == 20 * 20 - 1
    assert span.ok_per_s == pytest.approx(399 / 20)
    assert span.mean_ms == pytest.approx(20.0)


def test_a_spans_p99_is_the_median_of_the_10_second_p99s_wholly_inside_it(prefix: Path) -> None:
    span = History.read(prefix).span(CREATE, 1010, 1030)

    # Rows 1020..1030 have windows inside the span: 30 + at % 3 -> 30, 31 or 32.
    assert span.p99_ms == 31
    assert span.worst_p99_ms == 32


def test_a_spans_p50_is_the_median_of_the_10_second_p50s_wholly_inside_it(prefix: Path) -> None:
    history = History.read(prefix)

    # Rows 1015..1025 have windows inside the span: 15 + at % 2, six 16s and five 15s.
    assert history.span(CREATE, 1005, 1025).p50_ms == 16
    # Rows 1020..1030: six 15s and five 16s.
    assert history.span(CREATE, 1010, 1030).p50_ms == 15


def test_a_span_shorter_than_the_window_uses_every_row_within_it(prefix: Path) -> None:
    span = History.read(prefix).span(CREATE, 1000, 1005)

    assert span.calls == 50
    assert span.p99_ms == 6
    assert span.p50_ms == 4


def test_a_span_from_before_the_first_row_counts_from_nothing(prefix: Path) -> None:
    span = History.read(prefix).span(CREATE, 990, 1005)

    assert span.calls == 50
    assert span.mean_ms == pytest.approx(5.0)


def test_a_name_without_rows_spans_no_calls(prefix: Path) -> None:
    span = History.read(prefix).span("OrderService/GetOrder", 1000, 1030)

    assert span.calls == 0
    assert math.isnan(span.mean_ms) and math.isnan(span.p99_ms)


def test_rates_are_the_calls_that_did_not_fail_between_rows(prefix: Path) -> None:
    history = History.read(prefix)

    rates = dict(history.rates([CREATE], 1000, 1030))

    assert rates[1.0] == 10.0
    assert rates[11.0] == 20.0
    assert rates[20.0] == 19.0  # the failure
    assert history.names == [CREATE]


def test_rates_over_longer_steps_average_the_rows_between(prefix: Path) -> None:
    rates = History.read(prefix).rates([CREATE], 1000, 1030, step_s=5.0)

    assert [t for t, _ in rates] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert rates[0][1] == 10.0
    assert rates[3][1] == pytest.approx(99 / 5)


def test_percentile_series_leave_out_rows_of_no_calls(prefix: Path) -> None:
    series = History.read(prefix).percentiles(CREATE, 1000, 1030, "p99_ms")

    assert series[0] == (1.0, 6.0)
    assert len(series) == 30
