"""The generated stubs and the gateway's descriptor set in clients/gen match the .proto
files (`make proto` rebuilds them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import google.api

ROOT = Path(__file__).resolve().parents[2]
# googleapis-common-protos ships google/api/*.proto and google/rpc/*.proto.
GOOGLEAPIS = Path(next(iter(google.api.__path__))).parent.parent


def _protos() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos").rglob("*.proto"))


def _protoc(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", "-I", str(GOOGLEAPIS), *args],
        cwd=ROOT,
        check=True,
    )


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    _protoc(f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", *_protos())
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.py")}
    assert fresh, "protoc generated nothing"
    for relative, content in fresh.items():
        current = ROOT / "clients" / "gen" / relative
        assert current.exists(), f"{relative} is missing: run `make proto`"
        assert current.read_bytes() == content, f"{relative} is stale: run `make proto`"


def test_gateway_descriptor_set_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "descriptor.pb"
    _protoc(
        "--include_imports",
        f"--descriptor_set_out={fresh}",
        *_protos(),
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
    )
    current = ROOT / "clients" / "gen" / "stockcore" / "v1" / "descriptor.pb"
    assert current.exists(), "the descriptor set is missing: run `make proto`"
    assert current.read_bytes() == fresh.read_bytes(), (
        "the descriptor set is stale: run `make proto`"
    )


def test_descriptor_set_lets_the_gateway_print_error_details() -> None:
    from google.protobuf import descriptor_pb2

    current = ROOT / "clients" / "gen" / "stockcore" / "v1" / "descriptor.pb"
    files = {f.name for f in descriptor_pb2.FileDescriptorSet.FromString(current.read_bytes()).file}
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto"} <= files
    assert {"stockcore/v1/inventory.proto", "stockcore/v1/orders.proto"} <= files
