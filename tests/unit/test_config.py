"""Settings from STOCKCORE_* environment variables, and their validation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from devstack import config as dev_config
from devstack.config import DevSettings
from devstack.stack import with_dev_credentials
from fulfilment import config as fulfilment_config
from fulfilment.config import FulfilmentSettings
from payments import config as payments_config
from payments.config import PaymentsSettings
from payments.reconciler import config as reconciler_config
from payments.reconciler.config import ReconcilerSettings
from refunds import config as refunds_config
from refunds.config import RefundSettings
from server.config import Settings, SettingsError, from_env, to_env

DEV_VARIABLES = {
    "STOCKCORE_DATA_DIR",
    "STOCKCORE_DEV_PG_PORT",
    "STOCKCORE_DEV_REDIS_PORT",
    "STOCKCORE_DEV_REDIS_MAXMEMORY_MB",
    "STOCKCORE_DEMO_CATALOGUE",
}


def _read(environ: dict[str, str]) -> Settings | DevSettings:
    """The settings of the program that reads these variables: the development stack's
    own (data folder, local ports, demo catalogue), else the server's."""
    return dev_config.from_env(environ) if set(environ) & DEV_VARIABLES else from_env(environ)


def _defaults(changes: dict[str, object]) -> Settings | DevSettings:
    """The default settings of the program that has the fields `changes` names."""
    dev_fields = {f.name for f in dataclasses.fields(DevSettings)}
    return DevSettings() if set(changes) <= dev_fields else Settings()


def test_no_variables_give_the_defaults() -> None:
    assert from_env({}) == Settings()


def test_defaults_are_valid() -> None:
    assert Settings().validate() == Settings()


def test_empty_variables_are_ignored() -> None:
    assert from_env({"STOCKCORE_GRPC_PORT": "", "STOCKCORE_LOG_JSON": ""}) == Settings()


def test_unrelated_variables_are_ignored() -> None:
    assert from_env({"PATH": "/bin", "STOCKCORE_NOT_A_SETTING": "x"}) == Settings()


@pytest.mark.parametrize(
    ("variable", "attr", "raw", "expected"),
    [
        (
            "STOCKCORE_PG_DSN",
            "pg_dsn",
            "postgresql://u@db:5432/stock",
            "postgresql://u@db:5432/stock",
        ),
        ("STOCKCORE_REDIS_URL", "redis_url", "redis://cache:6379/2", "redis://cache:6379/2"),
        ("STOCKCORE_GRPC_HOST", "grpc_host", "0.0.0.0", "0.0.0.0"),
        ("STOCKCORE_LOG_LEVEL", "log_level", "DEBUG", "DEBUG"),
        ("STOCKCORE_DATA_DIR", "data_dir", "/var/lib/stockcore", "/var/lib/stockcore"),
        ("STOCKCORE_GRPC_PORT", "grpc_port", "6000", 6000),
        ("STOCKCORE_GRPC_PORT", "grpc_port", "0", 0),
        ("STOCKCORE_METRICS_PORT", "metrics_port", "0", 0),
        ("STOCKCORE_WORKERS", "workers", "4", 4),
        ("STOCKCORE_SHARDS", "shard_count", "64", 64),
        ("STOCKCORE_PG_POOL_SIZE", "pg_pool_size", " 20 ", 20),
        ("STOCKCORE_BATCH_MAX", "batch_max", "512", 512),
        ("STOCKCORE_DEV_PG_PORT", "dev_pg_port", "5433", 5433),
        ("STOCKCORE_DEV_REDIS_PORT", "dev_redis_port", "6380", 6380),
        ("STOCKCORE_DEFAULT_TTL", "default_ttl_s", "90", 90.0),
        ("STOCKCORE_DEFAULT_TTL", "default_ttl_s", "1.5", 1.5),
        ("STOCKCORE_MAX_TTL", "max_ttl_s", "3600", 3600.0),
        ("STOCKCORE_EXPIRY_INTERVAL", "expiry_interval_s", "0.05", 0.05),
        ("STOCKCORE_EXPIRY_INTERVAL", "expiry_interval_s", "1e-1", 0.1),
        ("STOCKCORE_PG_READ_POOL_SIZE", "pg_read_pool_size", "2", 2),
        ("STOCKCORE_STREAMS_PER_CALLER", "streams_per_caller", "5", 5),
        ("STOCKCORE_DATABASE_READS_PER_CALLER", "database_reads_per_caller", "4", 4),
        ("STOCKCORE_HEALTH_WATCHES_PER_PEER", "health_watches_per_peer", "8", 8),
        ("STOCKCORE_MAX_HEALTH_WATCHES", "max_health_watches", "64", 64),
    ],
)
def test_variable_sets_its_setting(variable: str, attr: str, raw: str, expected: object) -> None:
    settings = _read({variable: raw})

    assert getattr(settings, attr) == expected
    assert type(getattr(settings, attr)) is type(expected)


