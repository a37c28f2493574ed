"""The config file `make run` writes for stockctl: the stack's address, CA and signing
key by absolute path, over its own earlier file only."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.stockctl_config import DEFAULT, read_config_file
from devstack.stack import with_dev_credentials
from devstack.stockctl import stockctl_settings, write_stockctl_config
from server.config import Settings


@pytest.fixture
def server(tmp_path: Path) -> Settings:
    return with_dev_credentials(Settings(), tmp_path / "data")


def test_it_names_the_address_and_the_development_ca_and_key_by_absolute_path(
    server: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    assert stockctl_settings(server, data) == {
        "target": "127.0.0.1:50051",
        "ca_file": str(data / "tls" / "ca.pem"),
        "signing_key": str(data / "auth" / "signing-key.json"),
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"grpc_host": "0.0.0.0", "grpc_port": 7000}, {"target": "127.0.0.1:7000"}),
        ({"grpc_host": "::1"}, {"target": "[::1]:50051"}),
        ({"plaintext": True, "tls_cert_file": "", "tls_key_file": ""}, {"plaintext": True}),
        ({"tls_cert_file": "/etc/own.pem"}, {"ca_file": None}),
        ({"auth_disabled": True, "auth_jwks_file": ""}, {"signing_key": None}),
    ],
)
def test_it_says_only_what_holds_for_the_stack_s_server(
    server: Settings, tmp_path: Path, changes: dict[str, object], expected: dict[str, object]
) -> None:
    values = stockctl_settings(server.with_overrides(**changes), tmp_path / "data")

    for key, value in expected.items():
        assert values.get(key) == value


def test_it_is_written_over_its_own_earlier_file_and_read_back_by_stockctl(
    server: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "home" / "stockcore" / "config.toml"
    assert write_stockctl_config(path, server, tmp_path / "data")
    assert write_stockctl_config(path, server.with_overrides(grpc_port=7001), tmp_path / "data")

    file = read_config_file(path, DEFAULT)

    assert file.written_by_make_run
    assert file.values["target"] == "127.0.0.1:7001"
    assert file.values["ca_file"] == str(tmp_path / "data" / "tls" / "ca.pem")


def test_a_file_the_user_wrote_is_left_alone(server: Settings, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('target = "inventory.prod:443"\n')

    assert not write_stockctl_config(path, server, tmp_path / "data")
    assert path.read_text() == 'target = "inventory.prod:443"\n'
