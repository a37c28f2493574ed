"""A run's summary and verdict, and the reference day's headline figures from Locust's stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.locuststats import Entry, Failure, History, Sample
from loadtests.report import Run, day_figures, status_rows

CREATE = "OrderService/CreateOrder"
GET_STOCK = "InventoryService/GetStock"
GET_ORDER = "OrderService/GetOrder"


def _entry(name: str, requests: int, failures: int = 0) -> Entry:
    return Entry(name, requests, failures, 1.0, 10.0, 8.0, 30.0, 90.0)


def _series(per_s: int, mean_ms: float, p99_ms: float) -> list[Sample]:
    """A steady name: `per_s` calls a second from t=1000 to 1060, all at `mean_ms`."""
    return [
        Sample(1000 + t, per_s * t, 0, mean_ms, mean_ms, p99_ms if t >= 10 else float("nan"))
        for t in range(61)
    ]


def test_day_figures_take_the_plateau_from_the_plan_and_the_figures_from_locust() -> None:
    history = History(
        {
            CREATE: _series(40, 12.0, 50.0),
            GET_STOCK: _series(30, 4.0, 9.0),
            GET_ORDER: _series(10, 8.0, 20.0),
        }
    )
    stats = {
        CREATE: _entry(CREATE, 2400, failures=2),
        f"{CREATE} [FAILED_PRECONDITION]": _entry(f"{CREATE} [FAILED_PRECONDITION]", 5),
        GET_STOCK: _entry(GET_STOCK, 1800),
        GET_ORDER: _entry(GET_ORDER, 600, failures=1),
        "Aggregated": _entry("Aggregated", 4805, failures=3),
    }
    plan = {"started_at": 1000.0, "plateau": [20.0, 50.0], "peak_per_s": 47.4}

    figures = day_figures(
        stats, history, plan, buffer_hit_ratio=0.99, payment_lag=None, server_rss_mb=70.0
    )

    assert figures.target_peak_per_s == 47.4
    assert figures.achieved_peak_per_s == pytest.approx(40.0)
    assert figures.create_peak.mean_ms == pytest.approx(12.0)
    assert figures.create_peak.p99_ms == 50.0
    assert set(figures.queries_peak) == {GET_STOCK, GET_ORDER}
    # 30 reads a second at 4 ms and 10 at 8 ms.
    assert figures.queries_mean_ms == pytest.approx((30 * 4.0 + 10 * 8.0) / 40)
    assert figures.failures == 3  # not the expected rejections, not Aggregated twice


def test_status_rows_list_expected_rejections_apart_from_failures() -> None:
    stats = {
        CREATE: _entry(CREATE, 10),
        f"{CREATE} [FAILED_PRECONDITION]": _entry(f"{CREATE} [FAILED_PRECONDITION]", 5),
    }

    rows = status_rows(stats, [Failure(CREATE, "UNAVAILABLE", 2)])

    assert rows == [
        [f"{CREATE} [FAILED_PRECONDITION]", "expected rejection", "5"],
        [CREATE, "UNAVAILABLE", "2"],
    ]


def test_a_failed_check_fails_the_run_and_a_missed_target_does_not(tmp_path: Path) -> None:
    missed = Run("day", tmp_path)
    missed.target(False, "fast enough")
    assert missed.finish() == 0

    failed = Run("flash", tmp_path)
    failed.check(True, "exactly the stock sold")
    failed.check(False, "no holds left")
    assert failed.finish() == 1
    assert (failed.dir / "summary.md").read_text().splitlines() == [
        "- PASS: exactly the stock sold",
        "- FAIL: no holds left",
    ]


def test_gateway_rows_set_each_http_request_beside_its_grpc_twin() -> None:
    from loadtests.report import gateway_rows

    stats = {
        CREATE: Entry(CREATE, 100, 0, 1.0, 10.0, 8.0, 30.0, 90.0),
        "HTTP " + CREATE: Entry("HTTP " + CREATE, 90, 0, 1.0, 12.5, 9.0, 41.0, 95.0),
        GET_STOCK: _entry(GET_STOCK, 50),  # no HTTP twin: not a row
    }
    assert gateway_rows(stats, "HTTP ") == [
        [CREATE, "100", "90", "10.0", "12.5", "2.5", "8.0", "9.0", "1.0", "30.0", "41.0"]
    ]