@pytest.mark.parametrize("variable", ["STOCKCORE_LOG_JSON", "STOCKCORE_DEMO_CATALOGUE"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("True", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_boolean_variable_accepts_common_spellings(variable: str, raw: str, expected: bool) -> None:
    attr = {"STOCKCORE_LOG_JSON": "log_json", "STOCKCORE_DEMO_CATALOGUE": "demo_catalogue"}
    assert getattr(_read({variable: raw}), attr[variable]) is expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("STOCKCORE_GRPC_PORT", "http"),
        ("STOCKCORE_GRPC_PORT", "50051.0"),
        ("STOCKCORE_METRICS_PORT", "9464x"),
        ("STOCKCORE_WORKERS", "two"),
        ("STOCKCORE_SHARDS", "1e3"),
        ("STOCKCORE_PG_POOL_SIZE", "   "),
        ("STOCKCORE_BATCH_MAX", "0x10"),
        ("STOCKCORE_DEV_PG_PORT", "-"),
        ("STOCKCORE_DEV_REDIS_PORT", "6379/tcp"),
        ("STOCKCORE_DEFAULT_TTL", "5m"),
        ("STOCKCORE_MAX_TTL", "one day"),
        ("STOCKCORE_EXPIRY_INTERVAL", "250ms"),
        ("STOCKCORE_LOG_JSON", "maybe"),
        ("STOCKCORE_LOG_JSON", "2"),
        ("STOCKCORE_DEMO_CATALOGUE", "enabled"),
    ],
)
def test_unparseable_value_raises_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _read({variable: raw})

    assert str(caught.value).startswith(f"{variable}: ")
    assert isinstance(caught.value.__cause__, ValueError)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("STOCKCORE_SHARDS", "0", "shard_count must be 1-1024"),
        ("STOCKCORE_WORKERS", "65", "workers must be 1-64"),
        ("STOCKCORE_GRPC_PORT", "70000", "grpc_port must be 0-65535"),
        ("STOCKCORE_DEFAULT_TTL", "nan", "need min <= default <= max ttl"),
        ("STOCKCORE_MAX_TTL", "60", "need min <= default <= max ttl"),
        ("STOCKCORE_EXPIRY_INTERVAL", "2", "expiry_interval_s must be in (0, 1]"),
    ],
)
def test_out_of_range_value_from_the_environment_is_refused(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        from_env({variable: raw})


def test_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKCORE_SHARDS", "32")
    monkeypatch.setenv("STOCKCORE_LOG_JSON", "off")

    settings = from_env()

    assert (settings.shard_count, settings.log_json) == (32, False)


def test_given_mapping_takes_the_place_of_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKCORE_SHARDS", "32")

    assert from_env({}).shard_count == Settings().shard_count


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grpc_port": -1}, "grpc_port must be 0-65535"),
        ({"grpc_port": 65536}, "grpc_port must be 0-65535"),
        ({"metrics_port": -1}, "metrics_port must be 0-65535"),
        ({"metrics_port": 65536}, "metrics_port must be 0-65535"),
        ({"workers": 0}, "workers must be 1-64"),
        ({"workers": 65}, "workers must be 1-64"),
        ({"shard_count": 0}, "shard_count must be 1-1024"),
        ({"shard_count": 1025}, "shard_count must be 1-1024"),
        ({"pg_pool_size": 0}, "pg_pool_size must be 1-100"),
        ({"pg_pool_size": 101}, "pg_pool_size must be 1-100"),
        ({"batch_max": 0}, "batch_max must be 1-10000"),
        ({"batch_max": 10_001}, "batch_max must be 1-10000"),
        ({"min_ttl_s": 0.0}, "need min <= default <= max ttl"),
        ({"min_ttl_s": 301.0}, "need min <= default <= max ttl"),
        ({"default_ttl_s": 86_401.0}, "need min <= default <= max ttl"),
        ({"max_ttl_s": 299.0}, "need min <= default <= max ttl"),
        ({"expiry_interval_s": 0.0}, "expiry_interval_s must be in"),
        ({"expiry_interval_s": 1.01}, "expiry_interval_s must be in"),
        ({"pending_grace_s": 10.0}, "pending_grace_s must exceed db_timeout_s"),
        ({"db_timeout_s": 30.0}, "pending_grace_s must exceed db_timeout_s"),
        ({"workers": 2, "grpc_port": 0}, "several workers need a fixed grpc_port"),
        ({"pg_read_pool_size": 0}, "pg_read_pool_size must be 1-100"),
        ({"pg_read_pool_size": 101}, "pg_read_pool_size must be 1-100"),
        ({"streams_per_caller": 0}, "streams_per_caller must be 1-max_watch_streams"),
        (
            {"streams_per_caller": 11, "max_watch_streams": 10},
            "streams_per_caller must be 1-max_watch_streams",
        ),
        ({"database_reads_per_caller": 0}, "database_reads_per_caller must be 1-10000"),
        ({"database_reads_per_caller": 10_001}, "database_reads_per_caller must be 1-10000"),
        ({"health_watches_per_peer": 0}, "need 1 <= health_watches_per_peer"),
        (
            {"health_watches_per_peer": 33, "max_health_watches": 32},
            "need 1 <= health_watches_per_peer",
        ),
        ({"max_health_watches": 100_001}, "need 1 <= health_watches_per_peer"),
        ({"watched_skus": ("OK-1", "not ok")}, "watched_skus must be at most 200 SKUs"),
        ({"watched_skus": tuple(f"S-{i}" for i in range(201))}, "watched_skus must be at most"),
        ({"watched_skus_interval_s": 0.5}, "watched_skus_interval_s must be 1-3600"),
    ],
)
def test_out_of_range_setting_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        dataclasses.replace(_defaults(changes), **changes).validate()  # type: ignore[arg-type]

    assert message in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"grpc_port": 0},
        {"grpc_port": 1},
        {"grpc_port": 65535},
        {"metrics_port": 0},
        {"metrics_port": 65535},
        {"workers": 1},
        {"workers": 64},
        {"shard_count": 1},
        {"shard_count": 1024},
        {"pg_pool_size": 1},
        {"pg_pool_size": 100},
        {"batch_max": 1},
        {"batch_max": 10_000},
        {"min_ttl_s": 300.0, "default_ttl_s": 300.0, "max_ttl_s": 300.0},
        {"min_ttl_s": 0.001},
        {"expiry_interval_s": 1.0},
        {"expiry_interval_s": 0.001},
        {"pending_grace_s": 10.001, "db_timeout_s": 10.0},
        {"workers": 8, "grpc_port": 50051},
        {"pg_read_pool_size": 1},
        {"pg_read_pool_size": 100},
        {"streams_per_caller": 1},
        {"streams_per_caller": 10, "max_watch_streams": 10},
        {"database_reads_per_caller": 1},
        {"database_reads_per_caller": 10_000},
        {"health_watches_per_peer": 1, "max_health_watches": 1},
        {"health_watches_per_peer": 100_000, "max_health_watches": 100_000},
        {"watched_skus": tuple(f"S-{i}" for i in range(200))},
        {"watched_skus_interval_s": 1.0},
        {"watched_skus_interval_s": 3600.0},
    ],
)
def test_setting_at_its_bounds_is_accepted(changes: dict[str, object]) -> None:
    settings = dataclasses.replace(Settings(), **changes)  # type: ignore[arg-type]

    assert settings.validate() is settings


