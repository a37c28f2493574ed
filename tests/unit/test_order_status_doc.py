"""docs/order-status.md shows exactly the diagram generated from the status table."""

from __future__ import annotations

import re
from pathlib import Path

from server.domain.orders import status_diagram

DOC = Path(__file__).resolve().parents[2] / "docs" / "order-status.md"


def test_the_documented_diagram_is_the_one_generated_from_the_table() -> None:
    blocks = re.findall(r"```mermaid\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "docs/order-status.md must hold one mermaid block"
    assert blocks[0] == status_diagram(), (
        "docs/order-status.md is stale: paste the output of "
        '`.venv/bin/python -c "from server.domain.orders import status_diagram;'
        " print(status_diagram(), end='')\"` into its mermaid block"
    )
