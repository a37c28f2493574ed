"""What a run leaves beside Locust's own statistics, in the folder given as --run-dir: the
shape's plan (plan.json: when the run started, what it asked for) and each load process's
business tally (tally-<pid>.json: units paid, orders shipped ...), so the report can place
the plateau on Locust's history and reconcile the buyers with the server's stock.

Nothing here imports Locust.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any


def write_plan(run_dir: str, plan: dict[str, Any]) -> None:
    """Record what the shape asked for (wall-clock times included)."""
    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "plan.json").write_text(json.dumps(plan, indent=2))


def read_plan(run_dir: Path) -> dict[str, Any]:
    """What the shape recorded, or nothing."""
    path = run_dir / "plan.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def install_tally(environment: Any, tally: Counter[str]) -> None:
    """Write this process's tally into --run-dir when it quits (if it counted anything:
    a distributed master makes no calls)."""
    run_dir = getattr(environment.parsed_options, "run_dir", "")
    if not run_dir:
        return

    def write(**_: Any) -> None:
        if tally:
            path = Path(run_dir)
            path.mkdir(parents=True, exist_ok=True)
            (path / f"tally-{os.getpid()}.json").write_text(json.dumps(dict(tally)))

    environment.events.quitting.add_listener(write)


def read_tallies(run_dir: Path) -> Counter[str]:
    """The tallies of every load process, added up."""
    total: Counter[str] = Counter()
    for path in run_dir.glob("tally-*.json"):
        total.update(json.loads(path.read_text()))
    return total
