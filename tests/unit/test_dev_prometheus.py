"""What `make run`'s Prometheus scrapes and loads (devstack/prometheus.py, devstack/stack.py)."""

from __future__ import annotations

from pathlib import Path

from devstack.config import DevSettings
from devstack.prometheus import CONSOLE_LIBRARIES, CONSOLES, Job, LocalPrometheus, rule_files
from devstack.stack import scrape_jobs
from fulfilment.config import FulfilmentSettings
from payments.config import PaymentsSettings
from payments.reconciler.config import ReconcilerSettings
from refunds.config import RefundSettings
from server.config import Settings


def test_the_stack_scrapes_every_server_process_and_worker_on_their_ports() -> None:
    server = Settings(metrics_port=9464, workers=3, grpc_port=50051)
    jobs = scrape_jobs(server, FulfilmentSettings(fulfil_metrics_port=9474), None, workers=2)

    assert jobs == [
        Job("stockcore", ("127.0.0.1:9464", "127.0.0.1:9465", "127.0.0.1:9466")),
        Job("stockcore-fulfilment", ("127.0.0.1:9474", "127.0.0.1:9475")),
    ]


def test_the_stack_scrapes_the_money_programs_on_loopback() -> None:
    jobs = scrape_jobs(
        Settings(metrics_port=0),
        FulfilmentSettings(fulfil_metrics_port=0),
        None,
        receiver=PaymentsSettings(webhook_metrics_port=9475),
        reconciler=ReconcilerSettings(reconcile_metrics_port=9476),
        sender=RefundSettings(refund_metrics_port=9477),
    )

    assert jobs == [
        Job("stockcore-payments", ("127.0.0.1:9475",)),
        Job("stockcore-reconciler", ("127.0.0.1:9476",)),
        Job("stockcore-refunds", ("127.0.0.1:9477",)),
    ]


def test_a_program_without_metrics_is_not_scraped() -> None:
    jobs = scrape_jobs(
        Settings(metrics_port=0),
        FulfilmentSettings(fulfil_metrics_port=0),
        None,
        receiver=PaymentsSettings(webhook_metrics_port=0),
        reconciler=ReconcilerSettings(reconcile_metrics_port=0),
        sender=RefundSettings(refund_metrics_port=0),
    )

    assert jobs == []


def test_prometheus_scrapes_itself_and_loads_every_programs_rules(tmp_path: Path) -> None:
    prometheus = LocalPrometheus(
        tmp_path, 9090, [Job("envoy", ("127.0.0.1:9901",), "/stats/prometheus")], interval_s=5
    )
    config = prometheus.config()

    assert config["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    assert config["scrape_configs"] == [
        {
            "job_name": "envoy",
            "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": ["127.0.0.1:9901"]}],
        },
        {
            "job_name": "prometheus",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["127.0.0.1:9090"]}],
        },
    ]
    assert [Path(p).parent.name for p in config["rule_files"]] == [
        "server",
        "fulfilment",
        "payments",
    ]  # type: ignore[attr-defined]
    assert all(path.is_file() for path in rule_files())
    assert "--web.listen-address=127.0.0.1:9090" in prometheus.argv("prometheus")
    assert any(CONSOLES.glob("stockcore-*.html")) and any(CONSOLE_LIBRARIES.glob("*.lib"))


def test_make_run_serves_prometheus_on_9090_unless_told_otherwise() -> None:
    assert DevSettings().dev_prometheus_port == 9090
    assert DevSettings.from_env({"STOCKCORE_DEV_PROMETHEUS_PORT": "0"}).dev_prometheus_port == 0
