"""Each program's shipped alert rules (server/alerts.rules.yml, fulfilment/alerts.rules.yml,
and payments/alerts.rules.yml for the money programs: the webhook receiver, the reconciler
and the refund sender) are valid, fire as their promtool unit tests say, and read metrics
those programs export. promtool comes from Debian's `prometheus` package (`make test`
installs it); without it these tests fail, never skip."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from fulfilment import metrics as worker_metrics
from payments import metrics as receiver_metrics
from payments.reconciler import metrics as reconciler_metrics
from refunds import metrics as refund_metrics
from server import metrics as server_metrics

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
# A recording rule's name, by Prometheus' convention level:metric:operations.
RECORDED = re.compile(r"\b[a-z_]+:stockcore_[a-z0-9_]+:[a-z0-9_]+\b")


@dataclass(frozen=True)
class Rules:
    """A rule file (`program`/alerts.rules.yml), its promtool unit tests and the metrics
    modules of the programs whose series it reads."""

    program: str
    count: int
    metrics: tuple[ModuleType, ...]

    @property
    def path(self) -> Path:
        return ROOT / self.program / "alerts.rules.yml"

    @property
    def tests(self) -> Path:
        return Path(__file__).with_name(f"alert_rules_{self.program}_test.yml")


RULES = [
    Rules("server", 33, (server_metrics,)),
    Rules("fulfilment", 11, (worker_metrics,)),
    Rules("payments", 19, (receiver_metrics, reconciler_metrics, refund_metrics)),
]
# Every program's own registry (server/metrics.py says why each has one).
REGISTRIES = {
    "server": server_metrics,
    "fulfilment": worker_metrics,
    "receiver": receiver_metrics,
    "reconciler": reconciler_metrics,
    "refunds": refund_metrics,
}


def _exported(metrics: ModuleType) -> set[str]:
    """The stockcore_* series names the program's registry serves (a counter's with and
    without its _total, a histogram's with its _bucket, _sum and _count)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names |= {family.name, *(sample.name for sample in family.samples)}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    return {name for name in names if name.startswith("stockcore_")}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: apt-get install prometheus (or `make test`)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("rules", RULES, ids=lambda r: r.program)
def test_the_alert_rules_pass_promtool_check(rules: Rules) -> None:
    done = _promtool("check", "rules", str(rules.path), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {rules.count} rules found" in done.stdout


@pytest.mark.parametrize("rules", RULES, ids=lambda r: r.program)
def test_the_alerts_fire_as_their_unit_tests_expect(rules: Rules) -> None:
    done = _promtool("test", "rules", rules.tests.name, cwd=rules.tests.parent)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("rules", RULES, ids=lambda r: r.program)
def test_the_rules_read_only_metrics_their_programs_export(rules: Rules) -> None:
    exported = set().union(*(_exported(metrics) for metrics in rules.metrics))
    # Recording rules' names (level:metric:operations) hold metric names, not series read.
    text = RECORDED.sub("", rules.path.read_text())
    used = set(re.findall(r"\bstockcore_[a-z_]+", text))
    assert used and used <= exported, used - exported


@pytest.mark.parametrize("rules", RULES, ids=lambda r: r.program)
def test_a_programs_unit_tests_load_its_rules_alone_and_test_every_alert(rules: Rules) -> None:
    text = rules.tests.read_text()
    loaded = re.search(r"^rule_files:\n((?:  - .*\n)+)", text, re.MULTILINE)
    assert loaded is not None
    assert loaded.group(1) == f"  - ../../{rules.program}/alerts.rules.yml\n"
    alerts = set(re.findall(r"- alert: (\w+)", rules.path.read_text()))
    tested = set(re.findall(r"alertname: (\w+)", text))
    assert alerts and alerts == tested, alerts ^ tested


def test_each_program_serves_only_its_own_series() -> None:
    exported = {program: _exported(metrics) for program, metrics in REGISTRIES.items()}
    assert all(exported.values()), exported
    for (one, mine), (other, theirs) in itertools.combinations(exported.items(), 2):
        assert not mine & theirs, (one, other, mine & theirs)
    assert not any(
        name.startswith(("stockcore_fulfilment_", "stockcore_partner_"))
        for name in exported["server"]
    )


@pytest.mark.parametrize("rules", RULES, ids=lambda r: r.program)
def test_recording_rules_are_named_level_metric_operations(rules: Rules) -> None:
    records = re.findall(r"- record: (\S+)", rules.path.read_text())
    assert records and all(RECORDED.fullmatch(name) for name in records), records


@pytest.mark.parametrize("rules", RULES, ids=lambda r: r.program)
def test_every_alert_waits_has_a_severity_a_summary_and_a_runbook_section(rules: Rules) -> None:
    sections = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), re.MULTILINE))
    blocks = re.split(r"\n(?=      - (?:alert|record): )", rules.path.read_text())
    alerts = {
        re.match(r"      - alert: (\w+)", block).group(1): block  # type: ignore[union-attr]
        for block in blocks
        if block.startswith("      - alert: ")
    }
    assert alerts
    for name, block in alerts.items():
        assert re.search(r"^        for: \d+[smhd]$", block, re.MULTILINE), name
        assert re.search(r"^          severity: (critical|warning)$", block, re.MULTILINE), name
        assert re.search(r"^          summary: ", block, re.MULTILINE), name
        runbook = f"          runbook_url: docs/runbook.md#{name.lower()}"
        assert re.search(f"^{re.escape(runbook)}$", block, re.MULTILINE), name
        assert name in sections, f"docs/runbook.md has no section ## {name}"
