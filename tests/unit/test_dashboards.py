"""The dashboards as code (dashboards/): the committed Grafana JSON and consoles are what the
generator makes, and each panel is drawn the same in both."""

from __future__ import annotations

import json
import re

import pytest

from dashboards import consoles, grafana
from dashboards.__main__ import CONSOLES_DIR, GRAFANA_DIR, ROOT, stale
from dashboards.panels import DASHBOARDS, Dashboard


def test_the_committed_dashboards_and_consoles_are_what_the_generator_makes() -> None:
    wrong = [str(path.relative_to(ROOT)) for path in stale()]

    assert wrong == [], f"stale: {wrong}; run `make dashboards`"


@pytest.mark.parametrize("board", DASHBOARDS, ids=lambda b: b.name)
def test_a_grafana_dashboard_has_every_panel_and_query_of_its_definition(board: Dashboard) -> None:
    model = json.loads((GRAFANA_DIR / f"{board.uid}.json").read_text())
    panels = [p for p in model["panels"] if p["type"] == "timeseries"]

    assert model["uid"] == board.uid
    assert [p["title"] for p in panels] == [p.title for p in board.panels]
    assert [[t["expr"] for t in p["targets"]] for p in panels] == [
        [q.expr for q in p.queries] for p in board.panels
    ]
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {"${datasource}"}
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])


@pytest.mark.parametrize("board", DASHBOARDS, ids=lambda b: b.name)
def test_a_console_graphs_and_tabulates_every_query(board: Dashboard) -> None:
    page = (CONSOLES_DIR / consoles.file_name(board)).read_text()

    for panel in board.panels:
        for query in panel.queries:
            assert json.dumps(query.expr) in page, query.expr
            assert f"range query `{query.expr}`" in page, query.expr
    assert page.count("new PromConsole.Graph(") == len(board.panels)


def test_legends_name_labels_in_each_tools_own_way() -> None:
    assert grafana.legend("{job} {instance}") == "{{job}} {{instance}}"
    for board in DASHBOARDS:
        for panel in board.panels:
            for query in panel.queries:
                assert "{{" not in query.expr and "`" not in query.expr, query.expr
                assert re.fullmatch(r"[\w %{}.-]*", query.legend), query.legend