def test_validate_returns_the_same_settings() -> None:
    settings = Settings(shard_count=4)

    assert settings.validate() is settings


def test_overrides_return_a_changed_copy() -> None:
    base = Settings()

    changed = base.with_overrides(shard_count=4, log_json=False)

    assert (changed.shard_count, changed.log_json) == (4, False)
    assert base.shard_count == Settings().shard_count


def test_overrides_are_validated() -> None:
    with pytest.raises(SettingsError, match="shard_count"):
        Settings().with_overrides(shard_count=0)


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().shard_count = 2  # type: ignore[misc]


def test_carriers_come_from_a_comma_separated_list() -> None:
    settings = from_env(
        {"STOCKCORE_CARRIERS": " dhl, ups ,,sf-express ", "STOCKCORE_FALLBACK_CARRIER": "dhl"}
    )

    assert settings.carriers == ("dhl", "ups", "sf-express")


def test_the_default_carriers_are_the_documented_ones() -> None:
    assert Settings().carriers == ("sf-express", "jd-logistics", "cainiao", "ups", "dhl", "fedex")


@pytest.mark.parametrize(
    ("variable", "attr", "raw", "expected"),
    [
        ("STOCKCORE_RELAY_INTERVAL", "relay_interval_s", "0.1", 0.1),
        ("STOCKCORE_RELAY_STANDBY_INTERVAL", "relay_standby_interval_s", "2", 2.0),
        ("STOCKCORE_RELAY_BATCH", "relay_batch", "100", 100),
        ("STOCKCORE_EVENT_STREAM_MAXLEN", "event_stream_maxlen", "50000", 50_000),
        ("STOCKCORE_EVENT_STREAM_MAX_AGE", "event_stream_max_age_s", "900", 900.0),
        ("STOCKCORE_DEV_REDIS_MAXMEMORY_MB", "dev_redis_maxmemory_mb", "2048", 2048),
        ("STOCKCORE_WATCH_POLL_INTERVAL", "watch_poll_interval_s", "0.1", 0.1),
    ],
)
def test_order_variables_set_their_settings(
    variable: str, attr: str, raw: str, expected: object
) -> None:
    assert getattr(_read({variable: raw}), attr) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"carriers": ()}, "carriers must be"),
        ({"carriers": ("DHL",)}, "carriers must be"),
        ({"carriers": ("has space",)}, "carriers must be"),
        ({"relay_interval_s": 0.0}, "relay_interval_s must be"),
        ({"relay_standby_interval_s": 11.0}, "relay_standby_interval_s must be"),
        ({"relay_batch": 0}, "relay_batch must be"),
        ({"event_stream_maxlen": 999}, "event_stream_maxlen must be"),
        ({"event_stream_max_age_s": 59.0}, "event_stream_max_age_s must be"),
        ({"event_stream_max_age_s": 8 * 86_400.0}, "event_stream_max_age_s must be"),
        ({"dev_redis_maxmemory_mb": 63}, "dev_redis_maxmemory_mb must be"),
        ({"watch_poll_interval_s": 11.0}, "watch_poll_interval_s must be"),
    ],
)
def test_out_of_range_order_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        dataclasses.replace(_defaults(changes), **changes).validate()  # type: ignore[arg-type]


