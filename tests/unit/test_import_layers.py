"""Imports run one way only: each program's package imports the layers below it and never
one above or beside it (README, "Layout")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "runtime",
    "server",
    "clients",
    "fulfilment",
    "payments",
    "simulators",
    "gateway",
    "devstack",
    "dashboards",
)
# What each package may import of the project, besides itself and the generated stubs.
ALLOWED: dict[str, set[str]] = {
    "runtime": set(),
    "clients": set(),
    "server": {"runtime"},
    "simulators": {"runtime"},
    "gateway": {"runtime"},
    # A client of the contract; server.domain holds the contract's limits it checks.
    "fulfilment": {"runtime", "clients", "server.domain"},
    # The webhook receiver: a client of the contract too.
    # A client of the contract; server.domain holds the reconciliation codes it writes.
    "payments": {"runtime", "clients", "server.domain"},
    "devstack": {"runtime", "clients", "server", "fulfilment", "payments", "gateway"},
    # Dashboards are drawn from PromQL text alone: no program's code.
    "dashboards": set(),
}


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        if "gen" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    wrong = {
        name
        for name in _imports(package)
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    }
    assert wrong == set(), f"{package} imports {sorted(wrong)}"


def test_the_domain_imports_only_the_standard_library() -> None:
    names: set[str] = set()
    for path in (ROOT / "server" / "domain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
    outside = {n for n in names if n != "__future__" and not n.startswith("server.domain.")}
    assert {n.split(".")[0] for n in outside} <= sys.stdlib_module_names, sorted(outside)
