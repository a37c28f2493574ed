"""Stockcore's dashboards as code (`python -m dashboards`, `make dashboards`): one list of
panels (`panels.py`) drawn as Grafana dashboards (`grafana.py`, docs/dashboards/*.json) and as
Prometheus console templates (`consoles.py`, docs/consoles/*.html), which the Prometheus of
`make run` serves; `screenshots.py` takes pictures of those consoles."""