def test_metrics_stay_on_loopback_and_reflection_off_unless_configured() -> None:
    settings = Settings()

    assert settings.metrics_host == "127.0.0.1"
    assert not settings.reflection


def test_serving_needs_certificates_and_a_key_set_unless_told_otherwise() -> None:
    assert "STOCKCORE_TLS_CERT" in (Settings().security_problem() or "")
    with_tls = Settings(tls_cert_file="c.pem", tls_key_file="k.pem")
    assert "STOCKCORE_AUTH_JWKS" in (with_tls.security_problem() or "")
    assert Settings(plaintext=True, auth_disabled=True).security_problem() is None


def test_mutual_tls_cannot_be_plaintext() -> None:
    with pytest.raises(SettingsError, match="mutual TLS"):
        Settings(plaintext=True, tls_client_ca_file="ca.pem").validate()


def test_make_run_serves_tls_with_development_credentials_and_reflection(tmp_path) -> None:
    settings = with_dev_credentials(Settings(), tmp_path)

    assert settings.security_problem() is None and settings.reflection
    assert Path(settings.tls_cert_file).is_file() and Path(settings.auth_jwks_file).is_file()
    assert (tmp_path / "tls" / "ca.pem").is_file()
    assert (tmp_path / "auth" / "signing-key.json").stat().st_mode & 0o077 == 0


def test_make_run_serves_plaintext_only_when_asked(tmp_path) -> None:
    settings = with_dev_credentials(Settings(plaintext=True), tmp_path)

    assert settings.plaintext and not settings.tls_cert_file


