"""Every load and benchmark target the README and `make help` name, run as a user runs it:
`make <target> VAR=...` from the checkout, in a short mode (a few seconds of load, small
levels), each starting its own stack as on a fresh clone.

A target fails here when it exits non-zero or reports what must not happen: a failed check
(`- FAIL:`), unexpected outcomes, a Python traceback. A performance target reported MISSED
is an honest figure of so short a run, not a failure. Run folders go to a temporary
REPORTS= folder; nothing a target starts may outlive it, and docs/benchmarks/ is left as
it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.plots import KINDS, PUBLISHED, newest_run
from runtime.processes import descendants
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

_SHORT_DAY = (
    "DURATION=10",
    "PEAK_HOLD=3",
    "SCALE=0.05",
    "PROCESSES=1",
    "SKUS=50",
    "WINDOW=2",
    "FLOOR=2",
)
# load-day also runs its profile (py-spy and pg_stat_statements). The chaos run strikes
# from 10 s, a second apart: Redis killed and started again from its append-only file, then
# kill -9 of the reconciler, the webhook receiver and the refund sender, each started again.
SHORT: dict[str, tuple[str, ...]] = {
    "bench": ("LEVELS=8", "DURATION=1", "SECURITY_ROUNDS=1", "SALE_UNITS=50"),
    "load-day": (*_SHORT_DAY, "PROFILE=1"),
    # The report pays with ConfirmPayment, the day at the payment provider (its default).
    "load-report": (*_SHORT_DAY, "PAY_VIA=confirm"),
    "load-pay": _SHORT_DAY,
    "load-flash": (
        "USERS=40",
        "SPAWN_RATE=40",
        "STOCK=20",
        "PROCESSES=1",
        "WINDOW=2",
        "DURATION=60",
    ),
    "load-knee": ("LEVELS=8", "DURATION=1", "SKUS=50"),
    "load-scale": ("SKUS=500", "HOLDS=100", "CALLERS=8", "DURATION=1"),
    "load-overload": (
        "CALLERS=200",
        "BEFORE=2",
        "OVERLOAD=7",
        "AFTER=2",
        "SKUS=50",
        "NAIVE=0.05",
        "PIN_LOAD=1",
    ),
    "load-fanout": ("STREAMS=50", "DURATION=2", "HISTORY=200", "CALLERS=16"),
    # 10 s of orders with every provider fault at 5 %; most of its time is the wait for the
    # provider's late settlements (30 s) and the reconciler's grace.
    "load-recon": ("ORDERS=200", "RATE=20", "FAULT_RATE=0.05", "CANCEL=0.1"),
    "load-outage": (
        "DURATION=12",
        "OUTAGE_AT=3",
        "OUTAGE=4",
        "SCALE=0.05",
        "WORKERS=1",
        "DRAIN=60",
    ),
    "chaos": (
        "SEED=3",
        "DURATION=34",
        "GAP=1",
        "FAULTS=kill-redis,kill-reconciler,kill-receiver,kill-refund-sender",
    ),
    "hostile": ("DURATION=3", "HEALTH_STREAMS=300", "CUSTOMER_STREAMS=100"),
    # Three 10 s windows of a small plateau compare noisily on a shared machine: the soak's
    # check runs with a loose tolerance here (10 % by default).
    "soak": (
        "DURATION=30",
        "REPORT_WINDOW=10",
        "REST_OF_DAY=10",
        "SCALE=0.05",
        "PROCESSES=1",
        "SKUS=50",
        "WINDOW=2",
        "TOLERANCE=200",
    ),
}
"""Each target's short mode: the make variables it runs with (besides REPORTS=)."""

DRAWN_BY = {"bench": "bench", "day": "load-day", "knee": "load-knee", "soak": "soak"}
"""The target whose run draws each plot `make plots` publishes."""

