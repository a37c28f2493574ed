"""A project-owned Prometheus (Debian's `prometheus` package) for `make run` and the tests:
it scrapes the servers, the fulfilment workers, the money programs, Envoy's admin
interface and itself, loads the programs' rule files and serves the stockcore consoles
(docs/consoles/), on loopback, its data under the given folder, dying with the process
that started it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from runtime.processes import spawn, stop_with, wait_until

_ROOT = Path(__file__).resolve().parent.parent
CONSOLES = _ROOT / "docs" / "consoles"
CONSOLE_LIBRARIES = _ROOT / "docs" / "console_libraries"


def rule_files() -> list[Path]:
    """The rule files the programs ship: the servers', the fulfilment workers', and the
    money programs' (the webhook receiver, the reconciler, the refund sender)."""
    return [
        Path(str(resources.files(package) / "alerts.rules.yml"))
        for package in ("server", "fulfilment", "payments")
    ]


def binary() -> str | None:
    """The prometheus executable, or None when it is not installed."""
    return shutil.which("prometheus")


@dataclass(frozen=True)
class Job:
    """A scrape job: its name, its host:port targets and the path of their metrics."""

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"


@dataclass
class LocalPrometheus:
    """Prometheus on 127.0.0.1:`port`, scraping `jobs` (and itself) every `interval_s`,
    its configuration, data and log under `datadir`."""

    datadir: Path
    port: int
    jobs: Sequence[Job]
    interval_s: float = 15.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """http://host:port."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        """Where the configuration is written (JSON, which is YAML too)."""
        return self.datadir / "prometheus.yml"

    @property
    def log(self) -> Path:
        """Prometheus' own log."""
        return self.datadir / "prometheus.log"

    def config(self) -> dict[str, object]:
        """The configuration: every job, this Prometheus itself, and the rule files."""
        interval = f"{max(1, round(self.interval_s))}s"
        jobs = [*self.jobs, Job("prometheus", (f"127.0.0.1:{self.port}",))]
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files()],
            "scrape_configs": [
                {
                    "job_name": job.name,
                    "metrics_path": job.metrics_path,
                    "static_configs": [{"targets": list(job.targets)}],
                }
                for job in jobs
                if job.targets
            ],
        }

    def argv(self, executable: str) -> list[str]:
        """The command line."""
        return [
            executable,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.datadir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.console.templates={CONSOLES}",
            f"--web.console.libraries={CONSOLE_LIBRARIES}",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start Prometheus and wait until it is ready (blocking);
        RuntimeError when it is not installed."""
        executable = binary()
        if executable is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        with open(self.log, "ab") as out:
            self.proc = spawn(
                self.argv(executable),
                death_signal=signal.SIGTERM,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, self.proc, self.log, timeout, "Prometheus")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM; SIGKILL after 15 s)."""
        stop_with(self.proc, signal.SIGTERM, 15)
        self.proc = None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
