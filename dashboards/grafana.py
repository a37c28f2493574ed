"""The dashboards as Grafana dashboards, built with grafana-foundation-sdk: a Prometheus data
source chosen on the dashboard (`datasource`), a row per heading, a time series per panel."""

from __future__ import annotations

import json
import re

from grafana_foundation_sdk.builders import dashboard as grafana
from grafana_foundation_sdk.builders import prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from dashboards.panels import Dashboard, Panel

#: Every query reads the data source the dashboard's variable names.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Panels per row: four across a 24-column grid at most.
_WIDTH = {1: 24, 2: 12, 3: 8}


def legend(template: str) -> str:
    """Grafana's legend format for a panel's `{label}` template."""
    return re.sub(r"\{(\w+)\}", r"{{\1}}", template)


def _panel(panel: Panel, width: int, number: int) -> timeseries.Panel:
    built = (
        timeseries.Panel()
        .id(number)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit.value)
        .datasource(DATASOURCE)
        .height(8)
        .span(width)
    )
    for ref, query in zip("ABCDEFGH", panel.queries, strict=False):
        built = built.with_target(
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(legend(query.legend))
            .ref_id(ref)
            .datasource(DATASOURCE)
        )
    return built


def build(board: Dashboard) -> grafana.Dashboard:
    """The Grafana dashboard of `board`."""
    built = (
        grafana.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(["stockcore"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(
            grafana.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    number = 0
    for row in board.rows:
        number += 1
        built = built.with_row(grafana.Row(row.title).id(number))
        width = _WIDTH.get(len(row.panels), 6)
        for panel in row.panels:
            number += 1
            built = built.with_panel(_panel(panel, width, number))
    return built


def render(board: Dashboard) -> str:
    """The dashboard's JSON, as committed in docs/dashboards/ (stable: keys sorted)."""
    model = build(board).build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
