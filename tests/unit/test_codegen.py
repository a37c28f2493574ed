"""The generated stubs in clients/gen match the .proto files (`make proto` rebuilds them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.py")}
    assert fresh, "protoc generated nothing"
    for relative, content in fresh.items():
        current = ROOT / "clients" / "gen" / relative
        assert current.exists(), f"{relative} is missing: run `make proto`"
        assert current.read_bytes() == content, f"{relative} is stale: run `make proto`"