# Below pytest's 300 s per test, so a hung run is stopped here, with its output shown.
_MAKE_TIMEOUT_S = 240.0
_EXIT_GRACE_S = 30.0
# Found in the environment of every process a run starts, and of nothing else.
_RUN_MARK = "LOADTEST_RUN_MARK"
_MAKE_STATE = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
_PROBLEMS = ("- FAIL:", "unexpected outcomes", "Traceback (most recent call last)", "NOT EXACT")


@dataclass(frozen=True)
class MakeRun:
    """A finished `make` run."""

    command: list[str]
    exit_code: int | None
    """None when it overran its time and was stopped."""
    output: str
    wall_s: float
    outlived: list[str]
    """Processes it started that were still running after it ended (then killed)."""

    def shown(self) -> str:
        """The command, how it ended and the tail of its output, for a failure message."""
        tail = "\n".join(self.output.splitlines()[-60:])
        return (
            f"`{' '.join(self.command)}` exit code {self.exit_code} after {self.wall_s:.0f} s"
            f"\n--- last lines of its output ---\n{tail}"
        )


def _fresh_clone_environment(mark: str) -> dict[str, str]:
    """This process's environment without any STOCKCORE_* setting (each target then starts
    PostgreSQL, Redis and servers of its own, as on a fresh clone) or the make state of an
    enclosing `make test`, and with the run's mark."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("STOCKCORE_") and name not in _MAKE_STATE
    }
    env[_RUN_MARK] = mark
    return env


def _identity(pid: int) -> str | None:
    """The process's start time (with its pid, what tells it from a later one), or None when
    it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


