"""The shipped alert rules (fulfilment/alerts.rules.yml) are valid, fire as their
promtool unit tests say, and read metrics the workers and servers export. promtool comes from Debian's
`prometheus` package (`make deps` installs it); without it these tests fail, never skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from fulfilment import metrics as worker_metrics
from server import metrics as server_metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "fulfilment" / "alerts.rules.yml"
RULE_TESTS = Path(__file__).with_name("alert_rules_test.yml")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: apt-get install prometheus (or `make deps`)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_alert_rules_pass_promtool_check() -> None:
    done = _promtool("check", "rules", str(RULES), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_the_alerts_fire_as_their_unit_tests_expect() -> None:
    done = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_read_only_metrics_the_workers_and_servers_export() -> None:
    exported = set()
    for value in [*vars(worker_metrics).values(), *vars(server_metrics).values()]:
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                exported |= {family.name, f"{family.name}_total"}
    used = set(re.findall(r"\bstockcore_[a-z_]+", RULES.read_text()))
    assert used and used <= exported, used - exported
