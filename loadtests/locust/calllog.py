"""Every call a load process made, kept raw and written out when the process quits.

Locust's own statistics round latencies and keep percentiles over fixed windows only; the raw
log lets the report take exact percentiles over any window (the day's plateau, one step of a
staircase) pooled across all load processes. One line per call, tab-separated:
end time (Unix seconds), request name, latency (ms), status code name. Beside it, the
process's business tally (units paid, orders shipped ...) as JSON.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any


class CallLog:
    """Columns of completed calls, compact enough for a few million calls per process."""

    def __init__(self) -> None:
        self._ends = array("d")
        self._latencies = array("f")
        self._names = array("H")
        self._codes = array("H")
        self._name_ids: dict[str, int] = {}
        self._code_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ends)

    @staticmethod
    def _intern(table: dict[str, int], value: str) -> int:
        found = table.get(value)
        if found is None:
            found = table[value] = len(table)
        return found

    def on_request(
        self,
        name: str,
        response_time: float,
        exception: BaseException | None = None,
        context: dict[str, Any] | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        """Listener for Locust's request event."""
        code = (context or {}).get("code")
        if code is None:
            code = "OK" if exception is None else type(exception).__name__
        began = start_time if start_time is not None else time.time() - response_time / 1000.0
        self._ends.append(began + response_time / 1000.0)
        self._latencies.append(response_time)
        self._names.append(self._intern(self._name_ids, name))
        self._codes.append(self._intern(self._code_ids, str(code)))

    def write(self, directory: Path, tally: Counter[str]) -> Path:
        """Write calls-<pid>.tsv and tally-<pid>.json into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        names = list(self._name_ids)
        codes = list(self._code_ids)
        path = directory / f"calls-{os.getpid()}.tsv"
        with open(path, "w", encoding="utf-8") as out:
            for end, ms, name, code in zip(
                self._ends, self._latencies, self._names, self._codes, strict=True
            ):
                out.write(f"{end:.4f}\t{names[name]}\t{ms:.3f}\t{codes[code]}\n")
        (directory / f"tally-{os.getpid()}.json").write_text(json.dumps(dict(tally)))
        return path


def install(environment: Any, tally: Counter[str]) -> None:
    """Record this process's calls and write them out when it quits (if --calls-dir is set)."""
    directory = getattr(environment.parsed_options, "calls_dir", "")
    if not directory:
        return
    log = CallLog()
    environment.events.request.add_listener(log.on_request)

    def write(**_: Any) -> None:
        # A distributed master makes no calls itself: only load processes write.
        if len(log) or tally:
            log.write(Path(directory), tally)

    environment.events.quitting.add_listener(write)