class Started:
    """The processes a run started: every descendant of make seen while it ran, and every
    process whose environment carries the run's mark (a process may retitle itself over its
    environment, as PostgreSQL and Redis do, so the mark alone would miss some)."""

    def __init__(self, mark: str) -> None:
        self._needle = f"{_RUN_MARK}={mark}".encode()
        self._seen: dict[int, tuple[str, str]] = {}

    def look(self, root: int) -> None:
        """Note the descendants of `root` now running."""
        for pid in descendants(root):
            if pid not in self._seen and (started := _identity(pid)) is not None:
                self._seen[pid] = (started, _command_line(pid))

    def _marked(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if self._needle in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def running(self) -> dict[int, str]:
        """Those still running, with their command lines."""
        left = {
            pid: command
            for pid, (started, command) in self._seen.items()
            if _identity(pid) == started
        }
        for pid in self._marked():
            if pid not in left and _identity(pid) is not None:
                left[pid] = _command_line(pid)
        return left

    def end_what_remains(self) -> list[str]:
        """Wait a little for them to end (those started with a death signal get it when their
        parent ends); kill those that do not. What had to be killed."""
        deadline = time.monotonic() + _EXIT_GRACE_S
        while (left := self.running()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"{pid}: {command}" for pid, command in sorted(left.items())]


def run_make(target: str, *variables: str, log: Path) -> MakeRun:
    """`make <target> <variables>` in the checkout, its output to `log`; stopped with all it
    started if it overruns."""
    command = ["make", target, *variables]
    mark = uuid.uuid4().hex
    started = Started(mark)
    began = time.monotonic()
    exit_code: int | None = None
    try:
        with log.open("wb") as out:
            make = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_fresh_clone_environment(mark),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                while make.poll() is None and time.monotonic() - began < _MAKE_TIMEOUT_S:
                    started.look(make.pid)
                    time.sleep(0.5)
                exit_code = make.poll()
            finally:
                if make.poll() is None:
                    os.killpg(make.pid, signal.SIGKILL)  # make and the tool it runs
                    make.wait()
    finally:
        wall_s = time.monotonic() - began
        outlived = started.end_what_remains()
    print(f"{target}: {wall_s:.1f} s")
    return MakeRun(command, exit_code, log.read_text(errors="replace"), wall_s, outlived)


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folders of this module's targets, for `make plots` to find."""
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def published() -> dict[str, str]:
    """docs/benchmarks/ as committed, before any target ran."""
    return _fingerprint(PUBLISHED)


def _run_short(target: str, reports: Path, logs: Path) -> MakeRun:
    return run_make(target, *SHORT[target], f"REPORTS={reports}", log=logs / f"{target}.log")


def _assert_clean_verdict(run: MakeRun, reports: Path) -> None:
    assert run.exit_code == 0, run.shown()
    problems = [line for line in run.output.splitlines() if any(p in line for p in _PROBLEMS)]
    assert not problems, f"{problems}\n{run.shown()}"
    assert re.search(r"^- PASS: ", run.output, re.MULTILINE), f"no check passed\n{run.shown()}"
    # One folder a run; load-pay names its two days' folders, then its own.
    folders = re.findall(r"^report folder: (.+)$", run.output, re.MULTILINE)
    assert len(folders) in ((3,) if run.command[1] == "load-pay" else (1,)), (
        f"not the report folders expected\n{run.shown()}"
    )
    for named in folders:
        folder = Path(named).resolve()
        assert folder.parent == reports.resolve(), f"the run wrote to {folder}, not to {reports}"
        assert (folder / "summary.md").is_file(), run.shown()


@pytest.mark.parametrize("target", list(SHORT))
def test_target_runs_to_a_clean_verdict(
    target: str, reports: Path, published: dict[str, str], tmp_path: Path
) -> None:
    run = _run_short(target, reports, tmp_path)

    assert not run.outlived, f"still running after make ended: {run.outlived}\n{run.shown()}"
    _assert_clean_verdict(run, reports)
    assert _fingerprint(PUBLISHED) == published, "docs/benchmarks/ changed"
    if target == "load-pay":
        # Both runs measured: the provider's run has its statements' lag.
        assert "| plateau | ConfirmPayment | the provider |" in run.output, run.shown()
        lag = re.search(
            r"^\| reconciliation statement lag p99, s \| - \| ([\d.]+) \|", run.output, re.M
        )
        assert lag is not None, run.shown()
    if "PROFILE=1" in SHORT[target]:
        # Both instruments reported: the server's stacks by area and the statements.
        assert "share of busy samples" in run.output, run.shown()
        assert re.search(r"stockcore\.create_orders", run.output), run.shown()


@pytest.mark.timeout(900)  # up to three runs of its own when it runs alone
def test_make_plots_copies_the_newest_runs_plots_into_the_folder_named(
    reports: Path, published: dict[str, str], tmp_path: Path
) -> None:
    for kind, prefixes in KINDS.items():
        if newest_run(reports, prefixes, f"{kind}.png") is None:
            _assert_clean_verdict(_run_short(DRAWN_BY[kind], reports, tmp_path), reports)
    into = tmp_path / "published"

    run = run_make("plots", f"REPORTS={reports}", f"INTO={into}", log=tmp_path / "plots.log")

    assert run.exit_code == 0, run.shown()
    assert not run.outlived, run.outlived
    for kind, prefixes in KINDS.items():
        newest = newest_run(reports, prefixes, f"{kind}.png")
        assert newest is not None
        assert (into / f"{kind}.png").read_bytes() == (newest / f"{kind}.png").read_bytes()
    assert sorted(p.name for p in into.iterdir()) == sorted(f"{kind}.png" for kind in KINDS)
    assert _fingerprint(PUBLISHED) == published, "docs/benchmarks/ changed"


def _help() -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        env=_fresh_clone_environment("help"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _section(readme: str, title: str) -> str:
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_documented_load_and_benchmark_target_is_run_here() -> None:
    readme = (ROOT / "README.md").read_text()
    in_table = re.findall(r"^\| `make ([a-z-]+)`", _section(readme, "Load tests"), re.MULTILINE)
    in_benchmarks = re.findall(r"`make ([a-z-]+)`", _section(readme, "Benchmarks"))
    run_here = {*SHORT, "plots"}

    assert {*in_table, *in_benchmarks} == run_here
    shown = _help()
    assert set(re.findall(r"\bload-[a-z]+\b", shown)) == {t for t in SHORT if t.startswith("load-")}
    assert all(re.search(rf"\b{target}\b", shown) for target in run_here), shown