def test_to_env_round_trips_through_from_env() -> None:
    changed = Settings().with_overrides(pg_dsn="postgresql://db/x", log_json=True)
    assert from_env(to_env(changed)) == changed
    assert from_env(to_env(Settings())) == Settings()
    worker = FulfilmentSettings().with_overrides(
        pg_dsn="postgresql://db/x",
        log_json=True,
        breaker_slow_call_s=2.5,
        fallback_carrier="",
        fulfil_target="127.0.0.1:1234",
    )
    assert fulfilment_config.from_env(fulfilment_config.to_env(worker)) == worker
    assert fulfilment_config.from_env(fulfilment_config.to_env(FulfilmentSettings())) == (
        FulfilmentSettings()
    )
    assert fulfilment_config.from_env({"STOCKCORE_FALLBACK_CARRIER": "none"}).fallback_carrier == ""


def test_the_partner_reply_cap_is_read_from_its_variable_and_refused_out_of_range() -> None:
    read = fulfilment_config.from_env({"STOCKCORE_PARTNER_MAX_REPLY_BYTES": "65536"})
    assert read.partner_max_reply_bytes == 65536
    assert FulfilmentSettings().partner_max_reply_bytes == 1 << 20
    for raw in ("0", "4095", str((64 << 20) + 1)):
        with pytest.raises(SettingsError, match="partner_max_reply_bytes must be"):
            fulfilment_config.from_env({"STOCKCORE_PARTNER_MAX_REPLY_BYTES": raw})


def test_watched_skus_come_from_a_comma_separated_list() -> None:
    settings = from_env({"STOCKCORE_WATCHED_SKUS": "FLASH-SALE-1, DRESS-RED-M"})

    assert settings.watched_skus == ("FLASH-SALE-1", "DRESS-RED-M")
    assert to_env(settings)["STOCKCORE_WATCHED_SKUS"] == "FLASH-SALE-1,DRESS-RED-M"


def test_the_webhook_receivers_settings_round_trip_and_keep_the_replay_window_bounded() -> None:
    receiver = PaymentsSettings().with_overrides(
        pg_dsn="postgresql://db/x",
        webhook_secret_file="/run/secrets/webhook",
        webhook_tolerance_s=120.0,
        payments_target="127.0.0.1:1234",
    )
    assert payments_config.from_env(payments_config.to_env(receiver)) == receiver
    assert payments_config.from_env({}) == PaymentsSettings()
    assert receiver.order_target == "127.0.0.1:1234"
    assert PaymentsSettings().order_target == "127.0.0.1:50051"
    assert PaymentsSettings().webhook_tolerance_s == 300.0
    for raw in ("0", "0.5", "3601"):
        with pytest.raises(SettingsError, match="webhook_tolerance_s must be 1-3600"):
            payments_config.from_env({"STOCKCORE_WEBHOOK_TOLERANCE": raw})
    with pytest.raises(SettingsError, match="webhook_max_body_bytes"):
        payments_config.from_env({"STOCKCORE_WEBHOOK_MAX_BODY_BYTES": str((1 << 20) + 1)})


def test_the_reconciler_and_the_refund_sender_serve_metrics_on_ports_of_their_own() -> None:
    assert reconciler_config.from_env({}).reconcile_metrics_port == 9476
    assert refunds_config.from_env({}).refund_metrics_port == 9477
    assert ReconcilerSettings().ledger_check_s == 60.0
    read = reconciler_config.from_env(
        {
            "STOCKCORE_RECONCILE_METRICS_PORT": "0",
            "STOCKCORE_RECONCILE_LEDGER_CHECK_INTERVAL": "5",
        }
    )
    assert (read.reconcile_metrics_port, read.ledger_check_s) == (0, 5.0)
    assert refunds_config.from_env({"STOCKCORE_REFUND_METRICS_PORT": "0"}).refund_metrics_port == 0
    with pytest.raises(SettingsError, match="reconcile_metrics_port must be 0-65535"):
        reconciler_config.from_env({"STOCKCORE_RECONCILE_METRICS_PORT": "65536"})
    with pytest.raises(SettingsError, match="ledger_check_s must be positive"):
        reconciler_config.from_env({"STOCKCORE_RECONCILE_LEDGER_CHECK_INTERVAL": "0"})
    with pytest.raises(SettingsError, match="refund_metrics_port must be 0-65535"):
        refunds_config.from_env({"STOCKCORE_REFUND_METRICS_PORT": "-1"})
    sender = RefundSettings(refund_metrics_port=9999)
    assert refunds_config.from_env(refunds_config.to_env(sender)) == sender
