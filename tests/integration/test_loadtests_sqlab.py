"""`python -m loadtests.sqlab` in a short mode: the tool creates the function named by
--before beside today's and pays the same kind of batches with both (it refuses a batch
either did not pay). Here --before is today's live file itself, so that the run needs no
git history; BENCHMARKS.md names the revision its figures compare with."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sqlab_pays_with_the_function_before_and_after_in_one_run() -> None:
    live = ROOT / "server" / "storage" / "sql" / "live" / "orders.sql"
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.sqlab", "pay", "--before", str(live),
         "--rounds", "10", "--batch", "1", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("pay_orders, batches of") == 2, run.stdout
    assert len(re.findall(r"^  before .* ratio  1\.000$", run.stdout, re.M)) == 2, run.stdout
    assert len(re.findall(r"^  after +mean", run.stdout, re.M)) == 2, run.stdout


def test_sqlab_measures_a_change_in_a_function_the_scenarios_calls() -> None:
    live = ROOT / "server" / "storage" / "sql" / "live" / "orders.sql"
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.sqlab", "pay", "--before", str(live),
         "--changed", "record_changes", "--rounds", "10", "--batch", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("pay_orders, batches of 2") == 1, run.stdout
    assert len(re.findall(r"^  after +mean", run.stdout, re.M)) == 1, run.stdout
