"""`python -m loadtests.argforms` in a short mode: the three argument forms of CreateOrder
create the same orders (the tool refuses a batch any form did not create) and the table
names each form with a ratio to the arrays form."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_argforms_compares_the_three_forms_in_one_run() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.argforms", "--rounds", "10", "--batch", "1", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("orders, 10 rounds") == 2, run.stdout
    for form in ("arrays", "composite", "json"):
        rows = re.findall(rf"^  {form} +[\d.]+ +[\d.]+ +[\d.]+ +([\d.]+)$", run.stdout, re.M)
        assert len(rows) == 2, run.stdout
    assert re.findall(r"^  arrays .* 1\.000$", run.stdout, re.M), run.stdout
